"""Scenes for windowed training: pairing, the streamed survey, and window reads, on real files (no Ray)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED

rasterio = pytest.importorskip("rasterio", reason="scene training tests need raysegment[geo]")
pytest.importorskip("geopandas", reason="vector labels need raysegment[geo]")

from geo_fixtures import make_geotiff  # noqa: E402

from raysegment.io.regions import parse_region  # noqa: E402
from raysegment.io.vector_labels import rasterize_window, read_vector_labels  # noqa: E402
from raysegment.plugin.spec import resolve_model  # noqa: E402
from raysegment.train import scene_data  # noqa: E402
from raysegment.train.sampler import cell_size  # noqa: E402
from raysegment.train.scene_data import Scene, list_scenes, load_windows, survey_scene  # noqa: E402

TILE = SHARED / "spacenet_sample_tile"
IMAGE, LABELS = TILE / "sample_geotiff.tif", TILE / "geotiff_labels.geojson"


@pytest.fixture(scope="module")
def spec():
    return resolve_model("unet", {"base_channels": 4, "depth": 2, "class_names": "background,building"},
                         None, None, warn_random=False)


@pytest.fixture(scope="module")
def spacenet() -> Scene:
    if not IMAGE.is_file():
        pytest.skip(f"shared data not present: {TILE}")
    return Scene(str(IMAGE), str(LABELS), True)


def test_list_scenes_pairs_one_vector_file_with_every_scene_and_rasters_by_stem(tmp_path: Path) -> None:
    (tmp_path / "img").mkdir()
    (tmp_path / "lab").mkdir()
    for name in ("a", "b"):
        make_geotiff(tmp_path / "img" / f"{name}.tif", np.zeros((8, 8), np.uint8))
        make_geotiff(tmp_path / "lab" / f"{name}.tif", np.zeros((8, 8), np.uint8))
    (tmp_path / "labels.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": []}))
    scenes, unpaired = list_scenes(str(tmp_path / "img"), str(tmp_path / "labels.geojson"))
    assert [Path(s.image).name for s in scenes] == ["a.tif", "b.tif"] and all(s.vector for s in scenes) and not unpaired
    scenes, _ = list_scenes(str(tmp_path / "img"), str(tmp_path / "lab"))
    assert [(Path(s.image).name, Path(s.label).name, s.vector) for s in scenes] == [("a.tif", "a.tif", False),
                                                                                  ("b.tif", "b.tif", False)]
    one, _ = list_scenes(str(tmp_path / "img" / "a.tif"), str(tmp_path / "lab" / "b.tif"))  # one and one: paired
    assert [(Path(s.image).name, Path(s.label).name) for s in one] == [("a.tif", "b.tif")]


def test_survey_streams_strips_and_counts_only_outside_the_hold_out(spacenet, spec, monkeypatch) -> None:
    monkeypatch.setattr(scene_data, "STRIP_PIXELS", 900 * 64)  # 64-row strips: 15 of them, cells must merge
    region = parse_region("east:0.3")
    cell = cell_size((256, 256))
    out = survey_scene(spacenet, spec=spec, value_map={}, region=region, cell=cell)
    assert out["status"] == "ok", out["error"]
    assert out["shape"] == [900, 900] and out["exclude"] == [((0, 900), (630, 900))]
    # the truth: the whole burnt label, counted west of column 630
    whole = rasterize_window(read_vector_labels(str(LABELS), "EPSG:32616"), out["transform"], (0, 0, 900, 900))
    west = whole[:, :630]
    assert out["class_pixels"].tolist() == [int((west == 0).sum()), int((west == 1).sum())]
    assert 0.02 < out["class_pixels"][1] / out["class_pixels"].sum() < 0.07
    rows, cols = np.nonzero(west)
    assert {tuple(c) for c in out["positive"].tolist()} == {(r // cell[0], c // cell[1]) for r, c in zip(rows, cols)}
    assert (out["positive"][:, 1] * cell[1] < 630).all()


def test_a_bad_scene_is_a_report_row(tmp_path: Path, spec) -> None:
    make_geotiff(tmp_path / "s.tif", np.zeros((32, 32), np.uint8))
    make_geotiff(tmp_path / "l.tif", np.full((32, 32), 7, np.uint8))
    out = survey_scene(Scene(str(tmp_path / "s.tif"), str(tmp_path / "l.tif"), False), spec=spec, value_map={},
                       region=None, cell=(8, 8))
    assert out["status"] == "error" and "label value 7 is outside the classes 0..1" in out["error"]
    make_geotiff(tmp_path / "small.tif", np.zeros((16, 32), np.uint8))
    out = survey_scene(Scene(str(tmp_path / "s.tif"), str(tmp_path / "small.tif"), False), spec=spec, value_map={},
                       region=None, cell=(8, 8))
    assert out["status"] == "error" and "label raster is 32x16 but its scene is 32x32" in out["error"]
    out = survey_scene(Scene(str(tmp_path / "s.tif"), str(tmp_path / "missing.geojson"), True), spec=spec,
                       value_map={}, region=None, cell=(8, 8))
    assert out["status"] == "error" and "not found" in out["error"]


def test_windows_read_the_scene_by_range_with_the_labels_burnt_on_the_same_pixels(spacenet, spec) -> None:
    from raysegment.io.payload import unpack

    batch = {"index": np.array([0, 1]), "scene": np.array([0, 0]), "start": [[100, 200], [700, 640]],
             "size": [[64, 96], [200, 260]]}
    out = load_windows(batch, spec=spec, scenes=[spacenet], value_map={})
    labels = read_vector_labels(str(LABELS), "EPSG:32616")
    with rasterio.open(IMAGE) as src:
        for i, ((r, c), (h, w)) in enumerate(zip(batch["start"], batch["size"])):
            arrays = unpack(out["payload"][i])
            pixels = src.read(1, window=((r, r + h), (c, c + w)))
            expected = rasterize_window(labels, src.transform, (r, c, h, w))
            expected = np.where(pixels != src.nodata, expected, 255) if src.nodata is not None else expected
            assert arrays["image"].shape == (1, h, w) and np.array_equal(arrays["target"], expected)
            # the dtype normalisation of this spec: the raw pixels over the uint16 maximum
            assert np.allclose(arrays["image"][0], pixels / 65535.0, atol=1e-6)
