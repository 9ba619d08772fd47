"""COG label rasters and GeoParquet polygons written block by block, with real rasterio/shapely/geopandas."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED

rasterio = pytest.importorskip("rasterio")
geopandas = pytest.importorskip("geopandas")
pytest.importorskip("shapely")

from raysegment.io.scenes.base import Georef  # noqa: E402
from raysegment.output.geo import MaskRasterWriter, PolygonWriter  # noqa: E402

LANDSAT = [SHARED / "rasterio_landsat7_rgb" / "RGB.byte.tif", Path(__file__).parent / "data" / "landsat" / "RGB.byte.tif"]


@pytest.fixture(scope="module")
def landsat() -> tuple[Georef, np.ndarray]:
    """The real Landsat scene's georef and its valid-data mask (nodata 0 around a rotated footprint)."""
    path = next((p for p in LANDSAT if p.is_file()), None)
    if path is None:
        pytest.skip(f"shared data not present: {LANDSAT[0]} (../shared/data is checked out beside the repo in CI)")
    with rasterio.open(path) as ds:
        georef = Georef(ds.crs.to_string(), tuple(ds.transform)[:6], tuple(ds.bounds), ds.nodata)
        valid = (ds.read() != 0).any(axis=0)
    return georef, valid


def label_map(shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    """3x3 blocks of class ids 0, 1, 4, 9: sparse ids, so any blend of two (an averaging overview) is no id."""
    rng = np.random.default_rng(seed)
    coarse = rng.choice(np.array([0, 1, 4, 9], np.uint8), (shape[0] // 3 + 1, shape[1] // 3 + 1))
    return np.kron(coarse, np.ones((3, 3), np.uint8))[: shape[0], : shape[1]].copy()


def strips(width: int, step: int, seed: int = 0) -> list[tuple[int, int]]:
    """Column bands [x0, x1) in shuffled order."""
    bands = [(x, min(x + step, width)) for x in range(0, width, step)]
    order = np.random.default_rng(seed).permutation(len(bands))
    return [bands[i] for i in order]


# -- COG ---------------------------------------------------------------------------------
def test_cog_from_shuffled_strips_keeps_pixels_and_georef(tmp_path: Path, landsat: tuple[Georef, np.ndarray]) -> None:
    georef, valid = landsat
    shape = valid.shape
    labels = label_map(shape)
    uri = str(tmp_path / "out" / "scene.tif")
    writer = MaskRasterWriter(uri, shape, georef)
    # Strips not aligned to the 512 tiles, in random order; nodata where the source has none.
    for x0, x1 in strips(shape[1], 200):
        writer.write(0, x0, labels[:, x0:x1], valid[:, x0:x1])
    assert not Path(uri).exists(), "nothing may appear before close()"
    writer.close()
    assert sorted(os.listdir(tmp_path / "out")) == ["scene.tif"], "temp files left beside the output"

    with rasterio.open(uri) as ds:
        assert ds.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert ds.overviews(1), "a COG of this size must carry overviews"
        assert ds.crs == rasterio.crs.CRS.from_user_input(georef.crs)
        assert tuple(ds.transform)[:6] == georef.transform  # exactly, not approximately
        assert (ds.dtypes[0], ds.nodata, ds.shape) == ("uint8", 255, shape)
        assert ds.block_shapes[0] == (512, 512)
        got = ds.read(1)
        overview = ds.read(1, out_shape=(shape[0] // 2, shape[1] // 2))
    expected = np.where(valid, labels, 255)
    np.testing.assert_array_equal(got, expected)
    assert (~valid).any() and (got[~valid] == 255).all()
    # Nearest-neighbour overviews hold class ids only, never blends (1 and 4 -> 2 or 3).
    assert set(np.unique(overview)) <= set(np.unique(expected))


def test_cog_pixels_never_written_stay_nodata(tmp_path: Path) -> None:
    shape = (100, 300)
    labels = label_map(shape, seed=1)
    uri = str(tmp_path / "partial.tif")
    writer = MaskRasterWriter(uri, shape, None, block=64)
    writer.write(0, 200, labels[:, 200:])
    writer.write(0, 0, labels[:, :50])
    writer.close()
    with rasterio.open(uri) as ds:
        got = ds.read(1)
        assert ds.crs is None and ds.transform == rasterio.Affine.identity()
        assert ds.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG" and ds.block_shapes[0] == (64, 64)
    np.testing.assert_array_equal(got[:, :50], labels[:, :50])
    np.testing.assert_array_equal(got[:, 200:], labels[:, 200:])
    assert (got[:, 50:200] == 255).all()


def test_cog_abort_leaves_nothing(tmp_path: Path) -> None:
    uri = str(tmp_path / "out" / "failed.tif")
    writer = MaskRasterWriter(uri, (64, 64), None)
    scratch = writer._dir
    writer.write(0, 0, np.ones((64, 32), np.uint8))
    assert os.path.isdir(scratch)
    writer.abort()
    assert not Path(uri).exists() and not os.path.exists(scratch)
    assert not (tmp_path / "out").exists() or not os.listdir(tmp_path / "out")
    with pytest.raises(RuntimeError, match="aborted"):
        writer.close()


def test_cog_rejects_bad_blocks(tmp_path: Path) -> None:
    writer = MaskRasterWriter(str(tmp_path / "x.tif"), (32, 32), None)
    with pytest.raises(ValueError, match="0..255"):
        writer.write(0, 0, np.full((32, 8), 255, np.int32))
    with pytest.raises(ValueError, match="0..255"):
        writer.write(0, 0, np.full((32, 8), 300, np.int32))
    with pytest.raises(ValueError, match="integer"):
        writer.write(0, 0, np.zeros((32, 8), np.float32))
    with pytest.raises(ValueError, match="outside"):
        writer.write(0, 30, np.zeros((32, 8), np.uint8))
    # 255 where not covered is fine: it becomes nodata anyway.
    covered = np.ones((32, 8), bool)
    covered[0, 0] = False
    block = np.zeros((32, 8), np.int64)
    block[0, 0] = 255
    writer.write(0, 0, block, covered)
    with pytest.raises(ValueError, match="overlaps"):
        writer.write(0, 4, np.zeros((32, 8), np.uint8))
    writer.abort()


def test_cog_upload_to_s3(s3_bucket: str, landsat: tuple[Georef, np.ndarray]) -> None:
    import s3fs

    georef, valid = landsat
    shape = valid.shape
    labels = label_map(shape, seed=2)
    uri = f"s3://{s3_bucket}/masks/scene.tif"
    writer = MaskRasterWriter(uri, shape, georef, storage_options={})
    for x0, x1 in strips(shape[1], 256, seed=3):
        writer.write(0, x0, labels[:, x0:x1])
    writer.close()
    fs = s3fs.S3FileSystem()
    assert fs.ls(f"{s3_bucket}/masks") == [f"{s3_bucket}/masks/scene.tif"], "temp object left behind"
    with rasterio.MemoryFile(fs.cat_file(f"{s3_bucket}/masks/scene.tif")) as mem, mem.open() as ds:
        assert ds.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert ds.crs == rasterio.crs.CRS.from_user_input(georef.crs)
        assert tuple(ds.transform)[:6] == georef.transform
        np.testing.assert_array_equal(ds.read(1), labels)


def test_upload_error_hides_credentials(s3_bucket: str) -> None:
    uri = f"s3://AKIAUSER:topsecret@{s3_bucket}/m.tif?X-Amz-Signature=sig123"
    writer = MaskRasterWriter(uri, (16, 16), None)
    writer.write(0, 0, np.zeros((16, 16), np.uint8))
    with pytest.raises(ValueError) as info:  # a URL with credentials is refused before the upload (uri.filesystem)
        writer.close()
    message = str(info.value)
    assert "credentials in a URL are refused" in message and "\n" not in message
    assert "topsecret" not in message and "AKIAUSER" not in message and "sig123" not in message


# -- polygons ----------------------------------------------------------------------------
def shapes_scene() -> np.ndarray:
    """Two squares of label 1, an L of label 2 and a ring of label 3 (with a hole), both across column 32."""
    labels = np.zeros((48, 80), np.uint8)
    labels[2:8, 2:8] = 1
    labels[20:26, 40:46] = 1
    labels[10:40, 26:30] = 2  # the L's upright, left of the seam at 32
    labels[36:40, 26:60] = 2  # its foot, across the seam at 32
    labels[4:16, 58:72] = 3
    labels[8:12, 62:68] = 0  # the hole; the ring crosses the seam at column 64
    return labels


def add_in_strips(writer: PolygonWriter, labels: np.ndarray, covered: np.ndarray | None = None) -> None:
    for x0, x1 in strips(labels.shape[1], 32, seed=4):
        writer.add(0, x0, labels[:, x0:x1], None if covered is None else covered[:, x0:x1])


def rasterize(frame: geopandas.GeoDataFrame, shape: tuple[int, int], transform: rasterio.Affine) -> np.ndarray:
    from rasterio.features import rasterize as burn

    pairs = list(zip(frame.geometry, frame["label"].astype(int)))
    return burn(pairs, out_shape=shape, transform=transform, fill=0, dtype="uint8") if pairs else np.zeros(shape, np.uint8)


def test_polygons_dissolve_across_strip_seams(tmp_path: Path, landsat: tuple[Georef, np.ndarray]) -> None:
    import pyarrow.parquet as pq

    georef, _ = landsat
    labels = shapes_scene()
    uri = str(tmp_path / "polys" / "scene.parquet")
    writer = PolygonWriter(uri, georef, ["background", "building", "road", "field"],
                           source_uri="s3://user:pw@bucket/scene.tif", skip_labels=[0])
    add_in_strips(writer, labels)
    assert not Path(uri).exists()
    count = writer.close()
    assert sorted(os.listdir(tmp_path / "polys")) == ["scene.parquet"]

    frame = geopandas.read_parquet(uri)
    assert count == len(frame) == 4
    assert frame.crs == rasterio.crs.CRS.from_user_input(georef.crs)
    assert list(frame.columns) == ["uri", "label", "label_name", "area", "geometry"]
    assert (frame["uri"] == "s3://bucket/scene.tif").all()
    by_label = frame.groupby("label").size().to_dict()
    assert by_label == {1: 2, 2: 1, 3: 1}  # the L and the ring are one polygon each despite the seams
    a, b, _, d, e, _ = georef.transform
    pixel_area = abs(a * e - b * d)
    for label in (1, 2, 3):
        rows = frame[frame["label"] == label]
        assert rows["area"].sum() == pytest.approx((labels == label).sum() * pixel_area, rel=1e-9)
        assert set(rows["label_name"]) == {["background", "building", "road", "field"][label]}
    ring = frame[frame["label"] == 3].geometry.iloc[0]
    assert ring.geom_type == "Polygon" and len(ring.interiors) == 1
    assert (frame.geometry.geom_type == "Polygon").all() and frame.geometry.is_valid.all()
    np.testing.assert_array_equal(rasterize(frame, labels.shape, rasterio.Affine(*georef.transform)), labels)

    schema = pq.read_schema(uri)
    assert str(schema.field("label").type) == "int32" and str(schema.field("area").type) == "double"
    geo = json.loads(schema.metadata[b"geo"])
    assert geo["primary_column"] == "geometry"
    assert geo["columns"]["geometry"]["encoding"] == "WKB" and "crs" in geo["columns"]["geometry"]


def test_polygons_skip_labels_and_coverage(tmp_path: Path) -> None:
    labels = shapes_scene()
    covered = np.ones(labels.shape, bool)
    covered[:, 70:] = False  # the ring's right side was never inferred
    uri = str(tmp_path / "p.parquet")
    writer = PolygonWriter(uri, None, ["bg", "building"], skip_labels=[1])
    add_in_strips(writer, labels, covered)
    writer.close()
    frame = geopandas.read_parquet(uri)
    assert frame.crs is None
    assert set(frame["label"]) == {0, 2, 3}  # background kept, 1 skipped
    assert set(frame.loc[frame["label"] == 3, "label_name"]) == {"3"}  # beyond the names: the id
    # Pixel space without a georef: areas are pixel counts.
    expected = np.where(covered & (labels != 1), labels, 255)
    for label in (0, 2, 3):
        assert frame.loc[frame["label"] == label, "area"].sum() == (expected == label).sum()
    assert (frame["label"] == 0).sum() == 2  # the open background and the ring's hole
    burned = rasterize(frame.assign(label=frame["label"] + 1), labels.shape, rasterio.Affine.identity())
    np.testing.assert_array_equal(burned, np.where(expected == 255, 0, expected + 1))


def test_polygons_empty_scene_is_valid_geoparquet(tmp_path: Path, landsat: tuple[Georef, np.ndarray]) -> None:
    import pyarrow.parquet as pq

    georef, _ = landsat
    uri = str(tmp_path / "empty.parquet")
    writer = PolygonWriter(uri, georef, ["bg"], skip_labels=[0])
    writer.add(0, 0, np.zeros((16, 16), np.uint8))
    writer.add(0, 16, np.ones((16, 16), np.uint8), np.zeros((16, 16), bool))  # nothing covered
    assert writer.close() == 0
    frame = geopandas.read_parquet(uri)
    assert len(frame) == 0 and list(frame.columns) == ["uri", "label", "label_name", "area", "geometry"]
    assert frame.crs == rasterio.crs.CRS.from_user_input(georef.crs)
    assert json.loads(pq.read_schema(uri).metadata[b"geo"])["primary_column"] == "geometry"


def test_polygons_abort_and_s3(tmp_path: Path, s3_bucket: str) -> None:
    import s3fs

    labels = shapes_scene()
    aborted = PolygonWriter(str(tmp_path / "a.parquet"), None, [])
    add_in_strips(aborted, labels)
    aborted.abort()
    assert not (tmp_path / "a.parquet").exists()
    with pytest.raises(RuntimeError, match="aborted"):
        aborted.close()

    uri = f"s3://{s3_bucket}/polys/scene.parquet"
    writer = PolygonWriter(uri, None, [], skip_labels=[0])
    add_in_strips(writer, labels)
    assert writer.close() == 4
    fs = s3fs.S3FileSystem()
    assert fs.ls(f"{s3_bucket}/polys") == [f"{s3_bucket}/polys/scene.parquet"]
    with fs.open(f"{s3_bucket}/polys/scene.parquet", "rb") as fh:
        assert sorted(geopandas.read_parquet(fh)["label"]) == [1, 1, 2, 3]


# -- memory ------------------------------------------------------------------------------
MEMORY_SCRIPT = textwrap.dedent("""
    import json, resource, sys
    import numpy as np, rasterio
    from raysegment.output.geo import MaskRasterWriter
    from raysegment.io.scenes.base import Georef

    size, step, uri = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    georef = Georef("EPSG:32618", (10.0, 0.0, 500000.0, 0.0, -10.0, 4000000.0), (0, 0, 0, 0), None)
    cols = np.arange(step)
    def strip(x0):  # a class map no strip repeats: diagonal bands of 0..4
        rows = np.arange(size)[:, None]
        return (((rows + cols[None, :] + x0) // 97) % 5).astype(np.uint8)
    writer = MaskRasterWriter(uri, (size, size), georef)
    strip(0)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for x0 in range(0, size, step):
        writer.write(0, x0, strip(x0))
    writer.close()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"growth_mb": (peak - base) / 1024}))
""")


@pytest.mark.slow
def test_cog_memory_stays_bounded(tmp_path: Path) -> None:
    size, step = 16384, 512
    uri = str(tmp_path / "big.tif")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(size), str(step), uri],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    growth = json.loads(done.stdout.strip().splitlines()[-1])["growth_mb"]
    # The label raster alone is 256 MiB: holding it (or GDAL caching it) would pass this bound.
    assert growth < 200, f"peak RSS grew {growth:.0f} MB writing a {size}x{size} raster"
    with rasterio.open(uri) as ds:
        assert ds.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG" and ds.shape == (size, size)
        assert len(ds.overviews(1)) >= 4
        window = rasterio.windows.Window(9000, 12000, 700, 300)  # spans strips and tiles
        rows = np.arange(12000, 12300)[:, None]
        cols = np.arange(9000, 9700)[None, :]
        np.testing.assert_array_equal(ds.read(1, window=window), ((rows + cols) // 97) % 5)


@pytest.mark.parametrize("missing", ["rasterio", "shapely", "geopandas"])
def test_missing_library_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, missing: str) -> None:
    monkeypatch.setitem(sys.modules, missing, None)  # makes `import <missing>` fail as if not installed
    with pytest.raises(RuntimeError, match=r"pip install 'raysegment\[geo\]'") as info:
        PolygonWriter(str(tmp_path / "p.parquet"), None, [])
    assert missing in str(info.value) and "\n" not in str(info.value)
    if missing == "rasterio":
        with pytest.raises(RuntimeError, match=r"raysegment\[geo\]"):
            MaskRasterWriter(str(tmp_path / "m.tif"), (8, 8), None)


def test_side_files_of_a_run_that_lost_the_output_are_never_put_in_place(tmp_path: Path) -> None:
    """A stalled run whose lease another run took over: its COG and GeoParquet are refused at
    the upload (the scene becomes an error row, see scene_merger), and the new holder's go in."""
    import fsspec

    from raysegment.output.lease import LeaseLost, acquire_lease

    local, folder = fsspec.filesystem("file"), str(tmp_path / "_lease")
    old = acquire_lease(local, folder, run_id="old", shown="output X", ttl=60, clock=lambda: 1000.0)
    labels = label_map((48, 48))
    stale = [MaskRasterWriter(str(tmp_path / "_masks" / "s.tif"), (48, 48), None, fence=old.fence()),
             PolygonWriter(str(tmp_path / "_polygons" / "s.parquet"), None, ["a", "b"], fence=old.fence())]
    stale[0].write(0, 0, labels)
    stale[1].add(0, 0, labels)
    new = acquire_lease(local, folder, run_id="new", shown="output X", ttl=60, clock=lambda: 2000.0)
    for writer in stale:
        with pytest.raises(LeaseLost, match="run old lost output X to run new"):
            writer.close()
    assert not (tmp_path / "_masks" / "s.tif").exists() and not (tmp_path / "_polygons" / "s.parquet").exists()
    fresh = MaskRasterWriter(str(tmp_path / "_masks" / "s.tif"), (48, 48), None, fence=new.fence())
    fresh.write(0, 0, labels)
    fresh.close()
    with rasterio.open(tmp_path / "_masks" / "s.tif") as ds:
        assert np.array_equal(ds.read(1), labels)
