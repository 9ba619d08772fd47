"""Windowed reads of plain TIFF files, and dispatch of GeoTIFFs to rasterio.

One opener serves ``.tif``/``.tiff``: it parses only the TIFF header (through
fsspec, so on object stores every read is a range request) and then

* hands a GeoTIFF (GeoKey directory, model tiepoint/transformation/pixel-scale
  or GDAL nodata tag) to :func:`raysegment.io.scenes.geotiff.open_geotiff_scene`,
  because only GDAL knows CRS, transform and nodata;
* reads any other TIFF with :class:`TiffScene`, which fetches and decodes only
  the strips or tiles a window intersects (uncompressed strips: only the rows
  it needs), never the whole page.

Checks made at open, before any window runs, so a bad file becomes one error
row instead of failing midway through a scene: every strip/tile must lie inside
the file (else ``truncated TIFF file``), the compression and predictor must be
decodable with what is installed, and one compressed strip/tile must not exceed
``DecodeLimits.max_pixels`` (a window read has to decode whole segments). The
scene itself may be larger than ``max_pixels``: that is what windowed reading is for.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import threading
from typing import Any

import numpy as np
import tifffile

from raysegment.errors import exception_text
from raysegment.io.decoders import (
    DecodeError,
    DecodeLimits,
    TiffWarnings,
    check_tiff_extents,
    tiff_image_series,
)
from raysegment.io.scenes.base import SceneInfo, SceneReader
from raysegment.tiling.plan import Window
from raysegment.uri import filesystem, open_ranged

__all__ = ["TiffScene", "open_tiff_scene", "GEOTIFF_TAGS"]

#: Tags that make a TIFF a GeoTIFF for dispatch: ModelPixelScale, ModelTiepoint,
#: ModelTransformation, GeoKeyDirectory, GDAL_NODATA (nodata needs GDAL's semantics too).
GEOTIFF_TAGS = frozenset({33550, 33922, 34264, 34735, 42113})

_RAW_BITS = {8, 16, 32, 64}


def _file_size(fh: Any) -> int:
    fh.seek(0, 2)
    size = int(fh.tell())
    fh.seek(0)
    return size


def _is_geotiff(page: Any) -> bool:
    return any(code in page.tags for code in GEOTIFF_TAGS)


def _keyexception_text(exc: KeyError) -> str:
    return str(exc.args[0]) if exc.args else "not supported"


def _check_decodable(page: Any, limits: DecodeLimits) -> None:
    """Refuse at open what no window could decode: missing codecs, huge compressed segments."""
    if page.dtype is None:
        raise DecodeError(f"TIFF data type not supported (SampleFormat {page.sampleformat}, {page.bitspersample}-bit)")
    if page.compression != 1:
        try:
            tifffile.TIFF.DECOMPRESSORS[page.compression]
        except KeyError as exc:
            raise DecodeError(f"cannot decode TIFF compression {page.compression!s}: {_keyexception_text(exc)}") from None
    if page.predictor != 1:
        try:
            tifffile.TIFF.UNPREDICTORS[page.predictor]
        except KeyError as exc:
            raise DecodeError(f"cannot decode TIFF predictor {page.predictor!s}: {_keyexception_text(exc)}") from None
    bits = page.bitspersample
    if (not isinstance(bits, int) or bits not in _RAW_BITS) and importlib.util.find_spec("imagecodecs") is None:
        # tifffile unpacks other bit depths (1-bit, 12-bit, RGB565) with imagecodecs
        raise DecodeError(f"cannot decode {bits}-bit TIFF samples without the imagecodecs package")
    _check_segment_size(page, limits)


def _check_segment_size(page: Any, limits: DecodeLimits) -> None:
    """A window decodes whole compressed strips/tiles: one must fit ``max_pixels``.

    Uncompressed strips are exempt: :class:`TiffScene` reads their rows by range,
    and GDAL splits them the same way.
    """
    if page.compression == 1 and not page.is_tiled:
        return
    if page.is_tiled:
        kind, rows, cols = "tile", page.tilelength, page.tilewidth
    else:
        kind, rows, cols = "strip", min(page.rowsperstrip, page.imagelength), page.imagewidth
    if rows * cols > limits.max_pixels:
        raise DecodeError(
            f"TIFF {kind} of {cols}x{rows} pixels is over the limit of {limits.max_pixels:,}: "
            "every window would decode it whole; rewrite the file tiled"
        )


class TiffScene(SceneReader):
    """A plain (non-geo) TIFF read window by window from its strips or tiles.

    Bands are the page's samples, and for a multi-page image whose pages are
    channels (axes ``I``/``C``/``Q``) the pages' samples one after another, in the
    order :func:`raysegment.io.decoders.decode` gives them. ``segments_read`` counts
    the strips/tiles (per plane, per page) fetched so far: a window touches only
    those it intersects.
    """

    def __init__(self, uri: str, fh: Any, tiff: tifffile.TiffFile, pages: list[Any], info: SceneInfo) -> None:
        self.uri = uri
        self.info = info
        self.segments_read = 0
        self._fh = fh
        self._tiff = tiff
        self._lock = threading.Lock()
        key = pages[0].keyframe if hasattr(pages[0], "keyframe") else pages[0]
        self._key = key
        self._offsets = [tuple(int(o) for o in p.dataoffsets) for p in pages]
        self._counts = [tuple(int(c) for c in p.databytecounts) for p in pages]
        self._decode = key.decode
        self._jpegtables = getattr(key, "jpegtables", None)
        self._planes = key.samplesperpixel if key.planarconfig == 2 else 1
        self._contig = key.samplesperpixel if key.planarconfig != 2 else 1
        self._file_dtype = np.dtype(tiff.byteorder + key.dtype.char)
        self._raw_strips = (
            not key.is_tiled
            and key.compression == 1
            and key.predictor == 1
            and key.fillorder == 1
            and isinstance(key.bitspersample, int)
            and key.bitspersample in _RAW_BITS
            and key.bitspersample == self._file_dtype.itemsize * 8
        )

    # -- low-level I/O ---------------------------------------------------------------
    def _pread(self, offset: int, size: int) -> bytes:
        with self._lock:
            self._fh.seek(offset)
            data = self._fh.read(size)
        if len(data) != size:
            raise DecodeError(f"truncated TIFF file: wanted {size:,} bytes at {offset:,}, got {len(data):,}")
        return data

    def _segment(self, page: int, index: int) -> np.ndarray | None:
        """Decoded segment ``(depth, rows, cols, contig samples)``, or None for an empty one."""
        offset, count = self._offsets[page][index], self._counts[page][index]
        self.segments_read += 1
        data = self._pread(offset, count) if offset > 0 and count > 0 else None
        try:
            segment, _, _ = self._decode(data, index, jpegtables=self._jpegtables)
        except Exception as exc:
            raise DecodeError(f"corrupt TIFF data in segment {index}: {exception_text(exc)}") from exc
        return segment

    # -- windows ---------------------------------------------------------------------
    def read(self, window: Window) -> np.ndarray:
        self.check_window(window)
        (y0, x0), (h, w) = window.start, window.size
        out = np.zeros((h, w, self.info.bands), dtype=self.info.dtype)
        per_page = self._planes * self._contig
        for page in range(len(self._offsets)):
            bands = out[:, :, page * per_page : (page + 1) * per_page]
            for plane in range(self._planes):
                dst = bands[:, :, plane : plane + 1] if self._planes > 1 else bands
                if self._key.is_tiled:
                    self._read_tiles(page, plane, y0, x0, h, w, dst)
                elif self._raw_strips:
                    self._read_raw_rows(page, plane, y0, x0, h, w, dst)
                else:
                    self._read_strips(page, plane, y0, x0, h, w, dst)
        return out

    def _plane_base(self, page: int, plane: int) -> int:
        return plane * (len(self._offsets[page]) // self._planes)

    def _read_tiles(self, page: int, plane: int, y0: int, x0: int, h: int, w: int, dst: np.ndarray) -> None:
        th, tw = self._key.tilelength, self._key.tilewidth
        across = math.ceil(self.info.shape[1] / tw)
        base = self._plane_base(page, plane)
        for ty in range(y0 // th, (y0 + h - 1) // th + 1):
            r0, r1 = max(y0, ty * th), min(y0 + h, (ty + 1) * th)
            for tx in range(x0 // tw, (x0 + w - 1) // tw + 1):
                c0, c1 = max(x0, tx * tw), min(x0 + w, (tx + 1) * tw)
                tile = self._segment(page, base + ty * across + tx)
                if tile is None:
                    continue  # sparse tile: stays 0, as tifffile and GDAL fill it
                src = tile[0, r0 - ty * th : r1 - ty * th, c0 - tx * tw : c1 - tx * tw]
                dst[r0 - y0 : r1 - y0, c0 - x0 : c1 - x0] = src

    def _read_strips(self, page: int, plane: int, y0: int, x0: int, h: int, w: int, dst: np.ndarray) -> None:
        rps = min(self._key.rowsperstrip, self.info.shape[0])
        base = self._plane_base(page, plane)
        for s in range(y0 // rps, (y0 + h - 1) // rps + 1):
            r0, r1 = max(y0, s * rps), min(y0 + h, (s + 1) * rps)
            strip = self._segment(page, base + s)
            if strip is None:
                continue
            if strip.shape[1] < r1 - s * rps:
                raise DecodeError(
                    f"corrupt TIFF data in strip {base + s}: {strip.shape[1]} rows decoded, {r1 - s * rps} needed"
                )
            dst[r0 - y0 : r1 - y0] = strip[0, r0 - s * rps : r1 - s * rps, x0 : x0 + w]

    def _read_raw_rows(self, page: int, plane: int, y0: int, x0: int, h: int, w: int, dst: np.ndarray) -> None:
        """Uncompressed strips: fetch only the window's rows (tifffile writes one strip per image)."""
        rps = min(self._key.rowsperstrip, self.info.shape[0])
        row_items = self.info.shape[1] * self._contig
        row_bytes = row_items * self._file_dtype.itemsize
        base = self._plane_base(page, plane)
        for s in range(y0 // rps, (y0 + h - 1) // rps + 1):
            r0, r1 = max(y0, s * rps), min(y0 + h, (s + 1) * rps)
            index = base + s
            offset, count = self._offsets[page][index], self._counts[page][index]
            self.segments_read += 1
            if offset <= 0 or count <= 0:
                continue
            start, size = (r0 - s * rps) * row_bytes, (r1 - r0) * row_bytes
            if start + size > count:
                raise DecodeError(f"corrupt TIFF file: strip {index} holds {count:,} bytes, fewer than its rows need")
            rows = np.frombuffer(self._pread(offset + start, size), self._file_dtype)
            rows = rows.reshape(r1 - r0, self.info.shape[1], self._contig)
            dst[r0 - y0 : r1 - y0] = rows[:, x0 : x0 + w]

    def close(self) -> None:
        try:
            self._tiff.close()
        finally:
            self._fh.close()


def _series_pages(tiff: tifffile.TiffFile) -> tuple[list[Any], int, int]:
    """Pages of the first series, its height and width; a stack that is not bands is refused."""
    series, axes, shape = tiff_image_series(tiff)
    pages = list(series.pages)
    if not pages or any(p is None for p in pages):
        raise DecodeError("corrupt TIFF file: pages of the image are missing")
    key = series.keyframe
    if getattr(key, "imagedepth", 1) > 1:
        raise DecodeError(f"TIFF holds a volume of depth {key.imagedepth}; image input takes one 2D image with bands")
    if (key.imagelength, key.imagewidth) != (shape[axes.index("Y")], shape[axes.index("X")]):
        raise DecodeError(f"TIFF series shape {shape} does not match its pages ({key.imagelength}x{key.imagewidth})")
    return pages, key.imagelength, key.imagewidth


def _raise_if_directory_missing(tiff: tifffile.TiffFile, size: int) -> None:
    """A header whose first image directory lies past the end: the file was cut short."""
    fh = tiff.filehandle
    fh.seek(4 if not tiff.is_bigtiff else 8)
    offset = int.from_bytes(fh.read(4 if not tiff.is_bigtiff else 8), "big" if tiff.byteorder == ">" else "little")
    if offset >= size:
        raise DecodeError(
            f"truncated TIFF file: its first image directory is at byte {offset:,} but the file has {size:,} bytes"
        )


def open_tiff_scene(
    uri: str, storage_options: dict[str, Any] | None = None, limits: DecodeLimits = DecodeLimits()
) -> SceneReader:
    """Open a ``.tif``/``.tiff`` for windowed reads: GeoTIFF via rasterio, plain TIFF via tifffile."""
    fs, path = filesystem(uri, storage_options)
    fh = open_ranged(fs, path)
    tiff = None
    logger = logging.getLogger("tifffile")
    records = TiffWarnings()
    logger.addHandler(records)
    try:
        size = _file_size(fh)
        if size == 0:
            raise DecodeError("empty file (0 bytes)")
        try:
            tiff = tifffile.TiffFile(fh, name=path.rsplit("/", 1)[-1])
        except Exception as exc:
            raise DecodeError(f"not a valid TIFF image: {exception_text(exc)}") from exc
        try:
            first = tiff.pages[0]
        except Exception as exc:
            _raise_if_directory_missing(tiff, size)
            raise DecodeError(f"not a valid TIFF image: {exception_text(exc)}") from exc
        records.raise_if_corrupt()
        if _is_geotiff(first):
            check_tiff_extents([first], size)  # GDAL would only fail on the first read
            _check_segment_size(first, limits)
            tiff.close()
            tiff = None
            fh.close()
            from raysegment.io.scenes.geotiff import open_geotiff_scene

            return open_geotiff_scene(uri, storage_options, limits)
        pages, height, width = _series_pages(tiff)
        key = pages[0].keyframe if hasattr(pages[0], "keyframe") else pages[0]
        _check_decodable(key, limits)
        check_tiff_extents(pages, size)
        records.raise_if_corrupt()
        bands = len(pages) * key.samplesperpixel
        info = SceneInfo(shape=(height, width), bands=bands, dtype=np.dtype(key.dtype.char).name, format="TIFF")
        return TiffScene(uri, fh, tiff, pages, info)
    except BaseException:
        if tiff is not None:
            tiff.close()
        fh.close()
        raise
    finally:
        logger.removeHandler(records)


