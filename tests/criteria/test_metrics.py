"""Exactness of confusion-matrix segmentation metrics (raysegment.criteria.metrics)."""

from __future__ import annotations

import json
import math
import pickle

import numpy as np
import pytest

from raysegment.criteria.metrics import ConfusionAccumulator, SegmentationMetrics, confusion_matrix

# Hand-worked example: 3 classes on a 3x4 image.
TARGET = np.array(
    [
        [0, 0, 1, 1],
        [0, 2, 2, 1],
        [2, 2, 2, 2],
    ],
    dtype=np.uint8,
)
PRED = np.array(
    [
        [0, 1, 1, 1],
        [0, 2, 1, 2],
        [2, 2, 2, 2],
    ],
    dtype=np.uint8,
)
# (truth, pred) pairs: row 0 -> (0,0) (0,1) (1,1) (1,1)
#                      row 1 -> (0,0) (2,2) (2,1) (1,2)
#                      row 2 -> (2,2) x 4
# Rows = truth, columns = prediction:
HAND_CM = np.array(
    [
        [2, 1, 0],  # truth 0: 3 pixels
        [0, 2, 1],  # truth 1: 3 pixels
        [0, 1, 5],  # truth 2: 6 pixels
    ]
)  # predicted column sums: 2, 4, 6; trace 9 of 12 pixels
# IoU = TP / (truth + pred - TP):
#   class 0: 2 / (3 + 2 - 2) = 2/3
#   class 1: 2 / (3 + 4 - 2) = 2/5
#   class 2: 5 / (6 + 6 - 5) = 5/7
# Acc = TP / truth: 2/3, 2/3, 5/6
HAND_IOU = [2 / 3, 2 / 5, 5 / 7]
HAND_ACC = [2 / 3, 2 / 3, 5 / 6]
HAND_MIOU = (2 / 3 + 2 / 5 + 5 / 7) / 3  # = 187/315
HAND_MACC = (2 / 3 + 2 / 3 + 5 / 6) / 3  # = 13/18
HAND_PIXEL_ACC = 9 / 12


def _random_masks(
    rng: np.random.Generator, shape: tuple[int, ...], k: int, ignore_frac: float = 0.1
) -> tuple[np.ndarray, np.ndarray]:
    """(pred, target) uint8 masks: ~60% correct, ~ignore_frac of target set to 255."""
    target = rng.integers(0, k, size=shape, dtype=np.int64)
    pred = np.where(rng.random(shape) < 0.6, target, rng.integers(0, k, size=shape))
    target = np.where(rng.random(shape) < ignore_frac, 255, target)
    return pred.astype(np.uint8), target.astype(np.uint8)


def test_hand_computed_example() -> None:
    cm = confusion_matrix(PRED, TARGET, num_classes=3)
    assert cm.dtype == np.int64 and cm.shape == (3, 3)
    np.testing.assert_array_equal(cm, HAND_CM)
    m = SegmentationMetrics.from_confusion(cm, ["road", "car", "sky"])
    np.testing.assert_allclose(m.iou, HAND_IOU)
    np.testing.assert_allclose(m.acc, HAND_ACC)
    assert m.miou == pytest.approx(HAND_MIOU) == pytest.approx(187 / 315)
    assert m.macc == pytest.approx(HAND_MACC) == pytest.approx(13 / 18)
    assert m.pixel_acc == pytest.approx(HAND_PIXEL_ACC)
    assert m.present.tolist() == [True, True, True]
    np.testing.assert_array_equal(m.pixels, [3, 3, 6])


def test_ignore_index_pixels_are_skipped() -> None:
    target = np.pad(TARGET, ((0, 1), (0, 0)), constant_values=255)
    pred = np.pad(PRED, ((0, 1), (0, 0)), constant_values=7)  # garbage under ignore: not checked
    np.testing.assert_array_equal(confusion_matrix(pred, target, 3), HAND_CM)
    # A custom ignore value works the same way.
    target_neg = target.astype(np.int16)
    target_neg[target_neg == 255] = -1
    np.testing.assert_array_equal(confusion_matrix(pred, target_neg, 3, ignore_index=-1), HAND_CM)
    # With ignoring disabled, 255 is just an out-of-range label.
    with pytest.raises(ValueError, match="target contains label 255"):
        confusion_matrix(pred, target, 3, ignore_index=None)


