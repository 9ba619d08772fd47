"""Vector labels (building footprints, field parcels) as ground truth on a scene's pixel grid.

Geospatial labels usually come as polygons, not masks: GeoJSON, GeoParquet,
shapefiles or GeoPackages, often in another CRS than the scene (GeoJSON is
lon/lat by its RFC). This module reads them once into a GeoDataFrame in the
scene's CRS and burns any window of the scene from it, so evaluation and
training can score or learn against polygons without a mask raster ever being
written, and a window over a large label set only touches the polygons its
spatial index selects.

The ``geo`` extra (geopandas, rasterio, shapely) is imported inside the functions
that use it, so importing this module needs none of it.
"""

from __future__ import annotations

import functools
import io
import json
import math
import re
import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from raysegment.errors import InputSpecError, exception_text
from raysegment.uri import extension, filesystem, redact

if TYPE_CHECKING:
    import geopandas

__all__ = ["VECTOR_EXTENSIONS", "is_vector_labels", "holds_vector_labels", "read_vector_labels", "cached_vector_labels", "rasterize_window", "geometry_pixel_boxes",
           "burn_dtype"]

_GEOJSON = (".geojson", ".json")
_PARQUET = (".parquet", ".geoparquet")
_OGR = (".shp", ".gpkg", ".zip")
#: Extensions read as vector labels (GeoJSON, GeoParquet, shapefile, GeoPackage, zipped shapefile).
VECTOR_EXTENSIONS = (*_GEOJSON, *_PARQUET, *_OGR)


def is_vector_labels(uri: str) -> bool:
    """Whether ``uri`` has a vector label extension (``.json`` and ``.parquet`` included, which other
    files share: :func:`holds_vector_labels` looks inside)."""
    return extension(uri) in VECTOR_EXTENSIONS


_GEOJSON_TYPE = re.compile(rb'"type"\s*:\s*"(FeatureCollection|Feature)"')
_SNIFF_BYTES = 64 * 1024


def holds_vector_labels(uri: str, storage_options: dict | None = None) -> bool:
    """Whether ``uri`` is a vector label file, by extension and, where the extension is shared, by content.

    ``.json`` is GeoJSON only with a ``"type": "FeatureCollection"`` (or
    ``"Feature"``) in its first 64 KiB (COCO annotations are ``.json`` too), and
    ``.parquet`` only with GeoParquet's ``geo`` metadata (a plain Parquet is a
    manifest). An unreadable file is "no": the caller's own reader reports it.
    """
    ext = extension(uri)
    if ext not in VECTOR_EXTENSIONS:
        return False
    if ext not in (".json", ".parquet"):
        return True
    try:
        fs, path = filesystem(uri, storage_options)
        with fs.open(path, "rb") as f:
            if ext == ".json":
                return bool(_GEOJSON_TYPE.search(f.read(_SNIFF_BYTES)))
            import pyarrow.parquet as pq

            return b"geo" in (pq.read_schema(f).metadata or {})
    except Exception:
        return False


