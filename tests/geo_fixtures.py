"""Raster fixtures for the scene-reader tests: the real Landsat scene, plain TIFFs, GeoTIFFs, big COGs.

``make_cog`` builds scenes far larger than the Landsat file without holding
them in memory: it writes a tiled GTiff one band of rows at a time, then lets
GDAL's COG driver (which cannot write by window) convert it with a small block
cache.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

#: The real Landsat 7 RGB subset from rasterio's test data (CC0), 791x718, EPSG:32618, nodata 0.
LANDSAT = Path(__file__).parent / "data" / "landsat" / "RGB.byte.tif"

#: A UTM 18N transform with 30 m pixels, for GeoTIFFs made from arrays.
DEFAULT_TRANSFORM = (30.0, 0.0, 500000.0, 0.0, -30.0, 4500000.0)


def make_tiff(
    path: Path | str,
    array: np.ndarray,
    tile: tuple[int, int] | None = None,
    planar: bool = False,
    compression: str | None = None,
    rowsperstrip: int | None = None,
    byteorder: str = "<",
) -> Path:
    """A plain (non-geo) TIFF of ``array`` (H, W) or (H, W, bands) via tifffile.

    ``planar`` stores bands as separate planes; ``rowsperstrip`` sets the strip
    height of an untiled file (tifffile writes one strip per image by default).
    """
    import tifffile

    array = np.asarray(array)
    if array.ndim == 2:
        array = array[:, :, None]
    bands = array.shape[-1]
    photometric = "rgb" if bands == 3 and array.dtype == np.uint8 else "minisblack"
    if planar:
        data, planarconfig = np.moveaxis(array, -1, 0), "separate"
    else:
        data, planarconfig = array, "contig"
    if bands == 1:
        data, planarconfig = array[:, :, 0], None
    kwargs: dict[str, Any] = {"photometric": photometric, "byteorder": byteorder}
    if planarconfig:
        kwargs["planarconfig"] = planarconfig
    if tile is not None:
        kwargs["tile"] = tuple(tile)
    if compression is not None:
        kwargs["compression"] = compression
    if rowsperstrip is not None:
        kwargs["rowsperstrip"] = rowsperstrip
    tifffile.imwrite(path, data, **kwargs)
    return Path(path)


def make_geotiff(
    path: Path | str,
    array: np.ndarray,
    crs: str | None = "EPSG:32618",
    transform: Sequence[float] = DEFAULT_TRANSFORM,
    nodata: float | None = None,
    **profile: Any,
) -> Path:
    """A GeoTIFF of ``array`` (H, W) or (H, W, bands) via rasterio; ``crs=None`` writes none.

    ``profile`` goes to the GTiff driver (``tiled=True, blockxsize=..., compress=...``).
    """
    import rasterio
    from affine import Affine

    array = np.asarray(array)
    if array.ndim == 2:
        array = array[:, :, None]
    height, width, bands = array.shape
    with rasterio.open(
        path, "w", driver="GTiff", height=height, width=width, count=bands, dtype=array.dtype,
        crs=crs, transform=Affine(*transform), nodata=nodata, **profile,
    ) as dst:
        dst.write(np.moveaxis(array, -1, 0))
    return Path(path)


def make_cog(path: Path | str, size: int, source: Path | str = LANDSAT, tile_size: int = 512) -> Path:
    """A ``size`` x ``size`` 3-band uint8 COG: ``source`` upsampled (nearest) to cover the same bounds.

    Same CRS and bounds as ``source``, pixel size scaled by ``source size / size``,
    nodata 0 (the source's nodata corners stay nodata). Written a row of tiles at
    a time (``tile_size`` rows x ``size`` columns in memory) to a temporary tiled
    GTiff, then converted by GDAL's COG driver with a 64 MB block cache, so a
    16384-pixel scene needs far less memory than its 805 MB of pixels.
    """
    import rasterio
    import rasterio.shutil
    from affine import Affine
    from rasterio.windows import Window

    path = Path(path)
    with rasterio.open(source) as src:
        pixels = np.moveaxis(src.read(), 0, -1)  # small: the source is a normal image
        crs, (left, bottom, right, top) = src.crs, src.bounds
    src_h, src_w, bands = pixels.shape
    transform = Affine((right - left) / size, 0.0, left, 0.0, -(top - bottom) / size, top)
    cols = (np.arange(size, dtype=np.int64) * src_w) // size
    tmp = path.with_name(path.name + ".tmp.tif")
    profile = {
        "driver": "GTiff", "height": size, "width": size, "count": bands, "dtype": "uint8", "crs": crs,
        "transform": transform, "nodata": 0, "tiled": True, "blockxsize": tile_size, "blockysize": tile_size,
        "compress": "deflate", "zlevel": 1, "bigtiff": "IF_SAFER",
    }
    try:
        with rasterio.Env(GDAL_CACHEMAX=64):
            with rasterio.open(tmp, "w", **profile) as dst:
                for row0 in range(0, size, tile_size):
                    rows = (np.arange(row0, min(size, row0 + tile_size), dtype=np.int64) * src_h) // size
                    block = pixels[rows][:, cols]  # (rows, size, bands)
                    dst.write(np.moveaxis(block, -1, 0), window=Window(0, row0, size, len(rows)))
            rasterio.shutil.copy(
                tmp, path, driver="COG", compress="deflate", level=1, blocksize=tile_size,
                overview_resampling="nearest", bigtiff="IF_SAFER", num_threads=1,
            )
    finally:
        if tmp.exists():
            os.remove(tmp)
    return path