def test_class_absent_from_both_is_excluded_from_means() -> None:
    cm = confusion_matrix(PRED, TARGET, num_classes=4)  # class 3 never appears
    m = SegmentationMetrics.from_confusion(cm)
    assert m.present.tolist() == [True, True, True, False]
    assert math.isnan(m.iou[3]) and math.isnan(m.acc[3])
    assert m.miou == pytest.approx(np.mean(m.iou[:3])) == pytest.approx(HAND_MIOU)
    assert m.macc == pytest.approx(np.mean(m.acc[:3])) == pytest.approx(HAND_MACC)
    assert m.pixel_acc == pytest.approx(HAND_PIXEL_ACC)


def test_class_predicted_but_absent_from_truth() -> None:
    target = np.array([[0, 0, 2, 2]])
    pred = np.array([[0, 1, 2, 2]])  # class 1 only ever predicted (a false positive)
    m = SegmentationMetrics.from_confusion(confusion_matrix(pred, target, 3))
    assert m.iou[1] == 0.0
    assert math.isnan(m.acc[1])
    assert m.present[1]
    # IoU 0 counts toward mIoU; NaN accuracy is left out of mAcc.
    assert m.miou == pytest.approx((1 / 2 + 0 + 1) / 3)
    assert m.macc == pytest.approx((1 / 2 + 1) / 2)
    assert m.pixel_acc == pytest.approx(3 / 4)


def test_matches_sklearn_on_random_masks() -> None:
    sk_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    k = 6
    pred, target = _random_masks(rng, (4, 37, 53), k)
    pred[target == 255] = 200  # predictions under ignored pixels are irrelevant
    target[target == 4] = 1  # class 4 absent from truth, still predicted
    pred[pred == 5] = 0
    target[target == 5] = 0  # class 5 absent from both
    cm = confusion_matrix(pred, target, k)
    valid = target != 255
    y_true, y_pred = target[valid], pred[valid]
    np.testing.assert_array_equal(cm, sk_metrics.confusion_matrix(y_true, y_pred, labels=range(k)))
    m = SegmentationMetrics.from_confusion(cm)
    assert m.present.tolist() == [True, True, True, True, True, False]
    labels = np.flatnonzero(m.present)
    expected_iou = sk_metrics.jaccard_score(y_true, y_pred, labels=labels, average=None)
    np.testing.assert_allclose(m.iou[labels], expected_iou)
    assert m.pixel_acc == pytest.approx(sk_metrics.accuracy_score(y_true, y_pred))
    in_truth = [0, 1, 2, 3]
    expected_acc = sk_metrics.recall_score(y_true, y_pred, labels=in_truth, average=None)
    np.testing.assert_allclose(m.acc[in_truth], expected_acc)
    assert m.macc == pytest.approx(expected_acc.mean())
    assert m.miou == pytest.approx(expected_iou.mean())


def test_accumulating_shards_equals_concatenation() -> None:
    rng = np.random.default_rng(1)
    k = 5
    shapes = [(int(h), int(w)) for h, w in rng.integers(5, 40, size=(9, 2))]
    images = [_random_masks(rng, shape, k) for shape in shapes]
    whole_pred = np.concatenate([p.ravel() for p, _ in images])
    whole_target = np.concatenate([t.ravel() for _, t in images])
    expected = confusion_matrix(whole_pred, whole_target, k)

    # Uneven shards, as separate Ray tasks would see them.
    shards = []
    for chunk in (images[:1], images[1:5], images[5:]):
        acc = ConfusionAccumulator(k)
        for p, t in chunk:
            acc.update(p, t)
        shards.append(acc)

    first = shards[0].matrix
    np.testing.assert_array_equal((shards[0] + shards[1] + shards[2]).matrix, expected)
    np.testing.assert_array_equal(sum(shards).matrix, expected)
    np.testing.assert_array_equal(shards[0].matrix, first)  # + leaves its operands alone
    merged = ConfusionAccumulator(k)
    for s in shards:
        merged.merge(s)
    np.testing.assert_array_equal(merged.matrix, expected)

    whole = ConfusionAccumulator(k).update(whole_pred, whole_target)
    assert whole.metrics().miou == merged.metrics().miou  # exact, not approximate


