"""Windowed reads of GeoTIFF / COG scenes through rasterio (GDAL), extra ``[geo]``.

GDAL reads the file through fsspec: rasterio >= 1.4 takes a Python ``opener``
and serves GDAL's virtual-file reads from the file object it returns, so on
an object store (s3://, gs://) every block GDAL needs is one range request made
with the job's ``storage_options``, and no GDAL-specific credentials exist.
Local paths are opened by GDAL directly.

GDAL is told not to list directories or look for sidecar files
(``GDAL_DISABLE_READDIR_ON_OPEN=EMPTY_DIR``; the opener also refuses every path
but the scene's), because each probe is a request on an object store. So
external ``.msk``/``.ovr``/``.aux.xml`` files are ignored: only what is inside
the GeoTIFF counts.

Valid pixels (:meth:`GeoTiffScene.valid_mask`) follow GDAL's dataset mask: a
per-band nodata value masks a pixel when every band equals it (the base class
rule, computed from the data already read); an internal mask band or alpha band
is read with ``dataset_mask``; no nodata and no mask means every pixel is valid.
"""

from __future__ import annotations

import contextvars
import posixpath
import threading
import uuid
import warnings
from typing import Any

import numpy as np

from raysegment.errors import exception_text
from raysegment.io.decoders import DecodeError, DecodeLimits
from raysegment.io.scenes.base import Georef, SceneInfo, SceneReader
from raysegment.tiling.plan import Window
from raysegment.uri import filesystem, redact

__all__ = ["GeoTiffScene", "open_geotiff_scene", "GDAL_OPTIONS"]

#: GDAL configuration around every open and read: no directory listing, no sidecar probes.
#: No directory listing or sidecar probes on object stores; GDAL's block cache capped (its
#: default is 5% of RAM, which a reader of a 16k² scene would fill: memory that grows with the scene).
GDAL_OPTIONS = {"GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR", "GDAL_CACHEMAX": 64}


def _rasterio() -> Any:
    try:
        import rasterio
    except ImportError:
        raise DecodeError("GeoTIFF input needs rasterio: pip install 'raysegment[geo]'") from None
    return rasterio


class _OneFileOpener:
    """rasterio opener that serves exactly one file of an fsspec filesystem.

    GDAL sees the file under a unique made-up name, so two scenes open at once in
    one process never share rasterio's per-directory opener registration, and any
    other name GDAL asks for (a sidecar) is "not found" without a request.
    """

    def __init__(self, fs: Any, path: str) -> None:
        self.fs = fs
        self.path = path
        self.name = f"{uuid.uuid4().hex}/{posixpath.basename(path) or 'scene.tif'}"

    def __call__(self, path: str, mode: str = "rb", **kwargs: Any) -> Any:
        if path.lstrip("/") != self.name or "r" not in mode or "+" in mode:
            raise FileNotFoundError(path)
        from raysegment.uri import open_ranged

        return open_ranged(self.fs, self.path)


def _one_line(exc: BaseException, opener: _OneFileOpener | None, uri: str) -> str:
    """GDAL's own message in one line (rasterio's "see previous exception" wrapper unwrapped)."""
    while exc.__cause__ is not None and "previous exception" in str(exc):
        exc = exc.__cause__
    text = str(exc).strip() or exception_text(exc)
    if opener is not None:
        text = text.replace(f"/vsipyopener/{opener.name}", redact(uri)).replace(opener.name, redact(uri))
    return " ".join(text.split())


def _georef(ds: Any) -> Georef:
    crs = ds.crs
    if crs is None or not crs.to_wkt():
        crs_text = None
    else:
        epsg = crs.to_epsg()
        crs_text = f"EPSG:{epsg}" if epsg is not None else crs.to_wkt()
    nodata = ds.nodata
    return Georef(
        crs=crs_text,
        transform=tuple(float(v) for v in tuple(ds.transform)[:6]),  # type: ignore[arg-type]
        bounds=tuple(float(v) for v in ds.bounds),  # type: ignore[arg-type]
        nodata=None if nodata is None else float(nodata),
    )


