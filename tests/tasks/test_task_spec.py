"""The task seam: one spec per task, looked up in one table, failing in one line where a task lacks a part."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from raysegment.criteria.metrics import ConfusionAccumulator
from raysegment.masks.rle import segments_from_prediction
from raysegment.plugin import InstancePrediction, SegmentationModel, SemanticPrediction, Task
from raysegment.tasks.semantic import blended_logits
from raysegment.tasks.spec import TASKS, PredictionError, TaskError, TaskSpec, register_task, task_spec
from raysegment.tiling.plan import TilePlan
from raysegment.train.loop import training_loss


class Tiny(SegmentationModel):
    from raysegment.plugin import Param

    params = (Param("in_channels", int, 1), Param("num_classes", int, 3))


def test_semantic_spec_is_found_and_complete() -> None:
    spec = task_spec(Task.SEMANTIC)
    assert spec.task is Task.SEMANTIC and spec.prediction_types == (SemanticPrediction,)
    for part in ("target", "default_loss", "metric", "tiled_merge", "check_reduced"):
        assert getattr(spec, part) is not None, part
    assert task_spec("semantic") is spec


def test_a_task_without_a_spec_fails_in_one_line() -> None:
    with pytest.raises(TaskError) as err:
        task_spec(Task.PANOPTIC)
    assert str(err.value) == "no task spec for panoptic models yet (tasks with one: semantic, instance)"


def test_a_missing_part_fails_in_one_line_naming_the_task() -> None:
    with pytest.raises(TaskError, match="^tiled inference is not available for instance models"):
        task_spec(Task.INSTANCE).require("tiled_merge", "tiled inference")
    merge = task_spec(Task.SEMANTIC).require("tiled_merge", "tiled inference")
    assert merge is blended_logits


def test_the_semantic_merge_blends_each_class_channel_of_the_windows() -> None:
    plan = TilePlan.for_shape((8, 6), (4, 6), (2, 0))
    merger = task_spec(Task.SEMANTIC).tiled_merge(plan, Tiny(), "constant", (0, 0))
    logits = np.random.default_rng(0).normal(size=(3, 8, 6)).astype(np.float32)
    strips = [s for w in plan.windows for s in merger.aggregate(w, logits[(slice(None), *w.slices())])]
    strips += merger.finalize()
    merged = np.concatenate([s.values for s in strips], axis=1)
    assert merged.shape == (3, 8, 6)  # one channel per class of the model
    np.testing.assert_allclose(merged, logits, rtol=1e-6)  # windows that agree merge to the same logits


def test_a_second_spec_for_a_task_is_refused() -> None:
    saved = TASKS.snapshot()
    try:
        with pytest.raises(ValueError, match="task spec already registered for semantic"):
            register_task(task_spec(Task.SEMANTIC))
        spec = TaskSpec(task=Task.PANOPTIC, prediction_types=(InstancePrediction,),
                        check_prediction=lambda p, s, h: "", segments=lambda p, n: [])
        register_task(spec)
        assert task_spec(Task.PANOPTIC) is spec
    finally:
        TASKS.restore(saved)
    with pytest.raises(TaskError):
        task_spec(Task.PANOPTIC)


def test_semantic_segments_are_the_rle_of_each_class() -> None:
    labels = np.array([[0, 1, 1], [2, 2, 0]], dtype=np.uint8)
    pred = SemanticPrediction(labels=labels)
    segments = task_spec(Task.SEMANTIC).segments(pred, ["a", "b", "c"])
    assert segments == segments_from_prediction(pred, ["a", "b", "c"])
    assert [s["label_name"] for s in segments] == ["a", "b", "c"] and [s["area"] for s in segments] == [2, 2, 2]
    with pytest.raises(PredictionError, match="expected SemanticPrediction"):
        task_spec(Task.SEMANTIC).segments(InstancePrediction(np.zeros((0, 2, 3), bool), np.zeros(0), np.zeros(0)), [])


def test_semantic_prediction_checks_name_the_bad_shape() -> None:
    check = task_spec(Task.SEMANTIC).check_prediction
    assert check(SemanticPrediction(labels=np.zeros((4, 5))), (4, 5), "postprocess()") == "labels (4, 5)"
    with pytest.raises(PredictionError, match=r"postprocess\(\) gave labels of shape \(4, 4\), expected \(4, 5\)"):
        check(SemanticPrediction(labels=np.zeros((4, 4))), (4, 5), "postprocess()")
    with pytest.raises(PredictionError, match=r"spans 0\.\.3, outside 0\.\.2"):
        task_spec(Task.SEMANTIC).check_reduced(Tiny(), {"labels": torch.tensor([[[0, 3]]])}, (1, 2))


def test_metric_accumulators_merge_exactly() -> None:
    rng = np.random.default_rng(0)
    pred, target = rng.integers(0, 3, (2, 8, 8)), rng.integers(0, 3, (2, 8, 8))
    make = task_spec(Task.SEMANTIC).metric
    whole = make(3, 255).update(pred, target)
    parts = make(3, 255).update(pred[:1], target[:1]).merge(make(3, 255).update(pred[1:], target[1:]))
    assert isinstance(whole, ConfusionAccumulator) and whole == parts


def test_target_comes_from_the_plugins_encode_target() -> None:
    class Shifted(Tiny):
        def encode_target(self, mask: np.ndarray) -> np.ndarray:
            return np.asarray(mask, dtype=np.int64) - 1

    mask = np.array([[1, 2], [3, 1]])
    assert task_spec(Task.SEMANTIC).target(Shifted(), mask).tolist() == [[0, 1], [2, 0]]


def test_training_calls_the_plugins_loss_unless_loss_is_given() -> None:
    calls = []

    class OwnLoss(Tiny):
        def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            calls.append(output.shape)
            return output.sum() * 0 + 7.0

    logits, target = torch.zeros(1, 3, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long)
    assert float(training_loss(OwnLoss())(logits, target, None)) == 7.0 and calls == [(1, 3, 2, 2)]
    ce = float(training_loss(OwnLoss(), "ce")(logits, target, None))
    assert ce == pytest.approx(np.log(3), rel=1e-6) and len(calls) == 1
    # the default contract loss is the semantic task's default loss
    assert float(task_spec(Task.SEMANTIC).default_loss(Tiny(), logits, target)) == pytest.approx(np.log(3), rel=1e-6)


def test_the_semantic_validation_report_scores_miou_and_keeps_undefined_classes_apart() -> None:
    spec = task_spec(Task.SEMANTIC)
    acc = spec.metric(3, 255).update(np.array([[0, 1], [1, 0]]), np.array([[0, 1], [0, 255]]))
    report = spec.validation_report(acc.metrics(["bg", "fg", "rare"]))
    assert spec.select(None, ["bg", "fg", "rare"]) == "val_miou" and report["val_miou"] == pytest.approx(0.5)
    assert report["val_pixels"] == 3 and report["val_iou"] == {"bg": 0.5, "fg": 0.5, "rare": None}
    assert report["val_fg_miou"] == pytest.approx(0.5) and report["val_dice"]["fg"] == pytest.approx(2 / 3)
    empty = spec.validation_report(spec.metric(2, 255).metrics())
    assert empty["val_miou"] == 0.0 and empty["val_pixels"] == 0  # no labelled pixel: 0, never NaN


def _epoch(confusion: list[list[int]]) -> dict:
    from raysegment.train.loop import flat_report

    acc = ConfusionAccumulator.from_matrix(np.array(confusion), 255)
    return flat_report(task_spec(Task.SEMANTIC).validation_report(acc.metrics(["background", "building"])))


def test_select_iou_of_the_rare_class_picks_another_epoch_than_miou() -> None:
    """Epoch 0 nearly ignores the buildings but wins on mIoU; epoch 1 finds them."""
    history = [_epoch([[9500, 20], [450, 30]]),  # background IoU 0.953, building 0.060: mIoU 0.506
               _epoch([[8000, 1520], [130, 350]])]  # background 0.829, building 0.175: mIoU 0.502
    select = task_spec(Task.SEMANTIC).select
    names = ["background", "building"]
    by = {text: max(range(2), key=lambda e: history[e][select(text, names)]) for text in ("miou", "iou:building")}
    assert history[0]["val_miou"] > history[1]["val_miou"] and history[1]["val_iou/building"] > history[0]["val_iou/building"]
    assert by == {"miou": 0, "iou:building": 1}
    assert select(None, names) == "val_iou/building"  # two classes: the foreground IoU by default
    assert select("dice:building", names) == "val_dice/building" and select("fg_miou", names) == "val_fg_miou"


@pytest.mark.parametrize("text, message", [("iou:roads", "no class 'roads' .classes: background, building."),
                                           ("auc", "must be miou, fg_miou, iou:<class> or dice:<class>"),
                                           ("miou:x", "must be miou")])
def test_a_bad_select_is_one_line(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        task_spec(Task.SEMANTIC).select(text, ["background", "building"])
