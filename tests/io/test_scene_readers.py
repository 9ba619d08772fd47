"""Windowed scene readers for TIFF (tifffile) and GeoTIFF/COG (rasterio), through ``open_scene``.

Every window is checked against the whole file read by the reference library
(the project's whole-image TIFF decoder, or rasterio), on a real Landsat scene,
synthetic TIFF layouts, COGs, truncated and garbage files, and through S3
(moto server + s3fs).
"""

from __future__ import annotations

import importlib.util
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import geo_fixtures
import numpy as np
import pytest

from raysegment.io.decoders import DecodeError, DecodeLimits, decode
from raysegment.io.scenes.base import open_scene
from raysegment.plugin.contract import Modality
from raysegment.tiling.plan import TilePlan, Window

rasterio = pytest.importorskip("rasterio", reason="GeoTIFF tests need rasterio (the [geo] extra)")


@pytest.fixture(scope="module")
def landsat() -> Path:
    if not geo_fixtures.LANDSAT.is_file():
        pytest.skip(f"test data missing: {geo_fixtures.LANDSAT}")
    return geo_fixtures.LANDSAT


def plan_windows(shape: tuple[int, int], tile: int, overlap: int) -> list[Window]:
    """First (corner), an interior, an edge and the last (shifted back) window of the plan."""
    plan = TilePlan.for_shape(shape, tile, overlap)
    rows, cols = plan.grid
    assert rows >= 3 and cols >= 3, "the scene must be at least 3 windows on each axis"
    by_pos = {w.start: w for w in plan.windows}
    interior = by_pos[(plan.axis_starts(0)[1], plan.axis_starts(1)[1])]
    edge = by_pos[(plan.axis_starts(0)[1], plan.axis_starts(1)[-1])]
    last = plan.windows[-1]
    assert last.stop == tuple(shape) and last.start[0] % plan.stride[0] != 0  # really shifted back
    return [plan.windows[0], interior, edge, last]


def rasterio_whole(path: Path) -> np.ndarray:
    with rasterio.open(path) as ds:
        return np.moveaxis(ds.read(), 0, -1)


# -- plain TIFF ---------------------------------------------------------------------------
RNG = np.random.default_rng(4)
RGB8 = RNG.integers(0, 256, (300, 410, 3), dtype=np.uint8)
TWO16 = RNG.integers(0, 65536, (300, 410, 2), dtype=np.uint16)
ONE32 = RNG.random((300, 410), dtype=np.float32)

