"""The Parquet output schema (documented in docs/output-schema.md).

Declared once so that every shard file, including one made only of error
rows, carries the same schema and a dataset of many shards reads as one table.
"""

from __future__ import annotations

import pyarrow as pa

__all__ = ["SCHEMA_VERSION", "SEGMENT", "MODEL", "OUTPUT_SCHEMA", "SCENE_COLUMNS", "empty_table"]

SCHEMA_VERSION = "3"

SEGMENT = pa.struct(
    [
        pa.field("label", pa.int32(), nullable=False),
        pa.field("label_name", pa.string()),
        pa.field("score", pa.float32()),
        pa.field("bbox", pa.list_(pa.float32(), 4)),  # x, y, w, h in pixels
        pa.field("area", pa.int64()),
        pa.field("counts", pa.string()),  # COCO compressed RLE for size [height, width]; null for volumes
        pa.field("slice_counts", pa.list_(pa.string())),  # volumes: one RLE per depth slice; null for 2D
    ]
)

MODEL = pa.struct(
    [
        pa.field("name", pa.string()),
        pa.field("version", pa.string()),
        pa.field("checkpoint_sha256", pa.string()),  # null without --checkpoint
        pa.field("params", pa.string()),  # resolved parameters, JSON
        pa.field("label_names", pa.list_(pa.string())),  # name of each output label, index-aligned
    ]
)

OUTPUT_SCHEMA = pa.schema(
    [
        pa.field("uri", pa.string(), nullable=False),
        pa.field("index", pa.int64(), nullable=False),  # position in the sorted listing
        pa.field("shard", pa.int32(), nullable=False),
        pa.field("status", pa.string(), nullable=False),  # "ok" | "error"
        pa.field("error", pa.string()),
        pa.field("height", pa.int32()),
        pa.field("width", pa.int32()),
        pa.field("model", MODEL),
        pa.field("segments", pa.list_(SEGMENT)),
        pa.field("meta", pa.string()),  # modality-specific source facts, JSON
        # -- scenes and volumes (tiled inference); null where the source has no such facts --
        pa.field("depth", pa.int32()),  # volumes: slices along the first scene axis
        pa.field("crs", pa.string()),  # "EPSG:n" or WKT
        pa.field("transform", pa.list_(pa.float64(), 6)),  # affine a, b, c, d, e, f (pixel -> CRS)
        pa.field("bounds", pa.list_(pa.float64(), 4)),  # left, bottom, right, top in CRS units
        pa.field("nodata", pa.float64()),
        pa.field("affine", pa.list_(pa.float64(), 16)),  # volumes: voxel (i, j, k) -> world, row-major 4x4
        pa.field("spacing", pa.list_(pa.float64(), 3)),  # volumes: voxel size along (depth, height, width)
        pa.field("run_id", pa.string()),  # the run that committed the row (the output's, in _raysegment.json)
    ],
    metadata={"raysegment.schema_version": SCHEMA_VERSION},
)


#: Columns only tiled scenes and volumes fill.
SCENE_COLUMNS = ("depth", "crs", "transform", "bounds", "nodata", "affine", "spacing")


def empty_table() -> pa.Table:
    return OUTPUT_SCHEMA.empty_table()
