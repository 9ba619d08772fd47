"""Georeferenced outputs of one scene, fed block by block: a COG label raster and GeoParquet polygons.

Tiled inference never holds a scene's whole label map: it hands each finished
block (typically a full-height band of columns) to these writers, in any order.

* :class:`MaskRasterWriter` puts blocks into a local, tiled, sparse GTiff with
  windowed writes (GDAL's block cache capped, so memory stays at a block), then
  has GDAL's COG driver stream it into a Cloud-Optimized GeoTIFF (deflate,
  nearest-neighbour overviews, which keep class ids) and uploads that atomically.
* :class:`PolygonWriter` polygonizes each block in pixel space (integer vertices,
  so pieces of one region meet exactly at a block seam), dissolves per label only
  the polygons that touch their block's edge, maps everything to the source CRS
  once and writes a GeoParquet (``geo`` metadata, readable by GIS tools and DuckDB).

Both write to a temporary name beside ``uri`` and ``mv`` it into place, so a
reader never sees a partial file; ``abort()`` leaves nothing at ``uri``.
rasterio, shapely and geopandas are imported only when used (extra ``[geo]``).
"""

from __future__ import annotations

import posixpath
import shutil
import tempfile
import warnings
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import unquote

import numpy as np

from raysegment.io.scenes.base import Georef
from raysegment.output.atomic import write_atomic
from raysegment.output.lease import Fence
from raysegment.uri import filesystem, redact

__all__ = ["GeoOutputError", "MaskRasterWriter", "PolygonWriter"]

#: GDAL block cache (MB) while writing: bounds memory whatever the machine's RAM (default 5%).
_GDAL_CACHE_MB = 64


class GeoOutputError(RuntimeError):
    """A georeferenced output could not be written (missing library, I/O or upload failure)."""


def _need(module: str, what: str) -> Any:
    """Import ``module`` or fail with a one-line hint naming the extra."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise GeoOutputError(f"{what} needs {module.split('.')[0]}: pip install 'raysegment[geo]'") from None


def _check_labels(labels: np.ndarray, covered: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    """Validate a 2D integer block (and its coverage) and return them as arrays."""
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be 2D (h, w), got shape {labels.shape}")
    if labels.dtype != bool and not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must hold integer class ids, got dtype {labels.dtype}")
    if covered is not None:
        covered = np.asarray(covered, dtype=bool)
        if covered.shape != labels.shape:
            raise ValueError(f"covered shape {covered.shape} differs from labels shape {labels.shape}")
    return labels, covered


def _label_range(labels: np.ndarray, covered: np.ndarray | None) -> tuple[int, int] | None:
    """(min, max) over covered pixels; None when no pixel is covered."""
    values = labels if covered is None else labels[covered]
    if values.size == 0:
        return None
    return int(values.min()), int(values.max())


def _secrets(uri: str) -> list[str]:
    """The pieces of ``uri`` that :func:`redact` hides (userinfo, secret query values), longest first."""
    if "://" not in uri:
        return []
    rest = uri.split("://", 1)[1]
    authority = rest.split("/", 1)[0].split("?", 1)[0]
    found: list[str] = []
    if "@" in authority:
        userinfo = authority.rpartition("@")[0]
        found += [userinfo, *userinfo.split(":")]
    shown = redact(uri)
    for param in rest.partition("?")[2].partition("#")[0].split("&"):
        name, _, value = param.partition("=")
        if value and f"{name}=REDACTED" in shown:
            found += [value, unquote(value)]
    return sorted({s for s in found if s}, key=len, reverse=True)


def _scrub(text: str, uri: str) -> str:
    """One line of ``text`` with ``uri``'s credentials removed, fit for a user-facing message."""
    line = (text.splitlines() or [""])[0].replace(uri, redact(uri))
    for secret in _secrets(uri):
        line = line.replace(secret, "REDACTED")
    return line


