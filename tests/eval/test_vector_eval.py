"""``raysegment eval`` against vector labels and inside a region, on a real tiled output.

The output comes from a real tiled run (``run_inference`` on a small synthetic
GeoTIFF with a small U-Net made here), so its rows carry the CRS and transform
inference wrote; the ground truth is polygons in another CRS. Every number is
checked against numpy: the rows' label maps, the polygons burnt by rasterio on
the whole grid, and one confusion matrix.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from raysegment.cli import main
from raysegment.criteria.metrics import ConfusionAccumulator, confusion_matrix
from raysegment.eval.evaluation import evaluate
from raysegment.eval.scoring import VectorTruth, region_mask, score_against_vector
from raysegment.infer.pipeline import InferenceConfig, run_inference
from raysegment.masks.rle import row_label_map
from raysegment.output.root import read_output

rasterio = pytest.importorskip("rasterio", reason="vector ground truth needs raysegment[geo]")
geopandas = pytest.importorskip("geopandas", reason="vector ground truth needs raysegment[geo]")
shapely_geometry = pytest.importorskip("shapely.geometry")

pytestmark = pytest.mark.usefixtures("ray_local")

SCENE_CRS = "EPSG:32616"
GRID = (0.5, 0.0, 733601.0, 0.0, -0.5, 3725139.0)  # 0.5 m pixels, as SpaceNet's tile
HEIGHT, WIDTH = 150, 190
#: Bright rectangles (row0, col0, row1, col1) in the scene; polygons are drawn around most of them.
BRIGHT = [(10, 12, 40, 50), (60, 100, 95, 150), (110, 20, 140, 70), (20, 150, 60, 185)]


def _box_in_crs(row0: int, col0: int, row1: int, col1: int) -> object:
    a, _, c, _, e, f = GRID
    return shapely_geometry.box(c + col0 * a, f + row1 * e, c + col1 * a, f + row0 * e)


@pytest.fixture(scope="module")
def tiled_output(tmp_path_factory: pytest.TempPathFactory, unet_checkpoint: str, ray_local) -> tuple[Path, dict]:
    from affine import Affine

    folder = tmp_path_factory.mktemp("vector-scene")
    data = np.random.default_rng(5).integers(20, 90, (HEIGHT, WIDTH), dtype=np.uint8)
    for r0, c0, r1, c1 in BRIGHT:
        data[r0:r1, c0:c1] = 230
    with rasterio.open(folder / "scene.tif", "w", driver="GTiff", height=HEIGHT, width=WIDTH, count=1, dtype="uint8",
                       crs=SCENE_CRS, transform=Affine(*GRID)) as dst:
        dst.write(data[None])
    out = tmp_path_factory.mktemp("vector-out") / "out"
    summary = run_inference(InferenceConfig(input=str(folder), output=str(out), checkpoint=unet_checkpoint,
                                            tile=64, overlap=16, batch_size=4))
    assert summary.ok == 1 and summary.failed == 0
    (row,) = read_output(str(out)).to_pylist()
    assert row["crs"] == SCENE_CRS and tuple(row["transform"]) == GRID
    return out, row


@pytest.fixture(scope="module")
def polygons_4326(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three of the four bright rectangles, shifted a few pixels, plus one off the scene, in lon/lat."""
    boxes = [(12, 10, 42, 47), (58, 103, 95, 151), (110, 20, 138, 72), (400, 400, 420, 430)]
    labels = geopandas.GeoDataFrame({"cls": [1, 1, 1, 1]}, geometry=[_box_in_crs(*b) for b in boxes], crs=SCENE_CRS)
    path = tmp_path_factory.mktemp("vector-gt") / "buildings.geojson"
    labels.to_crs("EPSG:4326").to_file(path, driver="GeoJSON")
    return path


def _truth_on_grid(path: Path) -> np.ndarray:
    """The polygons burnt on the whole grid by rasterio directly (no windows, no spatial index)."""
    from affine import Affine
    from rasterio.features import rasterize

    labels = geopandas.read_file(path).to_crs(SCENE_CRS)
    return rasterize(((g, 1) for g in labels.geometry), out_shape=(HEIGHT, WIDTH), transform=Affine(*GRID),
                     fill=0, dtype="uint8")


def _iou(cm: np.ndarray) -> list[float]:
    inter = np.diag(cm).astype(float)
    union = cm.sum(0) + cm.sum(1) - np.diag(cm)
    return [i / u if u else float("nan") for i, u in zip(inter, union)]


def test_eval_against_vector_labels_in_another_crs_matches_numpy(tiled_output, polygons_4326):
    out, row = tiled_output
    pred = row_label_map(row, fill=0)
    truth = _truth_on_grid(polygons_4326)
    assert 0.05 < truth.mean() < 0.4
    expected = confusion_matrix(pred, truth, 2)
    result = evaluate(str(out), str(polygons_4326))
    assert result.matched == 1 and result.failed == 0 and result.missing == 0
    np.testing.assert_array_equal(result.metrics.confusion, expected)
    np.testing.assert_allclose(result.metrics.iou, _iou(expected))
    assert result.metrics.class_names == ("cell", "membrane")


