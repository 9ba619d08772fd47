"""The output root: schema, the exactly-once Parquet sink, geo side files (the public face).

:mod:`raysegment.output.schema` is the row schema, :mod:`raysegment.output.root`
the output folder's life cycle (manifest, resume, ``_SUCCESS``),
:mod:`raysegment.output.sink` the Ray Data ``Datasink`` that commits one part per
shard, and :mod:`raysegment.output.geo` the COG masks and GeoParquet polygons.
"""

from raysegment.output.root import OutputError, OutputRoot, RunManifest, read_output

__all__ = ["OutputError", "OutputRoot", "RunManifest", "read_output"]
