"""``raysegment train --window``: real Ray Train runs from a whole scene with vector labels, and from volumes.

One short run each (the CI budget): the SpaceNet tile with its GeoJSON footprints and the east
30 % held out, and MSD hippocampus volumes held out whole. What they prove end to end: the
validation grid scores every held-out pixel exactly once (``val_pixels``), the report lists the
scenes, and the checkpoint carries the normalisation that ``infer`` applies.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from conftest import SHARED

from raysegment.cli import main
from raysegment.plugin.checkpoint import load_checkpoint

pytestmark = [pytest.mark.usefixtures("ray_local"), pytest.mark.slow]
rasterio = pytest.importorskip("rasterio", reason="scene training needs raysegment[geo]")
pytest.importorskip("geopandas", reason="vector labels need raysegment[geo]")

TILE = SHARED / "spacenet_sample_tile"
HIPPO = SHARED / "msd_task04_hippocampus"


def _history(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_train_from_a_scene_and_geojson_with_the_east_held_out(tmp_path: Path) -> None:
    if not TILE.is_dir():
        pytest.skip(f"shared data not present: {TILE}")
    image = TILE / "sample_geotiff.tif"
    result = CliRunner().invoke(main, [
        "train", str(image), "--masks", str(TILE / "geotiff_labels.geojson"), "--window", "128",
        "--windows-per-epoch", "4", "--val-region", "east:0.3", "--positive-fraction", "0.5",
        "-m", "unet", "--param", "base_channels=4", "--param", "depth=2", "--param", "class_names=background,building",
        "--normalize", "percentile", "--epochs", "1", "--batch-size", "2", "--workers", "1",
        "--storage", str(tmp_path), "--name", "sn"])
    assert result.exit_code == 0, result.output
    run = tmp_path / "sn"
    report = pq.read_table(run / "data_report.parquet").to_pylist()
    assert [(r["status"], r["role"], r["height"], r["width"], r["val_pixels"]) for r in report] == [
        ("ok", "train", 900, 900, 900 * 270)]
    (epoch,) = _history(run)
    with rasterio.open(image) as src:
        east = src.read(1)[:, 630:]
    labelled = int((east != src.nodata).sum()) if src.nodata is not None else east.size
    assert epoch["val_pixels"] == labelled  # the grid scores every held-out pixel once, nothing else
    assert epoch["train_items"] == 4
    ckpt = load_checkpoint(str(run / "best.pt"))
    assert ckpt.normalization.mode == "percentile" and ckpt.class_names == ["background", "building"]


def test_bad_window_options_are_one_line(tmp_path: Path) -> None:
    if not TILE.is_dir():
        pytest.skip(f"shared data not present: {TILE}")
    base = ["train", str(TILE / "sample_geotiff.tif"), "--masks", str(TILE / "geotiff_labels.geojson"),
            "-m", "unet", "--storage", str(tmp_path)]
    for extra, message in [
        (["--window", "64"], "one scene and no hold-out: pass --val-region"),
        (["--window", "64", "--val-region", "middle:0.3"], "is not one of"),
        (["--val-region", "east:0.3"], "need --window"),
        (["--window", "64,64,64", "--val-region", "east:0.3"], "--window needs 2 sizes"),
    ]:
        result = CliRunner().invoke(main, base + extra)
        assert result.exit_code == 1, (extra, result.output)
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], (extra, result.output)


@pytest.fixture(scope="module")
def volumes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not HIPPO.is_dir():
        pytest.skip(f"shared data not present: {HIPPO}")
    root = tmp_path_factory.mktemp("hippo_windows")
    for sub in ("imagesTr", "labelsTr"):
        (root / sub).mkdir()
        for case in ("hippocampus_003", "hippocampus_004", "hippocampus_006"):
            shutil.copy(HIPPO / sub / f"{case}.nii.gz", root / sub / f"{case}.nii.gz")
    return root


def test_unet3d_trains_on_windows_of_volumes_and_validates_whole_held_out_volumes(volumes: Path,
                                                                                  tmp_path: Path) -> None:
    import nibabel as nib

    result = CliRunner().invoke(main, [
        "train", str(volumes / "imagesTr"), "--masks", str(volumes / "labelsTr"), "--window", "16,24,16",
        "--windows-per-epoch", "4", "--val-fraction", "0.34", "--normalize", "zscore", "-m", "unet3d",
        "--param", "in_channels=1", "--param", "depth=2", "--param", "base_channels=4",
        "--param", "num_classes=3", "--augment", "flip", "--epochs", "1", "--batch-size", "2", "--workers", "1",
        "--storage", str(tmp_path), "--name", "hippo"])
    assert result.exit_code == 0, result.output
    run = tmp_path / "hippo"
    report = pq.read_table(run / "data_report.parquet").to_pylist()
    assert sorted(r["role"] for r in report) == ["train", "train", "val"] and all(r["status"] == "ok" for r in report)
    (held,) = [r["image_uri"] for r in report if r["role"] == "val"]
    (epoch,) = _history(run)
    assert epoch["val_pixels"] == int(np.prod(nib.load(held).shape))  # the whole held-out volume, once
    assert load_checkpoint(str(run / "best.pt")).normalization.mode == "zscore"
