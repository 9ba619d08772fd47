"""The Parquet output schema (documented in docs/output-schema.md).

Declared once so that every shard file, including one made only of error
rows, carries the same schema and a dataset of many shards reads as one table.
"""

from __future__ import annotations

import pyarrow as pa

__all__ = ["SCHEMA_VERSION", "SEGMENT", "MODEL", "OUTPUT_SCHEMA", "empty_table"]

SCHEMA_VERSION = "1"

SEGMENT = pa.struct(
    [
        pa.field("label", pa.int32(), nullable=False),
        pa.field("label_name", pa.string()),
        pa.field("score", pa.float32()),
        pa.field("bbox", pa.list_(pa.float32(), 4)),  # x, y, w, h in pixels
        pa.field("area", pa.int64()),
        pa.field("counts", pa.string()),  # COCO compressed RLE for size [height, width]
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
    ],
    metadata={"raysegment.schema_version": SCHEMA_VERSION},
)


def empty_table() -> pa.Table:
    return OUTPUT_SCHEMA.empty_table()
