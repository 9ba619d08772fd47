"""Windowed access to one source scene: the input side of tiled inference.

A scene (a 50k x 50k GeoTIFF, a NIfTI volume) is never decoded whole by a worker
that can read it by range: a :class:`SceneReader` opens the file's header, says
what the scene is (:class:`SceneInfo`) and reads one :class:`~raysegment.tiling.plan.Window`
at a time. Readers per format:

* GeoTIFF / COG: rasterio through an fsspec opener (range reads), extra ``[geo]``
  (:mod:`raysegment.io.scenes.geotiff`);
* plain TIFF (no GeoTIFF tags): tifffile, reading only the strips/tiles a window
  touches (:mod:`raysegment.io.scenes.tiff`);
* NIfTI: nibabel, extra ``[medical]`` (:mod:`raysegment.io.scenes.nifti`);
* anything else the whole-image decoders take (PNG, JPEG): decoded once, then
  sliced (:class:`ArrayScene`); these formats cannot be read by range.

Every failure a bad file can cause is a :class:`~raysegment.io.decoders.DecodeError`
with a one-line reason, so the pipeline turns it into the scene's error row.
"""

from __future__ import annotations

import abc
import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from raysegment.io.decoders import DecodeError, DecodeLimits, decode
from raysegment.io.entries import entry_problem, is_local, local_path
from raysegment.plugin.contract import Modality
from raysegment.table import Table
from raysegment.tiling.plan import Window
from raysegment.uri import extension, read_bytes

__all__ = [
    "Georef",
    "VolumeGeometry",
    "SceneInfo",
    "SceneReader",
    "ArrayScene",
    "open_scene",
    "register_scene_reader",
    "strip_windows",
    "SCENE_READERS",
    "STRIP_PIXELS",
]

#: Pixels (voxels) per strip of :func:`strip_windows`: 16 M, a bounded read whatever the scene.
STRIP_PIXELS = 1 << 24


@dataclasses.dataclass(frozen=True)
class Georef:
    """Where a 2D raster lies on Earth, as GDAL/rasterio state it."""

    crs: str | None  # "EPSG:32618" when the CRS has an EPSG code, else its WKT; None when the file has none
    transform: tuple[float, float, float, float, float, float]  # affine a, b, c, d, e, f: x = a*col + b*row + c
    bounds: tuple[float, float, float, float]  # left, bottom, right, top in CRS units
    nodata: float | None  # the band's nodata value; None when unset

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Georef:
        """Back from ``dataclasses.asdict`` after a JSON trip (lists become tuples again)."""
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


@dataclasses.dataclass(frozen=True)
class VolumeGeometry:
    """Voxel grid of a 3D volume: scene array ``[d, h, w]`` is file voxel ``(i=w, j=h, k=d)``."""

    affine: tuple[float, ...]  # 16 values, row-major 4x4: voxel (i, j, k, 1) -> world (x, y, z, 1)
    spacing: tuple[float, float, float]  # voxel size along the scene's (depth, height, width) axes


@dataclasses.dataclass(frozen=True)
class SceneInfo:
    """What a reader learned from the header, before any pixel is read."""

    shape: tuple[int, ...]  # spatial: (H, W) or (D, H, W)
    bands: int
    dtype: str  # NumPy dtype name of the pixels as read
    format: str  # "GeoTIFF", "TIFF", "NIfTI", "PNG", ...
    georef: Georef | None = None
    volume: VolumeGeometry | None = None

    def meta(self) -> dict[str, Any]:
        """The JSON-able facts for the output row's ``meta`` column."""
        names = ("depth", "height", "width") if len(self.shape) == 3 else ("height", "width")
        return {**dict(zip(names, self.shape)), "bands": self.bands, "dtype": self.dtype, "format": self.format}