def _upload_atomic(local: str, uri: str, storage_options: dict | None, fence: Fence | None = None) -> None:
    """Copy a local file to a hidden temp name beside ``uri``, then move it into place; with a
    ``fence``, only while the run still holds the output (a run that lost it writes nothing more)."""
    fs, path = filesystem(uri, storage_options)
    if fence is not None:
        fence.check(fs)  # LeaseLost says itself what happened
    try:
        write_atomic(fs, path, local_file=local)
    except Exception as exc:
        reason = _scrub(str(exc), uri) or type(exc).__name__
        raise GeoOutputError(f"cannot write {redact(uri)}: {type(exc).__name__}: {reason}") from None


class _SceneFile:
    """The life cycle both writers share: open -> closed (uploaded) | aborted | failed.

    Subclasses set ``uri`` and ``_state = "open"`` and implement ``close`` and ``_discard``.
    As a context manager: close on success, abort on an exception.
    """

    kind = "writer"
    uri: str
    _state: str

    def _check_open(self) -> None:
        if self._state != "open":
            raise RuntimeError(f"{self.kind} for {redact(self.uri)} is already {self._state}")

    def close(self) -> Any:
        raise NotImplementedError

    def _discard(self) -> None:
        """Free what was collected; nothing may appear at ``uri``."""

    def abort(self) -> None:
        """Drop everything written so far; nothing appears at ``uri``."""
        self._discard()
        if self._state == "open":
            self._state = "aborted"

    def __enter__(self) -> Any:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None and self._state == "open":
            self.close()
        else:
            self.abort()