def test_accumulator_pickle_round_trip() -> None:
    acc = ConfusionAccumulator(3, ignore_index=255).update(PRED, TARGET)
    clone = pickle.loads(pickle.dumps(acc))
    assert clone == acc
    assert clone.num_classes == 3 and clone.ignore_index == 255
    np.testing.assert_array_equal(clone.matrix, HAND_CM)
    clone.update(PRED, TARGET)  # the unpickled copy is independent and still writable
    np.testing.assert_array_equal(clone.matrix, 2 * HAND_CM)
    np.testing.assert_array_equal(acc.matrix, HAND_CM)
    assert len(pickle.dumps(acc)) < 1024


def test_merge_rejects_incompatible_accumulators() -> None:
    with pytest.raises(ValueError, match="num_classes"):
        ConfusionAccumulator(3).merge(ConfusionAccumulator(4))
    with pytest.raises(ValueError, match="ignore_index"):
        ConfusionAccumulator(3, 255).merge(ConfusionAccumulator(3, None))
    with pytest.raises(TypeError):
        ConfusionAccumulator(3) + HAND_CM  # type: ignore[operator]


@pytest.mark.parametrize(
    ("pred", "target", "match"),
    [
        (np.array([0, 3]), np.array([0, 1]), "pred contains label 3 outside"),
        (np.array([0, -1]), np.array([0, 1]), "pred contains label -1 outside"),
        (np.array([0, 1]), np.array([0, 9]), "target contains label 9 outside"),
        (np.array([0, 1]), np.array([-2, 1]), "target contains label -2 outside"),
        (np.array([0, 1, 2]), np.array([0, 1]), "shape"),
    ],
)
def test_out_of_range_and_mismatched_inputs_raise(
    pred: np.ndarray, target: np.ndarray, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        confusion_matrix(pred, target, 3)


def test_non_integer_inputs_raise() -> None:
    with pytest.raises(TypeError, match="integer"):
        confusion_matrix(np.array([0.0, 1.0]), np.array([0, 1]), 3)
    with pytest.raises(ValueError, match="num_classes"):
        confusion_matrix(np.array([0]), np.array([0]), 0)


def test_to_dict_is_json_without_nan() -> None:
    cm = confusion_matrix(np.array([0, 1, 2, 2]), np.array([0, 0, 2, 2]), 4)
    m = SegmentationMetrics.from_confusion(cm, ["a", "b", "c", "d"])
    d = m.to_dict()
    json.dumps(d, allow_nan=False)  # raises on NaN
    assert d["per_class"]["b"] == {"iou": 0.0, "acc": None, "pixels": 0, "present": True}
    assert d["per_class"]["d"]["iou"] is None and d["per_class"]["d"]["present"] is False
    assert d["miou"] == pytest.approx(m.miou)
    assert d["num_pixels"] == 4
    # An empty matrix yields all-None summaries rather than NaN.
    empty = ConfusionAccumulator(2).metrics().to_dict()
    json.dumps(empty, allow_nan=False)
    assert empty["miou"] is None and empty["pixel_acc"] is None


def test_format_table_lists_classes_and_summary() -> None:
    cm = confusion_matrix(PRED, TARGET, 4)
    table = SegmentationMetrics.from_confusion(cm, ["road", "car", "sky", "boat"]).format_table()
    lines = table.splitlines()
    assert lines[0].split() == ["class", "IoU", "%", "Acc", "%", "pixels"]
    assert lines[2].split() == ["road", "66.67", "66.67", "3"]
    assert lines[5].split() == ["boat", "-", "-", "0"]
    assert "mIoU:" in table and "(3/4 classes)" in table
    assert f"{100 * HAND_PIXEL_ACC:.2f}" in table


def test_class_names_validated() -> None:
    with pytest.raises(ValueError, match="class names"):
        SegmentationMetrics.from_confusion(HAND_CM, ["a", "b"])
    with pytest.raises(ValueError, match="unique"):
        SegmentationMetrics.from_confusion(HAND_CM, ["a", "a", "b"])
    with pytest.raises(ValueError, match="square"):
        SegmentationMetrics.from_confusion(np.zeros((2, 3), dtype=np.int64))
