"""Real Ray Train (2 CPU workers) on a few real EM slices: loss falls, resume continues,
the checkpoint runs in inference, bad pairs land in the report."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import EM_DIR, SMALL_UNET, png_bytes

from raysegment.criteria.losses import UnknownLossError
from raysegment.errors import InputSpecError
from raysegment.infer.pipeline import InferenceConfig, run_inference
from raysegment.plugin.checkpoint import load_checkpoint
from raysegment.plugin.normalization import percentile_of
from raysegment.plugin.spec import resolve_model
from raysegment.train.training import TrainConfig, TrainingDataError, run_training

pytestmark = pytest.mark.usefixtures("ray_local")

PARAMS = {**SMALL_UNET, "class_names": "cell,membrane"}


@pytest.fixture(scope="module")
def em_pairs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    if not (EM_DIR / "train").is_dir():
        pytest.skip(f"shared data not present: {EM_DIR}")
    root = tmp_path_factory.mktemp("pairs")
    for sub in ("image", "label"):
        (root / sub).mkdir()
        for i in range(6):
            shutil.copy(EM_DIR / "train" / sub / f"{i}.png", root / sub / f"{i}.png")
    return root / "image", root / "label"


def _config(images: Path, masks: Path, storage: Path | str, **kw) -> TrainConfig:
    base = dict(images=str(images), masks=str(masks), model="unet", params=PARAMS, mask_values="0:1,255:0",
                epochs=3, batch_size=2, workers=2, augment="crop=64", val_fraction=0.34, lr=0.01,
                storage=str(storage), name="run", loss="ce")
    base.update(kw)
    return TrainConfig(**base)


def test_train_resume_and_infer_with_the_checkpoint(em_pairs: tuple[Path, Path], tmp_path: Path) -> None:
    images, masks = em_pairs
    first = run_training(_config(images, masks, tmp_path, epochs=2))
    losses = [h["train_loss"] for h in first.history]
    assert len(losses) == 2 and losses[-1] < losses[0]
    # 2 validation slices over 2 workers: every labelled pixel scored exactly once
    assert {h["val_pixels"] for h in first.history} == {2 * 512 * 512}
    run = tmp_path / "run"
    assert {"best.pt", "metrics.jsonl", "curves.png", "data_report.parquet"} <= {p.name for p in run.iterdir()}
    assert len(pd.read_json(run / "metrics.jsonl", lines=True)) == 2
    ckpt = load_checkpoint(str(run / "best.pt"))
    assert ckpt.plugin == "unet" and ckpt.class_names == ["cell", "membrane"]
    assert ckpt.metrics["val_miou"] == pytest.approx(first.best_val_miou)

    resumed = run_training(_config(images, masks, tmp_path, epochs=3, resume=True))
    assert [h["epoch"] for h in resumed.history] == [0, 1, 2]
    assert resumed.history[:2] == first.history  # the first two epochs were not redone

    out = tmp_path / "masks"
    summary = run_inference(InferenceConfig(input=str(images), output=str(out), checkpoint=str(run / "best.pt")))
    assert summary.ok == 6
    names = {s["label_name"] for segs in pd.read_parquet(out)["segments"] for s in segs}
    assert names <= {"cell", "membrane"}


def test_bad_pairs_go_to_the_report_or_stop_the_run(em_pairs: tuple[Path, Path], tmp_path: Path,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    images, masks = em_pairs
    data = tmp_path / "data"
    shutil.copytree(images, data / "image")
    shutil.copytree(masks, data / "label")
    (data / "label" / "1.png").write_bytes(png_bytes(np.zeros((100, 100), np.uint8)))  # wrong size
    (data / "label" / "2.png").write_bytes(png_bytes(np.full((512, 512), 7, np.uint8)))  # label 7 of 2 classes
    (data / "image" / "extra.png").write_bytes(png_bytes(np.zeros((512, 512), np.uint8)))  # no mask
    with pytest.raises(TrainingDataError, match="3 bad training pair"):
        run_training(_config(data / "image", data / "label", tmp_path, bad_data="fail", name="strict"))
    assert json.loads((tmp_path / "strict" / "_lease" / "gen-000001.json").read_text())["released"]  # a failed run frees it
    report = pd.read_parquet(tmp_path / "strict" / "data_report.parquet").set_index("image_uri")
    errors = report["error"].dropna()
    assert "mask is 100x100 but its image is 512x512" in errors[str(data / "image" / "1.png")]
    assert "[7]" in errors[str(data / "image" / "2.png")]
    assert "no mask named extra" in errors[str(data / "image" / "extra.png")]
    assert (report["status"] == "ok").sum() == 4

    # Without --mask-values the 0/255 masks' membrane (255) is the ignore index: one warning says so.
    with caplog.at_level(logging.WARNING, logger="raysegment"), pytest.raises(TrainingDataError):
        run_training(_config(data / "image", data / "label", tmp_path, bad_data="fail", name="raw", mask_values=""))
    hidden = int(pd.read_parquet(tmp_path / "raw" / "data_report.parquet")["ignored"].sum())
    assert hidden > 0
    warned = [r.getMessage() for r in caplog.records if "ignore_index" in r.getMessage()]
    assert warned == [f"{hidden:,} mask pixel(s) have value 255 = the model's ignore_index and are left out of the "
                      "loss and the metrics; if they are a class (a 0/255 mask), pass --mask-values, e.g. 0:0,255:1"]


def test_mistakes_fail_before_ray_work(em_pairs: tuple[Path, Path], tmp_path: Path) -> None:
    images, masks = em_pairs
    with pytest.raises(UnknownLossError, match="valid: ce"):
        run_training(_config(images, masks, tmp_path, loss="hinge"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputSpecError, match="empty"):
        run_training(_config(empty, masks, tmp_path))
    with pytest.raises(ValueError, match="--normalize must be one of dtype, minmax, percentile, zscore"):
        run_training(_config(images, masks, tmp_path, normalize="sigmoid"))
    with pytest.raises(ValueError, match="--stats file not found"):
        run_training(_config(images, masks, tmp_path, normalize="zscore", stats=str(tmp_path / "nope.json")))
    with pytest.raises(ValueError, match="cannot write to --storage"):
        run_training(_config(images, masks, Path("/proc/nope")))
    assert not (tmp_path / "run").exists()


def test_checkpoints_to_s3_and_infer_from_there(em_pairs: tuple[Path, Path], s3_bucket: str, tmp_path: Path) -> None:
    import s3fs

    images, masks = em_pairs
    storage = f"s3://{s3_bucket}/runs"
    # A percentile normalisation: statistics computed on the training images, kept beside the run.
    summary = run_training(_config(images, masks, storage, epochs=1, normalize="percentile:1:99"))
    assert summary.best_checkpoint == f"{storage}/run/best.pt"
    fs = s3fs.S3FileSystem()
    names = {p.rsplit("/", 1)[-1] for p in fs.ls(f"{s3_bucket}/runs/run")}
    assert {"best.pt", "metrics.jsonl", "curves.png", "data_report.parquet", "stats.json"} <= names
    assert any(n.startswith("checkpoint_") for n in names)
    stats = json.loads(fs.cat(f"{s3_bucket}/runs/run/stats.json"))
    assert stats["items"] == 4  # the training images only, never the 2 validation ones
    norm = load_checkpoint(summary.best_checkpoint).normalization
    assert (norm.mode, norm.offset) == ("percentile", (percentile_of(stats["bands"][0], 1),))
    assert resolve_model(None, checkpoint=summary.best_checkpoint).normalization == norm  # infer needs no flag
    out = tmp_path / "masks"
    assert run_inference(InferenceConfig(input=str(images), output=str(out), checkpoint=summary.best_checkpoint)).ok == 6


@pytest.mark.slow
def test_a_killed_worker_is_retried_from_the_last_checkpoint(em_pairs: tuple[Path, Path], tmp_path: Path) -> None:
    """SIGKILL one Ray Train worker after the first checkpoint; the run still finishes every epoch."""
    import os
    import signal
    import threading

    import psutil
    import ray  # noqa: F401  (Ray vendors psutil; importing it makes psutil importable)

    images, masks = em_pairs
    result: dict[str, object] = {}
    thread = threading.Thread(target=lambda: result.update(summary=run_training(
        _config(images, masks, tmp_path, epochs=3, max_failures=2))))
    thread.start()
    killed = None
    while thread.is_alive() and killed is None:
        thread.join(timeout=0.5)  # poll the storage, not a fixed sleep
        if any(p.name.startswith("checkpoint_") for p in (tmp_path / "run").glob("checkpoint_*")):
            for proc in psutil.process_iter(["cmdline"]):
                if any("RayTrainWorker" in part for part in (proc.info["cmdline"] or [])):
                    os.kill(proc.pid, signal.SIGKILL)
                    killed = proc.pid
                    break
    thread.join()
    assert killed is not None, "no Ray Train worker was found to kill"
    summary = result["summary"]
    assert [h["epoch"] for h in summary.history] == [0, 1, 2]


def test_models_with_auxiliary_outputs_train_with_the_cli_loss(em_pairs: tuple[Path, Path], tmp_path: Path) -> None:
    """PSPNet returns (main, aux) in training mode: `train --loss` applies to both, weighted 1 and 0.4."""
    images, masks = em_pairs
    params = {"backbone": "resnet18", "in_channels": 1, "num_classes": 2, "head_channels": 16}
    result = run_training(_config(images, masks, tmp_path, model="pspnet", params=params, epochs=1, workers=1,
                                  loss="ce+dice", name="psp"))
    assert len(result.history) == 1 and np.isfinite(result.history[0]["train_loss"])
    assert load_checkpoint(str(tmp_path / "psp" / "best.pt")).plugin == "pspnet"