class MaskRasterWriter(_SceneFile):
    """Label raster of one scene as a Cloud-Optimized GeoTIFF with the source's CRS and transform."""

    kind = "mask writer"

    def __init__(self, uri: str, shape: tuple[int, int], georef: Georef | None,
                 storage_options: dict | None = None, nodata: int = 255, block: int = 512,
                 fence: Fence | None = None) -> None:
        rasterio = _need("rasterio", "the COG mask output")
        height, width = (int(v) for v in shape)
        if height <= 0 or width <= 0:
            raise ValueError(f"raster shape must be positive, got {shape}")
        if not 0 <= int(nodata) <= 255:
            raise ValueError(f"nodata must fit uint8, got {nodata}")
        if block <= 0 or block % 16:
            raise ValueError(f"block must be a positive multiple of 16 (GeoTIFF tiles), got {block}")
        self.uri, self.shape, self.georef = uri, (height, width), georef
        self.storage_options, self.nodata, self.block = storage_options, int(nodata), int(block)
        self.fence = fence
        self._written: list[tuple[int, int, int, int]] = []
        self._state = "open"
        self._dir = tempfile.mkdtemp(prefix="raysegment-cog-")
        self._tmp = posixpath.join(self._dir, "labels.tif")
        profile = {
            "driver": "GTiff", "width": width, "height": height, "count": 1, "dtype": "uint8",
            "nodata": self.nodata, "tiled": True, "blockxsize": self.block, "blockysize": self.block,
            # Sparse: tiles never written are not stored and read back as nodata.
            "sparse_ok": True, "compress": "deflate", "zlevel": 1, "bigtiff": "IF_SAFER",
        }
        if georef is not None:
            profile["transform"] = rasterio.Affine(*georef.transform)
            if georef.crs:
                profile["crs"] = rasterio.crs.CRS.from_user_input(georef.crs)
        try:
            with warnings.catch_warnings(), self._env():
                warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
                with rasterio.open(self._tmp, "w", **profile):
                    pass
        except Exception as exc:
            self.abort()
            raise GeoOutputError(f"cannot create the mask raster for {redact(uri)}: {_scrub(str(exc), uri)}") from None

    def _env(self) -> Any:
        import rasterio

        return rasterio.Env(GDAL_CACHEMAX=_GDAL_CACHE_MB)

    def write(self, row: int, col: int, labels: np.ndarray, covered: np.ndarray | None = None) -> None:
        """Place a block of class ids at (row, col); pixels with ``covered`` False become nodata."""
        import rasterio.errors
        import rasterio.windows

        self._check_open()
        labels, covered = _check_labels(labels, covered)
        h, w = labels.shape
        row, col = int(row), int(col)
        if row < 0 or col < 0 or row + h > self.shape[0] or col + w > self.shape[1]:
            raise ValueError(f"block {(h, w)} at {(row, col)} lies outside the raster {self.shape}")
        if h == 0 or w == 0:
            return
        if self._written:  # vectorised: a scene may arrive as thousands of tiles
            r0, c0, r1, c1 = np.asarray(self._written).T
            hit = np.flatnonzero((row < r1) & (r0 < row + h) & (col < c1) & (c0 < col + w))
            if hit.size:
                raise ValueError(f"block {(h, w)} at {(row, col)} overlaps one already written at "
                                 f"{(int(r0[hit[0]]), int(c0[hit[0]]))}")
        span = _label_range(labels, covered)
        if span is not None:
            clash = span[0] <= self.nodata <= span[1] and bool(
                ((labels == self.nodata) if covered is None else ((labels == self.nodata) & covered)).any())
            if span[0] < 0 or span[1] > 255 or clash:
                raise ValueError(f"class ids must lie in 0..255 and differ from nodata {self.nodata}; "
                                 f"this block holds {span[0]}..{span[1]}")
        out = labels.astype(np.uint8)
        if covered is not None:
            out[~covered] = self.nodata
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            # Opened per block: closing flushes and frees this dataset's cached tiles.
            try:
                with self._env(), rasterio.open(self._tmp, "r+") as ds:
                    ds.write(out, 1, window=rasterio.windows.Window(col, row, w, h))
            except rasterio.errors.RasterioError as exc:  # e.g. the temp disk is full
                raise GeoOutputError(f"cannot write the mask raster for {redact(self.uri)}: "
                                     f"{_scrub(str(exc), self.uri)}") from None
        self._written.append((row, col, row + h, col + w))

    add = write  # the name both writers share, for callers that feed blocks to every output alike

    def close(self) -> None:
        """Build the COG from the temporary raster and move it to ``uri``; unwritten pixels stay nodata."""
        import rasterio.errors
        import rasterio.shutil

        self._check_open()
        cog = posixpath.join(self._dir, "labels.cog.tif")
        self._state = "failed"  # until the upload has succeeded
        try:
            with warnings.catch_warnings(), self._env():
                warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
                # The COG driver streams from the source dataset; nearest overviews keep class ids.
                rasterio.shutil.copy(self._tmp, cog, driver="COG", compress="deflate", blocksize=self.block,
                                     resampling="nearest", bigtiff="IF_SAFER")
            _upload_atomic(cog, self.uri, self.storage_options, self.fence)
        except rasterio.errors.RasterioError as exc:
            raise GeoOutputError(f"cannot build the COG for {redact(self.uri)}: {_scrub(str(exc), self.uri)}") from None
        finally:
            self._cleanup()
        self._state = "closed"

    def _discard(self) -> None:
        self._cleanup()

    def _cleanup(self) -> None:
        if getattr(self, "_dir", None):
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = ""