def read_vector_labels(uri: str, crs: str | None, label_field: str | None = None,
                       storage_options: dict | None = None) -> geopandas.GeoDataFrame:
    """Read the polygons of ``uri`` (path or fsspec URL) in ``crs``, empty and null geometries dropped.

    A file with a CRS is reprojected to ``crs``; a file without one (a shapefile
    without its ``.prj``, a GeoParquet without CRS metadata) is taken to be in
    ``crs`` already, the only sensible guess. GeoJSON always has one: without a
    ``"crs"`` member it is WGS 84 lon/lat, as RFC 7946 says. ``crs=None`` keeps the
    file's own CRS. ``label_field``, if given, must be an integer-valued column:
    its values are what :func:`rasterize_window` burns. Shapefiles (``.shp``) are
    read from local paths only, since their side files (.dbf, .shx, .prj) travel
    separately; on object storage use a ``.zip`` of them, a GeoPackage or GeoParquet.
    Any failure is an :class:`InputSpecError` with one line.
    """
    shown = redact(uri)
    ext = extension(uri)
    if ext not in VECTOR_EXTENSIONS:
        raise InputSpecError(f"vector labels {shown}: unknown extension {ext or '(none)'!r}; "
                             f"use one of {', '.join(VECTOR_EXTENSIONS)}")
    import geopandas

    fs, path = filesystem(uri, storage_options)
    local = "file" in _protocols(fs)
    try:
        if not fs.exists(path):
            raise InputSpecError(f"vector labels not found: {shown}")
        if ext in _PARQUET:
            labels = geopandas.read_parquet(path, filesystem=fs)
        elif local and ext in _OGR:
            labels = geopandas.read_file(path)
        elif ext == ".shp":
            raise InputSpecError(f"vector labels {shown}: shapefiles are read from local paths only (their "
                                 f".dbf/.shx/.prj travel separately); zip them (.zip), or use GeoPackage or GeoParquet")
        else:
            with warnings.catch_warnings():  # GDAL names the in-memory copy without its extension
                warnings.filterwarnings("ignore", message=".*non conformant file extension")
                labels = geopandas.read_file(io.BytesIO(fs.cat_file(path)))
    except InputSpecError:
        raise
    except Exception as exc:
        raise InputSpecError(f"cannot read vector labels {shown}: {exception_text(exc).splitlines()[0]}") from exc
    if not isinstance(labels, geopandas.GeoDataFrame) or labels.geometry is None:
        raise InputSpecError(f"vector labels {shown} have no geometry column")
    labels = labels[~(labels.geometry.isna() | labels.geometry.is_empty)].reset_index(drop=True)
    if crs is not None:
        try:
            labels = labels.to_crs(crs) if labels.crs is not None else labels.set_crs(crs)
        except Exception as exc:
            raise InputSpecError(f"vector labels {shown}: cannot reproject to {crs}: "
                                 f"{exception_text(exc).splitlines()[0]}") from exc
    if label_field is not None:
        _check_label_field(labels, label_field, shown)
    return labels


@functools.lru_cache(maxsize=4)
def _cached(uri: str, crs: str | None, label_field: str | None, options: str) -> Any:
    return read_vector_labels(uri, crs, label_field, json.loads(options) or None)


def cached_vector_labels(uri: str, crs: str | None, label_field: str | None = None,
                         storage_options: Mapping[str, Any] | None = None) -> geopandas.GeoDataFrame:
    """:func:`read_vector_labels`, kept for the last few (file, CRS) pairs of this process: a worker
    reading many windows of one scene parses and reprojects its polygons once. Treat it as read-only."""
    return _cached(uri, crs, label_field, json.dumps(dict(storage_options or {}), sort_keys=True))


def _protocols(fs: Any) -> tuple[str, ...]:
    protocol = fs.protocol
    return (protocol,) if isinstance(protocol, str) else tuple(protocol)


def _check_label_field(labels: Any, field: str, shown: str) -> None:
    """``field`` exists and holds integers (whole floats pass: GeoJSON numbers are often floats)."""
    columns = [c for c in labels.columns if c != labels.geometry.name]
    if field not in labels.columns or field == labels.geometry.name:
        raise InputSpecError(f"vector labels {shown} have no column {field!r} (columns: {', '.join(map(str, columns))})")
    values = labels[field]
    kind = getattr(values.dtype, "kind", "O")
    ok = kind in "biu"
    if kind == "f":
        arr = values.to_numpy(dtype=np.float64)
        ok = bool(np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)))
    if ok and bool(values.isna().any()):
        raise InputSpecError(f"vector labels {shown}: column {field!r} has missing values; every polygon needs a class")
    if not ok:
        raise InputSpecError(f"vector labels {shown}: column {field!r} is not integer-valued (dtype {values.dtype}); "
                             f"integer columns: {', '.join(c for c in columns if labels[c].dtype.kind in 'biu') or 'none'}")