def test_a_region_of_pixels_scores_only_its_pixels(tiled_output, polygons_4326):
    """The scoring seam with explicit boxes (what a parsed region gives), burnt in strips of 7 rows."""
    _, row = tiled_output
    pred = row_label_map(row, fill=0)
    truth = _truth_on_grid(polygons_4326)
    boxes = [((30, 120), (90, 190)), ((100, 130), (0, 40)), ((50, 70), (100, 170))]  # overlapping on purpose
    inside = np.zeros((HEIGHT, WIDTH), bool)
    inside[30:120, 90:190] = inside[100:130, 0:40] = inside[50:70, 100:170] = True
    np.testing.assert_array_equal(region_mask((HEIGHT, WIDTH), boxes), inside)
    vector = VectorTruth(str(polygons_4326))
    for strip in (7, 10**9):
        acc = ConfusionAccumulator(2)
        assert score_against_vector(acc, pred, row, vector, boxes, {}, 255, strip_pixels=strip * WIDTH) == 0
        np.testing.assert_array_equal(acc.matrix, confusion_matrix(pred[inside], truth[inside], 2))
        whole = ConfusionAccumulator(2)
        score_against_vector(whole, pred, row, vector, None, {}, 255, strip_pixels=strip * WIDTH)
        np.testing.assert_array_equal(whole.matrix, confusion_matrix(pred, truth, 2))


def test_label_field_values_and_mask_values_reach_the_metric(tiled_output, tmp_path):
    out, row = tiled_output
    labels = geopandas.GeoDataFrame({"kind": [7, 9]}, geometry=[_box_in_crs(*BRIGHT[0]), _box_in_crs(*BRIGHT[1])],
                                    crs=SCENE_CRS)
    path = tmp_path / "kinds.parquet"
    labels.to_parquet(path)
    pred = row_label_map(row, fill=0)
    truth = np.zeros((HEIGHT, WIDTH), np.int64)
    for r0, c0, r1, c1 in BRIGHT[:2]:
        truth[r0:r1, c0:c1] = 1
    result = evaluate(str(out), str(path), label_field="kind", mask_values="7:1,9:1")
    np.testing.assert_array_equal(result.metrics.confusion, confusion_matrix(pred, truth, 2))
    with pytest.raises(ValueError, match=r"could be compared.*label 9 outside \[0, 2\)"):
        evaluate(str(out), str(path), label_field="kind")  # 7 and 9 are not classes of a 2-class run


def test_bad_vector_ground_truth_is_one_line_before_ray(tiled_output, polygons_4326, tmp_path):
    out, _ = tiled_output
    runner = CliRunner()
    missing = runner.invoke(main, ["eval", str(out), str(tmp_path / "nope.geojson")])
    assert missing.exit_code == 1 and "vector labels not found" in missing.output
    no_field = runner.invoke(main, ["eval", str(out), str(polygons_4326), "--label-field", "class"])
    assert no_field.exit_code == 1 and "no column 'class'" in no_field.output and "cls" in no_field.output
    assert len(no_field.output.strip().splitlines()) == 1


def test_cli_eval_with_vector_labels_and_a_region(tiled_output, polygons_4326, tmp_path):
    from raysegment.io.regions import parse_region

    out, row = tiled_output
    pred = row_label_map(row, fill=0)
    truth = _truth_on_grid(polygons_4326)
    report = tmp_path / "eval.json"
    for spec in ("pixels:30,90,120,190", "east:0.3"):
        boxes = parse_region(spec).pixel_boxes((HEIGHT, WIDTH), transform=None, crs=SCENE_CRS)
        inside = region_mask((HEIGHT, WIDTH), boxes)
        if spec.startswith("pixels"):
            expected_inside = np.zeros_like(inside)
            expected_inside[30:120, 90:190] = True
            np.testing.assert_array_equal(inside, expected_inside)
        else:
            assert inside[:, -1].all() and not inside[:, 0].any()
            assert abs(inside.mean() - 0.3) < 0.01
        result = CliRunner().invoke(main, ["eval", str(out), str(polygons_4326), "--region", spec, "--out", str(report)])
        assert result.exit_code == 0, result.output
        data = json.loads(report.read_text())
        expected = confusion_matrix(pred[inside], truth[inside], 2)
        assert data["region"] == spec and data["matched"] == 1
        assert data["metrics"]["num_pixels"] == int(inside.sum())
        assert [v["pixels"] for v in data["metrics"]["per_class"].values()] == expected.sum(1).tolist()
        iou = [v["iou"] for v in data["metrics"]["per_class"].values()]
        np.testing.assert_allclose([np.nan if v is None else v for v in iou], _iou(expected))
