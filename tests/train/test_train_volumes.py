"""``unet3d`` trains through ``raysegment train`` on real MSD hippocampus MRI volumes.

One real Ray Train run (2 CPU workers) through the CLI, the README's command shape:
the volumes and their label volumes are decoded by the model's modality (NIfTI, not
images), volumes of different sizes batch together, the loss falls, and with 3 training
volumes on 2 workers every volume is trained on in every epoch (Ray Train's equal split
alone would drop one).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from conftest import SHARED

from raysegment.cli import main
from raysegment.plugin.checkpoint import load_checkpoint
from raysegment.train.data import list_pairs, split_pairs

pytestmark = [pytest.mark.usefixtures("ray_local"), pytest.mark.slow]

HIPPO = SHARED / "msd_task04_hippocampus"
# Float32 cases of different shapes (001, 033 and 034 are stored as uint8 on another intensity scale).
CASES = ("hippocampus_003", "hippocampus_004", "hippocampus_006", "hippocampus_007", "hippocampus_008")


@pytest.fixture(scope="module")
def volumes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not HIPPO.is_dir():
        pytest.skip(f"shared data not present: {HIPPO}")
    root = tmp_path_factory.mktemp("hippo")
    for sub in ("imagesTr", "labelsTr"):
        (root / sub).mkdir()
        for case in CASES:
            shutil.copy(HIPPO / sub / f"{case}.nii.gz", root / sub / f"{case}.nii.gz")
    return root


def test_unet3d_trains_on_hippocampus_volumes_and_sees_every_item(volumes: Path, tmp_path: Path) -> None:
    shapes = {nib.load(volumes / "imagesTr" / f"{c}.nii.gz").shape for c in CASES}
    assert len(shapes) > 1  # sizes differ: the batches are padded, not cropped
    result = CliRunner().invoke(main, [
        "train", str(volumes / "imagesTr"), "--masks", str(volumes / "labelsTr"), "--model", "unet3d",
        "--param", "in_channels=1", "--param", "num_classes=3", "--param", "depth=2", "--param", "base_channels=4",
        "--param", "intensity_scale=0.00025", "--param", "class_names=background,anterior,posterior",
        "--augment", "flip", "--val-fraction", "0.4", "--epochs", "4", "--batch-size", "2", "--workers", "2",
        "--lr", "0.01", "--storage", str(tmp_path), "--name", "hippo",
    ])
    assert result.exit_code == 0, result.output
    history = [json.loads(line) for line in (tmp_path / "hippo" / "metrics.jsonl").read_text().splitlines()]
    losses = [h["train_loss"] for h in history]
    assert len(losses) == 4 and losses[-1] < losses[0], losses
    # 3 training volumes on 2 workers: filled up to 4, and all 3 trained on in every epoch.
    assert [h["train_items"] for h in history] == [3] * 4
    assert [h["train_images"] for h in history] == [4] * 4
    # Validation scores every voxel of the 2 validation volumes, once (none of the padding).
    report = pd.read_parquet(tmp_path / "hippo" / "data_report.parquet")
    assert (report["status"] == "ok").all() and len(report) == 5
    pairs, _ = list_pairs(str(volumes / "imagesTr"), str(volumes / "labelsTr"))
    _, val = split_pairs(pairs, 0.4, seed=0)
    voxels = sum(int(np.prod(nib.load(p.mask).shape)) for p in val)
    assert len(val) == 2 and [h["val_pixels"] for h in history] == [voxels] * 4
    ckpt = load_checkpoint(str(tmp_path / "hippo" / "best.pt"))
    assert ckpt.plugin == "unet3d" and ckpt.class_names == ["background", "anterior", "posterior"]