class GeoTiffScene(SceneReader):
    """An open rasterio dataset read one window at a time, channels-last."""

    def __init__(
        self, uri: str, dataset: Any, info: SceneInfo, opener: _OneFileOpener | None, context: contextvars.Context
    ) -> None:
        self.uri = uri
        self.info = info
        self._ds = dataset
        self._opener = opener
        self._context = context
        self._lock = threading.Lock()  # a GDAL dataset handle is not thread-safe
        rasterio = _rasterio()
        from rasterio.enums import MaskFlags

        flags = {flag for band in dataset.mask_flag_enums for flag in band}
        self._internal_mask = bool(flags & {MaskFlags.per_dataset, MaskFlags.alpha})
        self._errors = (rasterio.errors.RasterioError, OSError)

    def _rio_window(self, window: Window) -> Any:
        from rasterio.windows import Window as RioWindow

        self.check_window(window)
        (y0, x0), (h, w) = window.start, window.size
        return RioWindow(x0, y0, w, h)

    def _call(self, method: str, **kwargs: Any) -> Any:
        """Run a dataset method under the lock, in the context it was opened in.

        rasterio keeps its Python-opener bookkeeping in context variables: a
        dataset closed (or read) from another thread than the one that opened it
        would not find its file objects otherwise.
        """
        rasterio = _rasterio()

        def run() -> Any:
            with rasterio.Env(**GDAL_OPTIONS):
                return getattr(self._ds, method)(**kwargs)

        with self._lock:
            return self._context.run(run)

    def read(self, window: Window) -> np.ndarray:
        rio_window = self._rio_window(window)
        try:
            data = self._call("read", window=rio_window, boundless=False)
        except self._errors as exc:
            raise DecodeError(f"corrupt or truncated GeoTIFF: {_one_line(exc, self._opener, self.uri)}") from exc
        data = np.moveaxis(data, 0, -1)
        if not data.dtype.isnative:
            data = data.astype(data.dtype.newbyteorder("="))
        return np.ascontiguousarray(data)

    def valid_mask(self, window: Window, data: np.ndarray) -> np.ndarray | None:
        """GDAL's dataset mask: internal mask/alpha read from the file, else nodata rule on ``data``."""
        if not self._internal_mask:
            return super().valid_mask(window, data)
        rio_window = self._rio_window(window)
        try:
            mask = self._call("dataset_mask", window=rio_window)
        except self._errors as exc:
            raise DecodeError(f"corrupt or truncated GeoTIFF mask: {_one_line(exc, self._opener, self.uri)}") from exc
        return mask > 0

    def close(self) -> None:
        self._call("close")


def open_geotiff_scene(
    uri: str, storage_options: dict[str, Any] | None = None, limits: DecodeLimits = DecodeLimits()
) -> GeoTiffScene:
    """Open a GeoTIFF/COG by range reads; only its header is read here.

    ``limits`` does not cap the scene (windows bound the memory); the segment
    check is made by :func:`raysegment.io.scenes.tiff.open_tiff_scene` before it
    dispatches here.
    """
    rasterio = _rasterio()
    from fsspec.implementations.local import LocalFileSystem

    fs, path = filesystem(uri, storage_options)
    opener = None if isinstance(fs, LocalFileSystem) else _OneFileOpener(fs, path)
    if opener is None and not fs.exists(path):
        raise FileNotFoundError(path)

    def open_dataset() -> Any:
        with rasterio.Env(**GDAL_OPTIONS), warnings.catch_warnings():
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            return rasterio.open(path) if opener is None else rasterio.open(opener.name, opener=opener)

    context = contextvars.copy_context()  # every later call on the dataset runs in it
    try:
        dataset = context.run(open_dataset)
    except FileNotFoundError:
        raise
    except (rasterio.errors.RasterioError, OSError) as exc:
        raise DecodeError(f"not a valid GeoTIFF: {_one_line(exc, opener, uri)}") from exc
    try:
        if dataset.count < 1:
            raise DecodeError("GeoTIFF holds no bands")
        dtypes = set(dataset.dtypes)
        if len(dtypes) != 1:
            raise DecodeError(f"GeoTIFF bands have different data types {sorted(dtypes)}")
        layout = dataset.tags(ns="IMAGE_STRUCTURE").get("LAYOUT", "")
        info = SceneInfo(
            shape=(dataset.height, dataset.width),
            bands=dataset.count,
            dtype=np.dtype(dataset.dtypes[0]).name,
            format="COG" if layout.upper() == "COG" else "GeoTIFF",
            georef=_georef(dataset),
        )
        return GeoTiffScene(uri, dataset, info, opener, context)
    except BaseException:
        context.run(dataset.close)
        raise
