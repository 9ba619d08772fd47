"""Exact semantic-segmentation metrics from confusion matrices.

Averaging per-image IoU over-weights small images and is undefined for classes
an image lacks, so everything here is derived from one integer confusion
matrix summed over the whole evaluation set. Integer sums are associative and
exact: Ray tasks or train workers return partial matrices (a
:class:`ConfusionAccumulator` pickles to a K x K int64 array) and the driver
adds them, getting the same numbers as a single pass over all pixels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "confusion_matrix",
    "SegmentationMetrics",
    "ConfusionAccumulator",
]


def _check_num_classes(num_classes: int) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)):
        raise TypeError(f"num_classes must be an int, got {type(num_classes).__name__}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    return int(num_classes)


def _check_labels(name: str, values: np.ndarray, num_classes: int) -> None:
    if values.size == 0:
        return
    lo, hi = int(values.min()), int(values.max())
    if lo < 0 or hi >= num_classes:
        bad = lo if lo < 0 else hi
        raise ValueError(
            f"{name} contains label {bad} outside [0, {num_classes}) "
            f"(range seen: {lo}..{hi}); wrong num_classes or unmapped ignore value?"
        )


def confusion_matrix(
    pred: np.ndarray,
    target: np.ndarray,
    num_classes: int,
    ignore_index: int | None = 255,
) -> np.ndarray:
    """Count (truth, prediction) pixel pairs into a (K, K) int64 matrix.

    Rows are ground truth, columns are prediction. Pixels whose target equals
    ``ignore_index`` are skipped (their prediction is not checked). Any other
    label outside ``[0, num_classes)`` raises ``ValueError`` rather than being
    silently dropped, since that almost always means a label-mapping bug.
    Inputs may have any matching shape (one image or a batch).
    """
    k = _check_num_classes(num_classes)
    pred = np.asarray(pred)
    target = np.asarray(target)
    if pred.shape != target.shape:
        raise ValueError(f"pred shape {pred.shape} != target shape {target.shape}")
    for name, arr in (("pred", pred), ("target", target)):
        if arr.dtype.kind not in "biu":
            raise TypeError(f"{name} must hold integer labels, got dtype {arr.dtype}")
    pred = pred.ravel()
    target = target.ravel()
    if ignore_index is not None:
        keep = target != ignore_index
        if not keep.all():
            pred = pred[keep]
            target = target[keep]
    _check_labels("target", target, k)
    _check_labels("pred", pred, k)
    # Widen before combining: uint8 * K would wrap around.
    flat = target.astype(np.int64) * k + pred.astype(np.int64)
    counts = np.bincount(flat, minlength=k * k)
    return counts.astype(np.int64, copy=False).reshape(k, k)


def _validate_matrix(cm: np.ndarray) -> np.ndarray:
    cm = np.asarray(cm)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1] or cm.shape[0] == 0:
        raise ValueError(f"confusion matrix must be square (K, K) with K >= 1, got {cm.shape}")
    if cm.dtype.kind not in "biu":
        raise TypeError(f"confusion matrix must be integer counts, got dtype {cm.dtype}")
    if cm.size and cm.min() < 0:
        raise ValueError("confusion matrix has negative counts")
    return cm.astype(np.int64, copy=True)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den elementwise, NaN where den == 0 (no warnings)."""
    out = np.full(num.shape, np.nan, dtype=np.float64)
    np.divide(num, den, out=out, where=den > 0)
    return out


def _mean_defined(values: np.ndarray) -> float:
    """Mean over non-NaN entries; NaN when there are none (no warning)."""
    defined = values[~np.isnan(values)]
    return float(defined.mean()) if defined.size else math.nan


def _json_float(x: float) -> float | None:
    return None if math.isnan(x) else float(x)


