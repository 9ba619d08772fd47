"""Evaluation of an output root against ground truth (raysegment.eval.evaluation), on a real local Ray."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import SHARED, png_bytes

from raysegment.criteria.metrics import confusion_matrix
from raysegment.eval import evaluation
from raysegment.eval.evaluation import evaluate
from raysegment.io.coco import CocoSemantic
from raysegment.masks.rle import segments_from_prediction
from raysegment.output.schema import OUTPUT_SCHEMA
from raysegment.plugin.contract import InstancePrediction, SemanticPrediction

pytestmark = pytest.mark.usefixtures("ray_local")

VOC_COCO = SHARED / "labelme_voc_instance_coco" / "data_dataset_coco" / "annotations.json"


def _row(uri: str, index: int, labels: np.ndarray | InstancePrediction | None, names: Sequence[str],
         params: dict, model_name: str = "unet") -> dict:
    model = {"name": model_name, "version": "0.1.0", "checkpoint_sha256": None, "params": json.dumps(params)}
    if labels is None:
        return {"uri": uri, "index": index, "shard": 0, "status": "error", "error": "corrupt PNG", "height": None,
                "width": None, "model": model, "segments": None, "meta": None}
    pred = labels if isinstance(labels, InstancePrediction) else SemanticPrediction(labels=labels)
    h, w = labels.masks.shape[1:] if isinstance(labels, InstancePrediction) else labels.shape
    segments = segments_from_prediction(pred, names)
    return {"uri": uri, "index": index, "shard": 0, "status": "ok", "error": None, "height": h, "width": w,
            "model": model, "segments": segments, "meta": None}


def write_output(root: Path, preds: dict[str, np.ndarray | InstancePrediction | None], names: Sequence[str] = ("bg", "fg"),
                 params: dict | None = None, parts: int = 1, model_name: str = "unet") -> list[str]:
    """A real output root: ``parts`` part files in OUTPUT_SCHEMA, plus a stale staging fragment."""
    params = params if params is not None else {"num_classes": len(names), "class_names": ",".join(names)}
    rows = [_row(uri, i, labels, names, params, model_name) for i, (uri, labels) in enumerate(preds.items())]
    root.mkdir(parents=True)
    for p in range(parts):
        pq.write_table(pa.Table.from_pylist(rows[p::parts], schema=OUTPUT_SCHEMA), root / f"part-{p:06d}.parquet")
    # What a killed run leaves behind; evaluation must never read it.
    (root / "_staging" / "shard-000009").mkdir(parents=True)
    junk = _row("/junk.png", 99, np.full((2, 2), 1, np.int64), names, params)
    pq.write_table(pa.Table.from_pylist([junk], schema=OUTPUT_SCHEMA), root / "_staging/shard-000009/frag-0.parquet")
    return list(preds)


def write_masks(folder: Path, masks: dict[str, np.ndarray]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for stem, mask in masks.items():
        (folder / f"{stem}.png").write_bytes(png_bytes(mask.astype(np.uint8)))


# Hand-worked example, two images, classes 0 (bg) and 1 (fg).
#   a: truth [[0 0 1]   pred [[0 1 1]   -> (t,p): (0,0) (0,1) (1,1) / (1,1) (1,1) (1,0)
#             [1 1 1]]        [1 1 0]]
#   b: truth [[0 255]   pred [[0 0]     -> (0,0), ignored, (1,1) (1,1)
#             [1 1  ]]        [1 1]]
# Confusion (rows truth): [[2, 1],    truth 0: 3 px, truth 1: 6 px
#                          [1, 5]]    predicted 0: 3 px, predicted 1: 6 px
# IoU0 = 2 / (3 + 3 - 2) = 1/2;  IoU1 = 5 / (6 + 6 - 5) = 5/7;  mIoU = 17/28
# Acc0 = 2/3;  Acc1 = 5/6;  pixel acc = 7/9 (the 255 pixel is not counted)
GT_A = np.array([[0, 0, 1], [1, 1, 1]])
PRED_A = np.array([[0, 1, 1], [1, 1, 0]])
GT_B = np.array([[0, 255], [1, 1]])
PRED_B = np.array([[0, 0], [1, 1]])


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> evaluation.EvalResult:
    """The hand example plus one row of every kind that cannot be compared: one Ray pass."""
    tmp = tmp_path_factory.mktemp("mixed")
    preds = {"/data/img/a.tif": PRED_A, "/data/img/b.tif": PRED_B, "/data/img/nogt.tif": PRED_A,
             "/data/img/broken.tif": None, "/data/img/big.tif": PRED_B, "/data/img/badlabel.tif": PRED_B}
    write_output(tmp / "out", preds, parts=2)
    write_masks(tmp / "gt", {"a_mask": GT_A, "b_mask": GT_B, "big_mask": np.zeros((3, 3)),
                             "badlabel_mask": np.full((2, 2), 7)})
    return evaluate(str(tmp / "out"), str(tmp / "gt"), pair="{stem}_mask")


def test_hand_computed_example(mixed: evaluation.EvalResult) -> None:
    m = mixed.metrics
    assert m.confusion.tolist() == [[2, 1], [1, 5]]
    assert m.iou == pytest.approx([1 / 2, 5 / 7])
    assert m.acc == pytest.approx([2 / 3, 5 / 6])
    assert m.miou == pytest.approx(17 / 28) and m.pixel_acc == pytest.approx(7 / 9)
    assert m.class_names == ("bg", "fg")
    report = json.loads(json.dumps(mixed.to_dict()))
    assert report["metrics"]["miou"] == pytest.approx(17 / 28) and report["class_names"] == ["bg", "fg"]
    assert "mIoU:      60.71" in mixed.format()


def test_missing_error_and_mismatched_rows_are_counted_not_fatal(mixed: evaluation.EvalResult) -> None:
    assert (mixed.rows, mixed.matched, mixed.missing, mixed.skipped_error_rows) == (6, 2, 1, 1)
    assert (mixed.size_mismatch, mixed.failed) == (1, 1)
    assert mixed.missing_gt == ["/data/img/nogt.tif"]
    problems = "\n".join(mixed.problems)
    assert "/data/img/big.tif: mask is 3x3 but the prediction is 2x2" in problems
    assert "/data/img/badlabel.tif" in problems and "label 7 outside [0, 2)" in problems
    assert "no ground truth: /data/img/nogt.tif" in mixed.format()


def test_matches_sklearn_on_random_masks_with_value_map(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sk = pytest.importorskip("sklearn.metrics")
    monkeypatch.setattr(evaluation, "ROWS_PER_TASK", 2)  # several partial matrices to add up
    rng = np.random.default_rng(0)
    raw_of_class = np.array([10, 20, 30])  # raw mask values, mapped back by --mask-values
    preds, masks, truth, predicted = {}, {}, [], []
    for i in range(7):
        h, w = rng.integers(5, 40, size=2)
        target = rng.integers(0, 3, size=(h, w))
        pred = np.where(rng.random((h, w)) < 0.6, target, rng.integers(0, 3, size=(h, w)))
        raw = raw_of_class[target]
        raw[rng.random((h, w)) < 0.1] = 255
        preds[f"s3://bucket/img/{i:02d}.jpg"], masks[f"{i:02d}"] = pred, raw
        keep = raw != 255
        truth.append(target[keep])
        predicted.append(pred[keep])
    write_output(tmp_path / "out", preds, names=("a", "b", "c"), parts=3)
    write_masks(tmp_path / "gt", masks)
    result = evaluate(str(tmp_path / "out"), str(tmp_path / "gt"), mask_values="10:0,20:1,30:2")
    y_true, y_pred = np.concatenate(truth), np.concatenate(predicted)
    assert result.metrics.confusion.tolist() == sk.confusion_matrix(y_true, y_pred, labels=[0, 1, 2]).tolist()
    assert result.metrics.iou == pytest.approx(sk.jaccard_score(y_true, y_pred, average=None, labels=[0, 1, 2]))
    assert result.metrics.pixel_acc == pytest.approx(sk.accuracy_score(y_true, y_pred))
    assert result.matched == 7


def test_manifest_ground_truth_names_from_segments_and_uncovered_pixels(tmp_path: Path) -> None:
    # An instance row: one object of class 1 at (0, 2); the two pixels no segment covers
    # count as predicted background. Truth [[0 1 1]] -> (0,0) (1,0) (1,1) -> adds [[1, 0], [1, 1]].
    instance = InstancePrediction(masks=np.array([[[False, False, True]]]), labels=np.array([1]),
                                  scores=np.array([0.9]))
    # A run whose names came from a checkpoint: params say nothing, the segments do.
    write_output(tmp_path / "out", {"/d/a.png": PRED_A, "/d/b.png": PRED_B, "/d/c.png": instance},
                 names=("cell", "membrane"), params={"num_classes": 2, "class_names": ""})
    write_masks(tmp_path / "m", {"x": GT_A, "y": GT_B, "z": np.array([[0, 1, 1]])})
    (tmp_path / "pairs.csv").write_text("image_uri,mask_uri\n/d/a.png,m/x.png\n/d/b.png,m/y.png\n/d/c.png,m/z.png\n")
    result = evaluate(str(tmp_path / "out"), str(tmp_path / "pairs.csv"))
    assert result.metrics.confusion.tolist() == [[2 + 1, 1 + 0], [1 + 1, 5 + 1]]
    assert result.metrics.class_names == ("cell", "membrane")


def test_coco_ground_truth_on_real_annotations(tmp_path: Path) -> None:
    if not VOC_COCO.is_file():
        pytest.skip(f"shared data not present: {VOC_COCO}")
    coco = CocoSemantic.load(str(VOC_COCO))
    ids = coco.image_ids_by_file_name
    perfect = coco.mask_for(ids["2011_000003.jpg"])
    shifted = np.roll(coco.mask_for(ids["2011_000025.jpg"]), 7, axis=1)  # a prediction off by 7 px
    preds = {"/photos/2011_000003.jpg": perfect, "/photos/2011_000025.jpg": shifted, "/photos/other.jpg": perfect}
    params = {"num_classes": 21, "class_names": ""}
    write_output(tmp_path / "out", preds, names=[f"c{i}" for i in range(21)], params=params)
    result = evaluate(str(tmp_path / "out"), str(VOC_COCO))
    expected = confusion_matrix(perfect, perfect, 21) + confusion_matrix(shifted, coco.mask_for(ids["2011_000025.jpg"]), 21)
    assert np.array_equal(result.metrics.confusion, expected)
    assert result.metrics.class_names == coco.class_names  # the COCO names win
    assert result.metrics.iou[15] == 1.0 and 0 < result.metrics.iou[6] < 1  # person exact, bus shifted
    assert (result.matched, result.missing_gt) == (2, ["/photos/other.jpg"])


def test_class_count_mismatch_fails_before_ray(tmp_path: Path) -> None:
    if not VOC_COCO.is_file():
        pytest.skip(f"shared data not present: {VOC_COCO}")
    write_output(tmp_path / "out", {"/p/2011_000003.jpg": PRED_A})
    with pytest.raises(ValueError, match="the predictions have 2 classes but COCO file .* has 21"):
        evaluate(str(tmp_path / "out"), str(VOC_COCO))
    with pytest.raises(ValueError, match="ignore index 1 is one of the 2 class ids"):
        evaluate(str(tmp_path / "out"), str(tmp_path), ignore_index=1)
    with pytest.raises(ValueError, match="no part-"):
        evaluate(str(tmp_path), str(tmp_path))


BLOBS = """
from raysegment.plugin import InstancePrediction, Param, SegmentationModel, Task