class PolygonWriter(_SceneFile):
    """Polygons of each label of one scene, in the source CRS, as GeoParquet (for GIS users)."""

    kind = "polygon writer"

    def __init__(self, uri: str, georef: Georef | None, label_names: Sequence[str],
                 storage_options: dict | None = None, source_uri: str = "", skip_labels: Sequence[int] = (),
                 fence: Fence | None = None) -> None:
        _need("shapely", "the polygon output")
        _need("geopandas", "the polygon output")
        _need("rasterio", "the polygon output")
        self.uri, self.georef, self.label_names = uri, georef, list(label_names)
        self.storage_options, self.source_uri = storage_options, redact(source_uri)
        self.fence = fence
        self.skip_labels = {int(v) for v in skip_labels}
        # Pixel-space polygons (scene pixel coordinates): inside a block, or touching its edge.
        self._inner: dict[int, list[Any]] = {}
        self._edge: dict[int, list[Any]] = {}
        self._state = "open"

    def add(self, row: int, col: int, labels: np.ndarray, covered: np.ndarray | None = None) -> None:
        """Polygonize a block placed at (row, col); pixels with ``covered`` False belong to no polygon."""
        import rasterio.features
        import shapely.geometry
        from rasterio.transform import Affine

        self._check_open()
        labels, covered = _check_labels(labels, covered)
        h, w = labels.shape
        if h == 0 or w == 0:
            return
        span = _label_range(labels, covered)
        if span is None:
            return
        if span[0] < 0 or span[1] > np.iinfo(np.int32).max:
            raise ValueError(f"class ids must be non-negative int32, this block holds {span[0]}..{span[1]}")
        data = labels.astype(np.uint8 if span[1] <= 255 else np.int32)
        row, col = int(row), int(col)
        # Integer pixel coordinates: seam vertices from neighbouring blocks are bit-identical.
        found = rasterio.features.shapes(data, mask=covered, connectivity=4, transform=Affine.translation(col, row))
        for geom, value in found:
            label = int(value)
            if label in self.skip_labels:
                continue
            poly = shapely.geometry.shape(geom)
            x0, y0, x1, y1 = poly.bounds
            touches = x0 <= col or y0 <= row or x1 >= col + w or y1 >= row + h
            (self._edge if touches else self._inner).setdefault(label, []).append(poly)

    def _polygons(self) -> tuple[list[int], list[Any]]:
        """Labels and pixel-space polygons, edge pieces dissolved across seams, in a stable order."""
        import shapely

        labels: list[int] = []
        polys: list[Any] = []
        for label in sorted(set(self._inner) | set(self._edge)):
            pieces = list(self._inner.get(label, []))
            if self._edge.get(label):
                merged = shapely.get_parts(shapely.unary_union(self._edge[label]))
                pieces.extend(p for p in merged if p.geom_type == "Polygon" and not p.is_empty)
            pieces.sort(key=lambda p: (p.bounds[1], p.bounds[0]))
            labels.extend([label] * len(pieces))
            polys.extend(pieces)
        return labels, polys

    def _to_crs(self, polys: list[Any]) -> Any:
        """Pixel space -> the source CRS with the georef's affine transform (applied once)."""
        import shapely

        geoms = np.asarray(polys, dtype=object)
        if self.georef is None or not len(geoms):
            return geoms
        a, b, c, d, e, f = self.georef.transform
        matrix = np.array([[a, b], [d, e]], dtype=np.float64)
        offset = np.array([c, f], dtype=np.float64)
        apply: Callable[[np.ndarray], np.ndarray] = lambda xy: xy @ matrix.T + offset  # noqa: E731
        return shapely.transform(geoms, apply)

    def close(self) -> int:
        """Write the GeoParquet atomically to ``uri``; return how many polygons it holds."""
        import geopandas
        import pandas as pd
        import shapely

        self._check_open()
        self._state = "failed"  # until the upload has succeeded
        try:
            labels, polys = self._polygons()
            self._inner, self._edge = {}, {}
            geoms = self._to_crs(polys)
            del polys
            crs = self.georef.crs if self.georef is not None and self.georef.crs else None
            names = [self.label_names[v] if v < len(self.label_names) else str(v) for v in labels]
            frame = geopandas.GeoDataFrame(
                {
                    "uri": pd.Series([self.source_uri] * len(labels), dtype="string"),
                    "label": pd.Series(labels, dtype="int32"),
                    "label_name": pd.Series(names, dtype="string"),
                    "area": pd.Series(shapely.area(geoms), dtype="float64"),
                },
                geometry=geopandas.GeoSeries(list(geoms), crs=crs),
                crs=crs,
            )
            with tempfile.TemporaryDirectory(prefix="raysegment-gpq-") as folder:
                local = posixpath.join(folder, "polygons.parquet")
                frame.to_parquet(local, index=False, compression="zstd")
                _upload_atomic(local, self.uri, self.storage_options, self.fence)
        finally:
            self._inner, self._edge = {}, {}
        self._state = "closed"
        return len(labels)

    def _discard(self) -> None:
        self._inner, self._edge = {}, {}