LAYOUTS = {
    "one-strip": (RGB8, {}),
    "strips-7-rows": (RGB8, {"rowsperstrip": 7}),
    "strips-deflate": (RGB8, {"rowsperstrip": 16, "compression": "zlib"}),
    "tiled": (RGB8, {"tile": (64, 48)}),
    "tiled-deflate": (RGB8, {"tile": (64, 48), "compression": "zlib"}),
    "planar-strips": (RGB8, {"planar": True, "rowsperstrip": 20}),
    "planar-tiled-deflate": (RGB8, {"planar": True, "tile": (32, 32), "compression": "zlib"}),
    "uint16-2band-tiled": (TWO16, {"tile": (64, 64)}),
    "uint16-bigendian-deflate": (TWO16, {"byteorder": ">", "rowsperstrip": 10, "compression": "zlib"}),
    "float32-tiled-deflate": (ONE32, {"tile": (128, 128), "compression": "zlib"}),
    "float32-one-strip": (ONE32, {}),
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_plain_tiff_windows_equal_whole_image(tmp_path: Path, layout: str) -> None:
    array, options = LAYOUTS[layout]
    path = geo_fixtures.make_tiff(tmp_path / f"{layout}.tif", array, **options)
    whole = decode(str(path), path.read_bytes(), Modality.IMAGE).data  # tifffile, whole image
    expected = array if array.ndim == 3 else array[:, :, None]
    assert np.array_equal(whole, expected)
    with open_scene(str(path)) as scene:
        assert type(scene).__name__ == "TiffScene"
        assert scene.info.shape == (300, 410) and scene.info.bands == expected.shape[2]
        assert scene.info.dtype == expected.dtype.name and scene.info.format == "TIFF"
        assert scene.info.georef is None
        for window in plan_windows(scene.info.shape, 128, 16):
            data = scene.read(window)
            assert data.shape == (*window.size, expected.shape[2])
            assert data.dtype == expected.dtype and data.dtype.isnative
            assert np.array_equal(data, whole[window.slices()]), window
            assert scene.valid_mask(window, data) is None


def test_multipage_tiff_reads_pages_as_bands_like_the_decoder(tmp_path: Path) -> None:
    import tifffile

    path = tmp_path / "pages.tif"
    tifffile.imwrite(path, np.moveaxis(TWO16, -1, 0), photometric="minisblack")  # two pages
    whole = decode(str(path), path.read_bytes(), Modality.IMAGE).data
    assert np.array_equal(whole, TWO16)
    with open_scene(str(path)) as scene:
        assert scene.info.bands == 2
        for window in plan_windows(scene.info.shape, 128, 16):
            assert np.array_equal(scene.read(window), TWO16[window.slices()])


def tiles_touched(start: int, size: int, tile: int) -> int:
    return (start + size - 1) // tile - start // tile + 1


@pytest.mark.parametrize("planar", [False, True])
def test_window_decodes_only_the_tiles_it_intersects(tmp_path: Path, planar: bool) -> None:
    array = RNG.integers(0, 256, (1024, 1280, 3), dtype=np.uint8)
    path = geo_fixtures.make_tiff(tmp_path / "big.tif", array, tile=(128, 128), planar=planar, compression="zlib")
    window = Window(0, (200, 300), (256, 256))
    with open_scene(str(path)) as scene:
        assert scene.segments_read == 0
        data = scene.read(window)
        planes = 3 if planar else 1
        expected = tiles_touched(200, 256, 128) * tiles_touched(300, 256, 128) * planes
        assert scene.segments_read == expected == 9 * planes
        assert scene.segments_read < (1024 // 128) * (1280 // 128) * planes / 8
    assert np.array_equal(data, array[200:456, 300:556])


def test_uncompressed_single_strip_reads_window_rows_only(tmp_path: Path) -> None:
    """tifffile writes one strip per image: the reader must not need the whole strip's pixels."""
    array = RNG.integers(0, 256, (512, 300, 3), dtype=np.uint8)
    path = geo_fixtures.make_tiff(tmp_path / "strip.tif", array)
    limits = DecodeLimits(max_pixels=64 * 64)  # far below one strip: only row reads are possible
    with open_scene(str(path), limits=limits) as scene:
        window = Window(0, (100, 50), (64, 64))
        assert np.array_equal(scene.read(window), array[100:164, 50:114])
        assert scene.segments_read == 1


def test_compressed_segment_over_pixel_limit_fails_at_open(tmp_path: Path) -> None:
    path = geo_fixtures.make_tiff(tmp_path / "big-strip.tif", RGB8, compression="zlib", rowsperstrip=300)
    with pytest.raises(DecodeError, match="strip of 410x300 pixels is over the limit"):
        open_scene(str(path), limits=DecodeLimits(max_pixels=10_000))


def test_tiff_stack_is_refused(tmp_path: Path) -> None:
    import tifffile

    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, np.zeros((4, 32, 32), np.uint8), metadata={"axes": "ZYX"})
    with pytest.raises(DecodeError, match="stack"):
        open_scene(str(path))


def test_truncated_tiff_fails_at_open(tmp_path: Path) -> None:
    path = geo_fixtures.make_tiff(tmp_path / "full.tif", RGB8, tile=(64, 64), compression="zlib")
    cut = tmp_path / "cut.tif"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size * 2 // 3])
    with pytest.raises(DecodeError, match="truncated TIFF file: pixel data ends at byte"):
        open_scene(str(cut))


@pytest.mark.parametrize("content, words", [(b"not a tiff at all\n" * 40, "not a valid TIFF image"), (b"", "empty file")])
def test_garbage_or_empty_tiff(tmp_path: Path, content: bytes, words: str) -> None:
    path = tmp_path / "bad.tif"
    path.write_bytes(content)
    with pytest.raises(DecodeError, match=words):
        open_scene(str(path))


def test_corrupt_tile_data_is_a_decode_error(tmp_path: Path) -> None:
    import tifffile

    path = geo_fixtures.make_tiff(tmp_path / "t.tif", RGB8, tile=(64, 64), compression="zlib")
    with tifffile.TiffFile(path) as tif:
        offset = tif.pages[0].dataoffsets[0]
    raw = bytearray(path.read_bytes())
    raw[offset : offset + 16] = b"\xff" * 16  # break the first tile's deflate stream
    path.write_bytes(bytes(raw))
    with open_scene(str(path)) as scene:
        assert scene.read(Window(0, (64, 64), (64, 64))).shape == (64, 64, 3)  # other tiles still read
        with pytest.raises(DecodeError, match="corrupt TIFF data in segment 0"):
            scene.read(Window(0, (0, 0), (64, 64)))


@pytest.mark.skipif(importlib.util.find_spec("imagecodecs") is not None, reason="imagecodecs decodes LZW")
def test_lzw_without_imagecodecs_fails_at_open(tmp_path: Path) -> None:
    import tifffile

    path = geo_fixtures.make_tiff(tmp_path / "lzw.tif", RGB8, tile=(64, 64), compression="zlib")
    with tifffile.TiffFile(path, mode="r+b") as tif:
        tif.pages[0].tags[259].overwrite(5)  # claim LZW: tifffile needs imagecodecs for it
    with pytest.raises(DecodeError, match="compression.*imagecodecs"):
        open_scene(str(path))


def test_window_outside_scene_is_a_caller_error(tmp_path: Path) -> None:
    path = geo_fixtures.make_tiff(tmp_path / "t.tif", RGB8, tile=(64, 64))
    with open_scene(str(path)) as scene, pytest.raises(ValueError, match="outside the scene"):
        scene.read(Window(0, (250, 0), (64, 64)))


# -- GeoTIFF ------------------------------------------------------------------------------
def test_landsat_georef_and_windows(landsat: Path) -> None:
    whole = rasterio_whole(landsat)
    with rasterio.open(landsat) as ds:
        transform, bounds = tuple(ds.transform)[:6], tuple(ds.bounds)
        gdal_mask = ds.dataset_mask() > 0
    with open_scene(str(landsat)) as scene:
        info = scene.info
        assert (info.shape, info.bands, info.dtype, info.format) == ((718, 791), 3, "uint8", "GeoTIFF")
        assert info.georef.crs == "EPSG:32618"
        assert info.georef.transform == transform
        assert info.georef.transform[0] == pytest.approx(300.0379266750948)
        assert info.georef.bounds == bounds == (101985.0, 2611485.0, 339315.0, 2826915.0)
        assert info.georef.nodata == 0.0
        for window in plan_windows(info.shape, 256, 32):
            data = scene.read(window)
            assert data.shape == (*window.size, 3) and data.dtype == np.uint8
            assert np.array_equal(data, whole[window.slices()]), window
            mask = scene.valid_mask(window, data)
            assert np.array_equal(mask, gdal_mask[window.slices()]), window
        corner = scene.read(Window(0, (0, 0), (64, 64)))
        assert not scene.valid_mask(Window(0, (0, 0), (64, 64)), corner).any()  # nodata corner
        centre_window = Window(0, (327, 363), (64, 64))
        assert scene.valid_mask(centre_window, scene.read(centre_window)).all()  # inside the footprint


def test_geotiff_without_crs_works(tmp_path: Path) -> None:
    array = RNG.integers(1, 256, (200, 240, 2), dtype=np.uint8)
    path = geo_fixtures.make_geotiff(tmp_path / "nocrs.tif", array, crs=None, tiled=True, blockxsize=64, blockysize=64)
    with open_scene(str(path)) as scene:
        assert type(scene).__name__ == "GeoTiffScene"
        assert scene.info.georef.crs is None
        assert scene.info.georef.transform == geo_fixtures.DEFAULT_TRANSFORM
        assert scene.info.georef.nodata is None
        window = Window(0, (100, 150), (100, 90))
        data = scene.read(window)
        assert np.array_equal(data, array[100:200, 150:240])
        assert scene.valid_mask(window, data) is None


def test_geotiff_crs_without_epsg_code_is_wkt(tmp_path: Path) -> None:
    crs = "+proj=aea +lat_1=29.5 +lat_2=45.5 +lat_0=23 +lon_0=-96 +x_0=0 +y_0=0 +datum=WGS84 +units=m +no_defs"
    path = geo_fixtures.make_geotiff(tmp_path / "aea.tif", np.ones((16, 16), np.uint8), crs=crs)
    with open_scene(str(path)) as scene, rasterio.open(path) as ds:
        assert ds.crs.to_epsg() is None
        assert scene.info.georef.crs == ds.crs.to_wkt()
        assert rasterio.crs.CRS.from_wkt(scene.info.georef.crs) == ds.crs


def test_geotiff_float_nan_nodata_mask(tmp_path: Path) -> None:
    array = RNG.random((64, 80, 2), dtype=np.float32)
    array[:10, :10, :] = np.nan  # all bands nodata: invalid
    array[20, 20, 0] = np.nan  # one band only: still valid, as GDAL's dataset mask says
    path = geo_fixtures.make_geotiff(tmp_path / "nan.tif", array, nodata=float("nan"))
    with open_scene(str(path)) as scene, rasterio.open(path) as ds:
        window = Window(0, (0, 0), (64, 80))
        data = scene.read(window)
        assert np.isnan(scene.info.georef.nodata)
        assert np.array_equal(scene.valid_mask(window, data), ds.dataset_mask() > 0)
        assert not scene.valid_mask(window, data)[:10, :10].any() and scene.valid_mask(window, data)[20, 20]


def test_cog_windows_equal_rasterio(tmp_path: Path, landsat: Path) -> None:
    path = geo_fixtures.make_cog(tmp_path / "small-cog.tif", 1024, tile_size=256)
    whole = rasterio_whole(path)
    with rasterio.open(landsat) as src:
        landsat_bounds, landsat_crs = tuple(src.bounds), src.crs
    with open_scene(str(path)) as scene:
        assert scene.info.format == "COG" and scene.info.shape == (1024, 1024)
        assert scene.info.georef.crs == landsat_crs.to_string() == "EPSG:32618"
        assert scene.info.georef.bounds == pytest.approx(landsat_bounds)
        assert scene.info.georef.nodata == 0.0
        for window in plan_windows(scene.info.shape, 300, 40):
            assert np.array_equal(scene.read(window), whole[window.slices()]), window


def test_truncated_geotiffs(tmp_path: Path, landsat: Path) -> None:
    from raysegment.io.scenes.geotiff import open_geotiff_scene

    cut_landsat = tmp_path / "cut-landsat.tif"  # its directory is at the end: the header is gone
    cut_landsat.write_bytes(landsat.read_bytes()[:1_000_000])
    with pytest.raises(DecodeError, match="TIFF"):
        open_scene(str(cut_landsat))
    with pytest.raises(DecodeError, match="not a valid GeoTIFF"):
        open_geotiff_scene(str(cut_landsat))

    cog = geo_fixtures.make_cog(tmp_path / "cog.tif", 1024, tile_size=256)
    cut_cog = tmp_path / "cut-cog.tif"  # header first: only the last tiles are missing
    cut_cog.write_bytes(cog.read_bytes()[: cog.stat().st_size * 6 // 10])
    with pytest.raises(DecodeError, match="truncated TIFF file"):
        open_scene(str(cut_cog))  # caught at open, from the header's tile extents
    with open_geotiff_scene(str(cut_cog)) as scene:  # rasterio alone: fails on the first read instead
        with pytest.raises(DecodeError, match="corrupt or truncated GeoTIFF: cut-cog.tif.*failed"):
            scene.read(Window(0, (768, 768), (256, 256)))


def test_garbage_geotiff_direct(tmp_path: Path) -> None:
    from raysegment.io.scenes.geotiff import open_geotiff_scene

    path = tmp_path / "garbage.tif"
    path.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(DecodeError, match="not a valid GeoTIFF"):
        open_geotiff_scene(str(path))


def test_geotiff_needs_rasterio_message(tmp_path: Path, landsat: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "rasterio", None)  # import rasterio now raises ImportError
    with pytest.raises(DecodeError, match=r"GeoTIFF input needs rasterio: pip install 'raysegment\[geo\]'"):
        open_scene(str(landsat))
    plain = geo_fixtures.make_tiff(tmp_path / "plain.tif", RGB8, tile=(64, 64))
    with open_scene(str(plain)) as scene:  # plain TIFFs do not need it
        assert scene.read(Window(0, (0, 0), (64, 64))).shape == (64, 64, 3)


# -- object storage -----------------------------------------------------------------------
def test_scenes_read_through_s3(tmp_path: Path, s3_bucket: str, landsat: Path) -> None:
    s3fs = pytest.importorskip("s3fs")
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    plain_array = RNG.integers(0, 65536, (400, 520, 2), dtype=np.uint16)
    plain = geo_fixtures.make_tiff(tmp_path / "plain.tif", plain_array, tile=(128, 128), compression="zlib")
    fs.put_file(str(landsat), f"{s3_bucket}/scenes/landsat.tif")
    fs.put_file(str(plain), f"{s3_bucket}/scenes/plain.tif")
    whole = rasterio_whole(landsat)
    geo = open_scene(f"s3://{s3_bucket}/scenes/landsat.tif", {"skip_instance_cache": True})
    tiff = open_scene(f"s3://{s3_bucket}/scenes/plain.tif", {})
    with ThreadPoolExecutor(1) as pool:  # same object and prefix, open at once, from another thread
        other = pool.submit(open_scene, f"s3://{s3_bucket}/scenes/landsat.tif", {}).result()
    with geo, tiff, other:  # "other" is read and closed here, not in the thread that opened it
        assert type(geo).__name__ == "GeoTiffScene" and type(tiff).__name__ == "TiffScene"
        assert geo.info.georef.crs == "EPSG:32618" and geo.info.georef.nodata == 0.0
        for window in plan_windows(geo.info.shape, 256, 32):
            assert np.array_equal(geo.read(window), whole[window.slices()])
            assert np.array_equal(other.read(window), whole[window.slices()])
        for window in plan_windows(tiff.info.shape, 160, 16):
            assert np.array_equal(tiff.read(window), plain_array[window.slices()])
        assert tiff.segments_read < 4 * 5 * 4  # four windows of at most 2x2 tiles, not all 20 tiles each


# -- large scenes -------------------------------------------------------------------------
@pytest.mark.slow
def test_large_cog_windows(tmp_path: Path, landsat: Path) -> None:
    size = 8192
    path = geo_fixtures.make_cog(tmp_path / "big-cog.tif", size)
    with rasterio.open(landsat) as src:
        source, src_bounds = np.moveaxis(src.read(), 0, -1), tuple(src.bounds)
    src_h, src_w = source.shape[:2]
    with open_scene(str(path)) as scene, rasterio.open(path) as ds:
        assert scene.info.format == "COG" and scene.info.shape == (size, size) and scene.info.bands == 3
        assert scene.info.georef.crs == "EPSG:32618"
        assert scene.info.georef.bounds == pytest.approx(src_bounds)
        assert scene.info.georef.transform == tuple(ds.transform)[:6]
        assert scene.info.georef.transform[0] == pytest.approx((src_bounds[2] - src_bounds[0]) / size)
        for window in plan_windows(scene.info.shape, 1000, 100):
            data = scene.read(window)
            (y0, x0), (h, w) = window.start, window.size
            expected = np.moveaxis(ds.read(window=rasterio.windows.Window(x0, y0, w, h)), 0, -1)
            assert np.array_equal(data, expected), window
            rows = (np.arange(y0, y0 + h) * src_h) // size  # make_cog's nearest upsampling, independently
            cols = (np.arange(x0, x0 + w) * src_w) // size
            assert np.array_equal(data, source[rows][:, cols]), window
            gdal_mask = ds.dataset_mask(window=rasterio.windows.Window(x0, y0, w, h)) > 0
            assert np.array_equal(scene.valid_mask(window, data), gdal_mask), window


def test_a_broken_link_or_a_fifo_is_one_line_naming_the_entry(tmp_path: Path) -> None:
    """Tiled inference, windowed training and stats open scenes here: the link is named, a FIFO never blocks."""
    import os

    from raysegment.io.decoders import DecodeError
    from raysegment.io.scenes.base import open_scene

    (tmp_path / "gone.tif").symlink_to(tmp_path / "missing.tif")
    with pytest.raises(DecodeError, match=r"broken symbolic link .*gone\.tif -> .*missing\.tif"):
        open_scene(str(tmp_path / "gone.tif"))
    os.mkfifo(tmp_path / "pipe.tif")
    with pytest.raises(DecodeError, match=r"pipe\.tif"):
        open_scene(str(tmp_path / "pipe.tif"))