class SceneReader(abc.ABC):
    """One open scene. Use as a context manager; ``read`` may be called many times."""

    info: SceneInfo

    @abc.abstractmethod
    def read(self, window: Window) -> np.ndarray:
        """Pixels of ``window``, channels-last ``(*window.size, bands)``, native byte order."""

    def check_window(self, window: Window) -> None:
        """Refuse a window of another rank than the scene or reaching outside it (a caller's bug)."""
        shape = self.info.shape
        if len(window.start) != len(shape):
            raise ValueError(f"{self.info.format} scenes are {len(shape)}D; got a {len(window.start)}D window")
        if any(s < 0 or s + n > m for s, n, m in zip(window.start, window.size, shape)):
            raise ValueError(f"window {window.start}+{window.size} lies outside the scene {shape}")

    def valid_mask(self, window: Window, data: np.ndarray) -> np.ndarray | None:
        """Bool ``window.size`` array, True where a pixel holds data; None when every pixel does.

        The default follows GDAL's dataset mask for a per-band nodata value: a pixel
        is nodata when every band equals ``georef.nodata`` (or every band is NaN).
        """
        nodata = self.info.georef.nodata if self.info.georef else None
        if nodata is None:
            return None
        if np.isnan(nodata):
            return ~np.isnan(data).all(axis=-1)
        return (data != np.asarray(nodata, dtype=data.dtype)).any(axis=-1)

    def close(self) -> None:
        """Release file handles."""

    def __enter__(self) -> SceneReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ArrayScene(SceneReader):
    """A scene already in memory (formats that cannot be read by range), sliced per window."""

    def __init__(self, data: np.ndarray, info: SceneInfo) -> None:
        self.data = data
        self.info = info

    def read(self, window: Window) -> np.ndarray:
        self.check_window(window)
        return np.ascontiguousarray(self.data[window.slices()])


Opener = Callable[[str, "dict[str, Any] | None", DecodeLimits], SceneReader]
#: extension -> windowed opener. Each built-in reader module imports its own libraries lazily.
SCENE_READERS: Table[Opener] = Table(
    "scene reader",
    {
        ".tif": "raysegment.io.scenes.tiff:open_tiff_scene",
        ".tiff": "raysegment.io.scenes.tiff:open_tiff_scene",
        ".nii": "raysegment.io.scenes.nifti:open_nifti_scene",
        ".nii.gz": "raysegment.io.scenes.nifti:open_nifti_scene",
    },
)


def register_scene_reader(extensions: tuple[str, ...], opener: Opener) -> None:
    """Register a windowed reader for file extensions (with dot, lower case); a clash is an error."""
    for ext in extensions:
        SCENE_READERS.register(ext, opener)


def open_scene(
    uri: str,
    storage_options: dict[str, Any] | None = None,
    modality: Modality = Modality.IMAGE,
    limits: DecodeLimits = DecodeLimits(),
) -> SceneReader:
    """Open ``uri`` for windowed reads with the reader for its type.

    Formats without a windowed reader fall back to the whole-image decoders of
    ``modality`` (then ``limits`` applies, as for untiled input).
    """
    if is_local(uri):  # a broken link, a loop, a FIFO: one line naming the entry, never a hang
        problem = entry_problem(local_path(uri))
        if problem is not None:
            raise DecodeError(problem)
    opener = SCENE_READERS.get(extension(uri))
    if opener is not None:
        return opener(uri, storage_options, limits)
    data = read_bytes(uri, storage_options)
    if not data:
        raise DecodeError("empty file (0 bytes)")
    sample = decode(uri, data, modality, limits)
    array = sample.data if sample.data.ndim > 2 else sample.data[:, :, None]
    info = SceneInfo(
        shape=tuple(array.shape[:-1]),
        bands=int(array.shape[-1]),
        dtype=str(array.dtype),
        format=str(sample.meta.get("format", extension(uri).lstrip(".").upper())),
    )
    return ArrayScene(array, info)


def strip_windows(shape: tuple[int, ...], cell: int = 1, max_pixels: int = STRIP_PIXELS) -> list[Window]:
    """Whole-width strips along the first axis, a multiple of ``cell`` high, about ``max_pixels`` each:
    how a pass over a whole scene (the training survey, ``raysegment stats``) stays bounded in memory."""
    per_row = max(1, math.prod(shape[1:]))
    rows = max(cell, (max_pixels // per_row) // cell * cell)
    return [Window(i, (r, *(0,) * (len(shape) - 1)), (min(rows, shape[0] - r), *shape[1:]))
            for i, r in enumerate(range(0, shape[0], rows))]