class Blobs(SegmentationModel):
    task = Task.INSTANCE
    params = (Param("in_channels", int, 1), Param("num_classes", int, 2))

    def build(self):
        import torch

        return torch.nn.Conv2d(self.in_channels, self.num_classes, 1)
"""


def test_the_run_models_task_spec_scores_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from plugin_fixtures import make_dist

    from raysegment.plugin.registry import get_registry
    from raysegment.tasks.spec import TaskError

    monkeypatch.syspath_prepend(str(make_dist(tmp_path / "dist", "blobs-plugin", {"blobs": "blobs_mod:Blobs"},
                                              {"blobs_mod": BLOBS})))
    get_registry.cache_clear()
    write_masks(tmp_path / "gt", {"a": GT_A, "b": GT_B})
    try:
        write_output(tmp_path / "blobs", {"/d/a.png": PRED_A}, model_name="blobs")
        with pytest.raises(TaskError, match="^evaluation is not available for instance models .no metric"):
            evaluate(str(tmp_path / "blobs"), str(tmp_path / "gt"))  # refused before any mask is read
    finally:
        get_registry.cache_clear()
    # A model not installed where eval runs is scored by the contract's default task (semantic label maps).
    write_output(tmp_path / "elsewhere", {"/d/a.png": PRED_A, "/d/b.png": PRED_B}, model_name="not_installed_here")
    result = evaluate(str(tmp_path / "elsewhere"), str(tmp_path / "gt"))
    assert result.matched == 2 and result.metrics.confusion.tolist() == [[2, 1], [1, 5]]


def cli(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("RAYSEGMENT_DEBUG", "RAY_ADDRESS")}
    return subprocess.run([sys.executable, "-m", "raysegment.cli", *args], capture_output=True, text=True,
                          env=env, timeout=300)


def test_cli_eval_writes_json_and_bad_gt_is_one_line(tmp_path: Path) -> None:
    import ray
    from click.testing import CliRunner

    from raysegment.cli import main

    write_output(tmp_path / "out", {"/d/a.png": PRED_A, "/d/b.png": PRED_B})
    write_masks(tmp_path / "gt", {"a": GT_A, "b": GT_B})
    bad = CliRunner().invoke(main, ["eval", str(tmp_path / "out"), str(tmp_path / "nowhere")])
    assert bad.exit_code == 1 and bad.output == f"error: input not found: {tmp_path / 'nowhere'}\n"
    # Joins the test session's cluster (also covers --address) instead of starting a second Ray.
    proc = cli("eval", str(tmp_path / "out"), str(tmp_path / "gt"), "--out", str(tmp_path / "e.json"),
               "--address", ray.get_runtime_context().gcs_address)
    assert proc.returncode == 0, proc.stderr
    assert "mIoU:      60.71" in proc.stdout and "matched 2" in proc.stdout
    report = json.loads((tmp_path / "e.json").read_text())
    assert report["matched"] == 2 and report["metrics"]["pixel_acc"] == pytest.approx(7 / 9)
    assert "default: eval.json" in " ".join(CliRunner().invoke(main, ["eval", "--help"]).output.split())


def test_a_0_255_mask_warns_and_absent_classes_are_named(tmp_path: Path) -> None:
    names = ("bg", "fg", "rare")
    write_output(tmp_path / "out", {"/d/a.png": PRED_A, "/d/b.png": PRED_B}, names=names)
    write_masks(tmp_path / "gt", {"a": GT_A, "b": GT_B})  # b has one pixel of 255
    result = evaluate(str(tmp_path / "out"), str(tmp_path / "gt"))
    assert result.ignored_pixels == 1
    lines = result.format().splitlines()
    assert "classes absent from both prediction and truth (no IoU, left out of the means): rare" in lines
    assert lines[-1] == ("warning: 1 ground-truth pixel(s) have value 255 = --ignore-index and are not scored; if "
                         "they are a class (a 0/255 mask), pass --mask-values, e.g. 0:0,255:1")
    mapped = evaluate(str(tmp_path / "out"), str(tmp_path / "gt"), mask_values="255:1")
    assert mapped.ignored_pixels == 0 and not any(line.startswith("warning") for line in mapped.format().splitlines())
