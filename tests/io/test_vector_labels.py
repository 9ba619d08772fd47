"""Vector labels on a scene grid (raysegment.io.vector_labels): reading, reprojection, windows, burn values, errors.

The real case is SpaceNet's sample tile with its 43 building footprints (used
by path; not CC0, never copied); the exact case is a synthetic square in a
small GeoTIFF written with rasterio, whose labels come in another CRS.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import geo_fixtures
import numpy as np
import pytest
from conftest import SHARED

from raysegment.errors import InputSpecError
from raysegment.io.vector_labels import (
    geometry_pixel_boxes,
    holds_vector_labels,
    is_vector_labels,
    rasterize_window,
    read_vector_labels,
)

rasterio = pytest.importorskip("rasterio", reason="vector labels need raysegment[geo]")
geopandas = pytest.importorskip("geopandas", reason="vector labels need raysegment[geo]")
shapely_geometry = pytest.importorskip("shapely.geometry")

SPACENET = SHARED / "spacenet_sample_tile"
SCENE_CRS = "EPSG:32616"


@pytest.fixture(scope="module")
def spacenet() -> tuple[Path, Path]:
    tif, labels = SPACENET / "sample_geotiff.tif", SPACENET / "geotiff_labels.geojson"
    if not (tif.is_file() and labels.is_file()):
        pytest.skip(f"test data missing: {SPACENET} (the SpaceNet sample tile)")
    return tif, labels


@pytest.fixture(scope="module")
def scene_grid(spacenet: tuple[Path, Path]) -> tuple[object, tuple[int, int]]:
    with rasterio.open(spacenet[0]) as ds:
        assert ds.crs.to_string() == SCENE_CRS
        return ds.transform, ds.shape


def test_vector_labels_in_another_crs_rasterise_onto_the_right_pixels(spacenet, scene_grid, tmp_path):
    transform, shape = scene_grid
    native = read_vector_labels(str(spacenet[1]), SCENE_CRS)
    assert len(native) == 43
    in_4326 = native.to_crs("EPSG:4326")
    in_4326.to_file(tmp_path / "labels.geojson", driver="GeoJSON")
    in_4326.to_parquet(tmp_path / "labels.parquet")
    window = (100, 150, 600, 700)  # row0, col0, height, width
    reference = rasterize_window(native, transform, window)
    fraction = reference.mean()
    assert 0.02 <= fraction <= 0.07, fraction
    for name in ("labels.geojson", "labels.parquet"):
        back = read_vector_labels(str(tmp_path / name), SCENE_CRS)
        assert back.crs.to_string() == SCENE_CRS and len(back) == 43
        burnt = rasterize_window(back, transform, window)
        assert burnt.shape == (600, 700) and burnt.dtype == np.uint8
        assert (burnt == reference).mean() >= 0.995, name
        assert 0.02 <= burnt.mean() <= 0.07


def test_a_window_is_the_slice_of_the_whole_scene(spacenet, scene_grid):
    transform, shape = scene_grid
    labels = read_vector_labels(str(spacenet[1]), SCENE_CRS)
    whole = rasterize_window(labels, transform, (0, 0, *shape))
    assert whole.shape == shape and 0.02 <= whole.mean() <= 0.07
    for row0, col0, h, w in [(0, 0, 256, 256), (300, 410, 123, 77), (850, 800, 50, 100), (640, 0, 260, 900)]:
        np.testing.assert_array_equal(rasterize_window(labels, transform, (row0, col0, h, w)),
                                      whole[row0:row0 + h, col0:col0 + w])
    # A window off the scene, where no polygon lies, is all fill.
    assert not rasterize_window(labels, transform, (5000, 5000, 20, 30), fill=0).any()


def test_pixel_boxes_contain_every_burnt_pixel(spacenet, scene_grid):
    transform, shape = scene_grid
    labels = read_vector_labels(str(spacenet[1]), SCENE_CRS)
    boxes = geometry_pixel_boxes(labels, transform, shape)
    assert len(boxes) == 43
    covered = np.zeros(shape, bool)
    for r0, c0, r1, c1 in boxes:
        assert 0 <= r0 < r1 <= shape[0] and 0 <= c0 < c1 <= shape[1]
        covered[r0:r1, c0:c1] = True
    whole = rasterize_window(labels, transform, (0, 0, *shape))
    assert covered[whole > 0].all()


# -- an exact constructed case ---------------------------------------------------------------
#: A 3857 grid with 10 m pixels, 24 rows x 20 columns.
GRID_3857 = (10.0, 0.0, 1_000_000.0, 0.0, -10.0, 5_000_000.0)
ROWS, COLS = slice(5, 13), slice(3, 10)  # the square's pixels


def square_in_3857() -> object:
    a, _, c, _, e, f = GRID_3857
    return shapely_geometry.box(c + COLS.start * a, f + ROWS.stop * e, c + COLS.stop * a, f + ROWS.start * e)


def test_labels_in_4326_burn_exactly_their_pixels_on_a_3857_scene(tmp_path):
    scene = geo_fixtures.make_geotiff(tmp_path / "scene.tif", np.zeros((24, 20), np.uint8), crs="EPSG:3857",
                                      transform=GRID_3857)
    with rasterio.open(scene) as ds:
        crs, transform, shape = ds.crs.to_string(), ds.transform, ds.shape
    labels = geopandas.GeoDataFrame({"cls": [3]}, geometry=[square_in_3857()], crs="EPSG:3857").to_crs("EPSG:4326")
    labels.to_file(tmp_path / "square.geojson", driver="GeoJSON")
    back = read_vector_labels(str(tmp_path / "square.geojson"), crs)
    burnt = rasterize_window(back, transform, (0, 0, *shape))
    expected = np.zeros(shape, np.uint8)
    expected[ROWS, COLS] = 1
    np.testing.assert_array_equal(burnt, expected)
    assert geometry_pixel_boxes(back, transform, shape) == [(ROWS.start, COLS.start, ROWS.stop, COLS.stop)]
    # The burn value from a field, in a window cutting the square.
    window = rasterize_window(back, transform, (8, 0, 10, 6), label_field="cls")
    np.testing.assert_array_equal(window, np.where(expected == 1, 3, 0)[8:18, 0:6])


@pytest.mark.filterwarnings("ignore:'crs' was not provided")
def test_a_file_without_crs_is_taken_to_be_in_the_scene_crs(tmp_path):
    """A shapefile without .prj and a GeoParquet without CRS (GeoJSON never lacks one: RFC 7946 says WGS 84)."""
    crs_less = geopandas.GeoDataFrame(geometry=[square_in_3857()])
    crs_less.to_file(tmp_path / "nocrs.shp")
    crs_less.to_parquet(tmp_path / "nocrs.parquet")
    assert not (tmp_path / "nocrs.prj").exists()
    for name in ("nocrs.shp", "nocrs.parquet"):
        labels = read_vector_labels(str(tmp_path / name), "EPSG:3857")
        assert labels.crs.to_string() == "EPSG:3857"
        assert int(rasterize_window(labels, GRID_3857, (0, 0, 24, 20)).sum()) == 8 * 7, name


def test_label_field_values_are_burnt_and_wide_values_widen_the_dtype(tmp_path):
    geoms = [shapely_geometry.box(0, 0, 4, 4), shapely_geometry.box(2, 2, 8, 8), shapely_geometry.Point(9, 9).buffer(0)]
    labels = geopandas.GeoDataFrame({"cls": [2, 7, 1], "big": [1, 300, -2], "frac": [1.5, 2.0, 1.0]},
                                    geometry=geoms, crs="EPSG:3857")
    path = tmp_path / "classes.parquet"
    labels.to_parquet(path)
    back = read_vector_labels(str(path), "EPSG:3857", label_field="cls")
    assert len(back) == 2  # the empty geometry is dropped
    grid = (1.0, 0.0, 0.0, 0.0, -1.0, 10.0)  # 10 x 10 pixels of 1 m, top at y = 10
    burnt = rasterize_window(back, grid, (0, 0, 10, 10), label_field="cls")
    assert burnt.dtype == np.uint8
    assert burnt[9, 0] == 2 and burnt[6, 3] == 7  # the later polygon wins where they overlap
    assert burnt[2, 5] == 7 and burnt[0, 0] == 0
    assert set(np.unique(burnt)) == {0, 2, 7}
    wide = rasterize_window(back, grid, (0, 0, 10, 10), label_field="big")
    assert wide.dtype == np.int32 and wide[9, 0] == 1 and wide[6, 3] == 300


def test_shapefile_geopackage_and_zip_read_alike(tmp_path):
    labels = geopandas.GeoDataFrame({"cls": [1]}, geometry=[square_in_3857()], crs="EPSG:3857")
    labels.to_file(tmp_path / "sq.shp")
    labels.to_file(tmp_path / "sq.gpkg", driver="GPKG")
    with zipfile.ZipFile(tmp_path / "sq.zip", "w") as z:
        for side in tmp_path.glob("sq.*"):
            if side.suffix in (".shp", ".shx", ".dbf", ".prj", ".cpg"):
                z.write(side, side.name)
    for name in ("sq.shp", "sq.gpkg", "sq.zip"):
        back = read_vector_labels(str(tmp_path / name), "EPSG:3857", label_field="cls")
        assert int(rasterize_window(back, GRID_3857, (0, 0, 24, 20)).sum()) == 8 * 7, name
    assert is_vector_labels("s3://b/x.GeoJSON") and is_vector_labels("x.gpkg") and not is_vector_labels("x.png")


def test_fsspec_urls_are_read_and_remote_shapefiles_refused(tmp_path):
    import fsspec

    labels = geopandas.GeoDataFrame(geometry=[square_in_3857()], crs="EPSG:3857")
    labels.to_file(tmp_path / "sq.geojson", driver="GeoJSON")
    labels.to_file(tmp_path / "sq.gpkg", driver="GPKG")
    mem = fsspec.filesystem("memory")
    for name in ("sq.geojson", "sq.gpkg"):
        mem.pipe(f"/vector-test/{name}", (tmp_path / name).read_bytes())
        assert len(read_vector_labels(f"memory://vector-test/{name}", "EPSG:3857")) == 1
    mem.pipe("/vector-test/sq.json", (tmp_path / "sq.geojson").read_bytes())
    assert holds_vector_labels("memory://vector-test/sq.json") and holds_vector_labels("memory://vector-test/sq.gpkg")
    mem.pipe("/vector-test/coco.json", b'{"images": [], "annotations": [], "categories": []}')
    assert not holds_vector_labels("memory://vector-test/coco.json")
    labels.to_parquet(tmp_path / "sq.parquet")
    pd = pytest.importorskip("pandas")
    pd.DataFrame({"image_uri": ["a.png"], "mask_uri": ["a_mask.png"]}).to_parquet(tmp_path / "manifest.parquet")
    assert holds_vector_labels(str(tmp_path / "sq.parquet")) and not holds_vector_labels(str(tmp_path / "manifest.parquet"))
    mem.pipe("/vector-test/sq.shp", b"not really")
    with pytest.raises(InputSpecError, match="local paths only"):
        read_vector_labels("memory://vector-test/sq.shp", "EPSG:3857")


def test_bad_inputs_fail_with_one_clear_line(tmp_path, spacenet):
    with pytest.raises(InputSpecError, match="vector labels not found") as missing:
        read_vector_labels(str(tmp_path / "nope.geojson"), SCENE_CRS)
    assert "\n" not in str(missing.value)
    with pytest.raises(InputSpecError, match=r"no column 'class'.*columns: access, ") as no_field:
        read_vector_labels(str(spacenet[1]), SCENE_CRS, label_field="class")
    assert "\n" not in str(no_field.value)
    with pytest.raises(InputSpecError, match=r"'building' is not integer-valued.*integer columns: osm_id"):
        read_vector_labels(str(spacenet[1]), SCENE_CRS, label_field="building")
    (tmp_path / "broken.geojson").write_text("{ this is not json")
    with pytest.raises(InputSpecError, match="cannot read vector labels"):
        read_vector_labels(str(tmp_path / "broken.geojson"), SCENE_CRS)
    with pytest.raises(InputSpecError, match="unknown extension"):
        read_vector_labels(str(tmp_path / "labels.csv"), SCENE_CRS)