@dataclass(frozen=True, eq=False)
class SegmentationMetrics:
    """IoU / accuracy per class and their means, from one confusion matrix.

    Classes with no pixels in truth or prediction have NaN IoU and classes with
    no pixels in truth have NaN accuracy; NaNs are left out of the means, so an
    unused class never drags mIoU toward 0 (or 1).
    """

    confusion: np.ndarray
    class_names: tuple[str, ...]
    iou: np.ndarray
    acc: np.ndarray
    present: np.ndarray
    miou: float
    macc: float
    pixel_acc: float

    @classmethod
    def from_confusion(
        cls, cm: np.ndarray, class_names: Sequence[str] | None = None
    ) -> SegmentationMetrics:
        """Derive every metric from ``cm`` (rows truth, columns prediction)."""
        cm = _validate_matrix(cm)
        k = cm.shape[0]
        if class_names is None:
            names = tuple(f"class_{i}" for i in range(k))
        else:
            names = tuple(str(n) for n in class_names)
            if len(names) != k:
                raise ValueError(f"{len(names)} class names for a {k}-class matrix")
            if len(set(names)) != k:
                raise ValueError("class names must be unique (they key to_dict)")
        tp = np.diag(cm)
        in_truth = cm.sum(axis=1)
        in_pred = cm.sum(axis=0)
        union = in_truth + in_pred - tp  # TP + FN + FP
        iou = _ratio(tp, union)
        acc = _ratio(tp, in_truth)
        total = int(cm.sum())
        pixel_acc = float(tp.sum()) / total if total else math.nan
        for arr in (cm, iou, acc):
            arr.setflags(write=False)
        present = union > 0
        present.setflags(write=False)
        return cls(
            confusion=cm,
            class_names=names,
            iou=iou,
            acc=acc,
            present=present,
            miou=_mean_defined(iou),
            macc=_mean_defined(acc),
            pixel_acc=pixel_acc,
        )

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def pixels(self) -> np.ndarray:
        """Ground-truth pixel count per class (row sums)."""
        return self.confusion.sum(axis=1)

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON summary: NaN becomes None, per-class values keyed by name."""
        pixels = self.pixels
        per_class = {
            name: {
                "iou": _json_float(self.iou[i]),
                "acc": _json_float(self.acc[i]),
                "pixels": int(pixels[i]),
                "present": bool(self.present[i]),
            }
            for i, name in enumerate(self.class_names)
        }
        return {
            "miou": _json_float(self.miou),
            "macc": _json_float(self.macc),
            "pixel_acc": _json_float(self.pixel_acc),
            "num_pixels": int(self.confusion.sum()),
            "num_present": int(self.present.sum()),
            "per_class": per_class,
        }

    def format_table(self) -> str:
        """Human-readable per-class table (percentages; '-' means undefined)."""

        def pct(x: float) -> str:
            return "-" if math.isnan(x) else f"{100.0 * x:.2f}"

        pixels = self.pixels
        rows = [
            (name, pct(self.iou[i]), pct(self.acc[i]), str(int(pixels[i])))
            for i, name in enumerate(self.class_names)
        ]
        header = ("class", "IoU %", "Acc %", "pixels")
        widths = [max(len(header[c]), *(len(r[c]) for r in rows)) for c in range(4)]

        def line(cells: Sequence[str]) -> str:
            first = cells[0].ljust(widths[0])
            rest = (cell.rjust(w) for cell, w in zip(cells[1:], widths[1:]))
            return "  ".join([first, *rest]).rstrip()

        rule = "-" * len(line(header))
        out = [line(header), rule, *(line(r) for r in rows), rule]
        n_present = int(self.present.sum())
        out.append(f"mIoU:      {pct(self.miou)}  ({n_present}/{self.num_classes} classes)")
        out.append(f"mAcc:      {pct(self.macc)}")
        out.append(f"pixel acc: {pct(self.pixel_acc)}  ({int(self.confusion.sum())} pixels)")
        return "\n".join(out)


class ConfusionAccumulator:
    """Running confusion matrix; partial accumulators add up exactly.

    Small and picklable (one K x K int64 array plus two ints), so each Ray
    task or train worker can return one and the driver sums them with ``+``,
    ``merge`` or the builtin ``sum``.
    """

    __slots__ = ("num_classes", "ignore_index", "_matrix")
    # Keep numpy from broadcasting `array + accumulator` elementwise.
    __array_ufunc__ = None

    def __init__(self, num_classes: int, ignore_index: int | None = 255) -> None:
        self.num_classes = _check_num_classes(num_classes)
        self.ignore_index = ignore_index
        self._matrix = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)

    @classmethod
    def from_matrix(cls, cm: np.ndarray, ignore_index: int | None = 255) -> ConfusionAccumulator:
        """Wrap an existing matrix, e.g. one shipped back as a bare array."""
        cm = _validate_matrix(cm)
        acc = cls(cm.shape[0], ignore_index)
        acc._matrix = cm
        return acc

    @property
    def matrix(self) -> np.ndarray:
        """A copy of the counts so far (rows truth, columns prediction)."""
        return self._matrix.copy()

    def update(self, pred: np.ndarray, target: np.ndarray) -> ConfusionAccumulator:
        """Add the pixels of one image or batch; returns self for chaining."""
        self._matrix += confusion_matrix(pred, target, self.num_classes, self.ignore_index)
        return self

    def _check_compatible(self, other: object) -> ConfusionAccumulator:
        if not isinstance(other, ConfusionAccumulator):
            raise TypeError(f"cannot merge ConfusionAccumulator with {type(other).__name__}")
        if other.num_classes != self.num_classes:
            raise ValueError(f"num_classes differ: {self.num_classes} vs {other.num_classes}")
        if other.ignore_index != self.ignore_index:
            raise ValueError(f"ignore_index differs: {self.ignore_index} vs {other.ignore_index}")
        return other

    def merge(self, other: ConfusionAccumulator) -> ConfusionAccumulator:
        """Add another accumulator's counts into this one (in place); returns self."""
        self._matrix += self._check_compatible(other)._matrix
        return self

    def copy(self) -> ConfusionAccumulator:
        return ConfusionAccumulator.from_matrix(self._matrix, self.ignore_index)

    def __add__(self, other: ConfusionAccumulator) -> ConfusionAccumulator:
        if not isinstance(other, ConfusionAccumulator):
            return NotImplemented
        return self.copy().merge(other)

    def __radd__(self, other: object) -> ConfusionAccumulator:
        # Lets builtin sum(accumulators) start from 0.
        if isinstance(other, int) and not isinstance(other, bool) and other == 0:
            return self.copy()
        return NotImplemented

    def __iadd__(self, other: ConfusionAccumulator) -> ConfusionAccumulator:
        if not isinstance(other, ConfusionAccumulator):
            return NotImplemented
        return self.merge(other)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ConfusionAccumulator):
            return NotImplemented
        return (
            self.num_classes == other.num_classes
            and self.ignore_index == other.ignore_index
            and bool(np.array_equal(self._matrix, other._matrix))
        )

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __getstate__(self) -> tuple[int, int | None, np.ndarray]:
        return (self.num_classes, self.ignore_index, self._matrix)

    def __setstate__(self, state: tuple[int, int | None, np.ndarray]) -> None:
        self.num_classes, self.ignore_index, self._matrix = state

    def __repr__(self) -> str:
        return (
            f"ConfusionAccumulator(num_classes={self.num_classes}, "
            f"ignore_index={self.ignore_index}, pixels={int(self._matrix.sum())})"
        )

    def metrics(self, class_names: Sequence[str] | None = None) -> SegmentationMetrics:
        """Metrics for everything accumulated so far."""
        return SegmentationMetrics.from_confusion(self._matrix, class_names)