def burn_dtype(labels: Any, label_field: str | None = None, fill: int = 0, default_value: int = 1) -> np.dtype:
    """uint8 when every burn value and ``fill`` fit in it, else int32; from the whole label set, so every
    window of one scene gets the same dtype."""
    if label_field is None or len(labels) == 0:
        values = [default_value]
    else:
        col = labels[label_field].to_numpy()
        values = [int(col.min()), int(col.max())]
    lo, hi = min(*values, fill), max(*values, fill)
    return np.dtype(np.uint8) if 0 <= lo and hi <= 255 else np.dtype(np.int32)


def as_affine(transform: Any) -> Any:
    """An ``affine.Affine`` from one, or from its first six numbers (as rows and checkpoints store it)."""
    from affine import Affine

    return transform if isinstance(transform, Affine) else Affine(*[float(v) for v in tuple(transform)[:6]])


def rasterize_window(labels: Any, transform: Any, window: tuple[int, int, int, int], label_field: str | None = None,
                     fill: int = 0, default_value: int = 1) -> np.ndarray:
    """Burn the geometries meeting ``window`` = (row0, col0, height, width) of the scene grid ``transform``.

    Pixels whose centre lies in a geometry get ``default_value`` (or that
    geometry's ``label_field`` value; later rows win where they overlap), the rest
    ``fill``. Candidates come from the label set's spatial index, so the cost
    follows the window's polygons, not the file's; the result equals the same
    slice of the whole scene burnt at once. ``transform`` is an ``Affine`` or the
    six numbers a, b, c, d, e, f of an output row.
    """
    from affine import Affine
    from rasterio.features import rasterize
    from shapely.geometry import box

    row0, col0, height, width = (int(v) for v in window)
    dtype = burn_dtype(labels, label_field, fill, default_value)
    out_shape = (max(height, 0), max(width, 0))
    if out_shape[0] == 0 or out_shape[1] == 0 or len(labels) == 0:
        return np.full(out_shape, fill, dtype=dtype)
    win_transform = as_affine(transform) @ Affine.translation(col0, row0)
    corners = [win_transform @ xy for xy in ((0, 0), (width, 0), (0, height), (width, height))]
    xs, ys = [c[0] for c in corners], [c[1] for c in corners]
    hits = np.sort(labels.sindex.query(box(min(xs), min(ys), max(xs), max(ys)), predicate="intersects"))
    if hits.size == 0:
        return np.full(out_shape, fill, dtype=dtype)
    geoms = labels.geometry.iloc[hits]
    values = labels[label_field].iloc[hits].to_numpy() if label_field else np.full(hits.size, default_value)
    shapes = ((g, int(v)) for g, v in zip(geoms, values))
    return rasterize(shapes, out_shape=out_shape, transform=win_transform, fill=fill, dtype=dtype)


def geometry_pixel_boxes(labels: Any, transform: Any, shape: Sequence[int]) -> list[tuple[int, int, int, int]]:
    """Each geometry's pixel bounding box (row0, col0, row1, col1), stops exclusive, clipped to the scene.

    Boxes cover every pixel the geometry touches (floor of the start, ceiling of
    the stop), so a hold-out region drawn as polygons keeps all their pixels;
    geometries wholly outside the scene give no box.
    """
    height, width = int(shape[-2]), int(shape[-1])
    inverse = ~as_affine(transform)
    boxes = []
    for minx, miny, maxx, maxy in labels.geometry.bounds.itertuples(index=False, name=None):
        pixels = [inverse @ xy for xy in ((minx, miny), (minx, maxy), (maxx, miny), (maxx, maxy))]
        cols, rows = [p[0] for p in pixels], [p[1] for p in pixels]
        r0, r1 = max(0, math.floor(min(rows))), min(height, math.ceil(max(rows)))
        c0, c1 = max(0, math.floor(min(cols))), min(width, math.ceil(max(cols)))
        if r0 < r1 and c0 < c1:
            boxes.append((r0, c0, r1, c1))
    return boxes
