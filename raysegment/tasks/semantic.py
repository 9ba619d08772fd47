"""Semantic segmentation: one class per pixel.

The first task spec, moved out of the places that used to test for it: a
:class:`~raysegment.plugin.SemanticPrediction` at the input's size, one segment
per class present, targets from ``encode_target``, pixel-wise cross-entropy
(plus auxiliary terms), an exact confusion matrix over label maps (in training and
in ``raysegment eval``), and tiled windows merged as blended logits.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from raysegment.criteria.metrics import ConfusionAccumulator, SegmentationMetrics
from raysegment.masks.rle import row_label_map, semantic_segments
from raysegment.plugin.contract import Prediction, SegmentationModel, SemanticPrediction, Task
from raysegment.tasks.spec import PredictionError, TaskSpec
from raysegment.tiling.merge import StripMerger
from raysegment.tiling.plan import TilePlan

__all__ = ["SEMANTIC", "blended_logits", "label_map_of_row", "semantic_report", "semantic_select", "check_semantic_prediction", "check_semantic_reduced", "pixel_loss",
           "semantic_target"]


def _require(condition: Any, message: str) -> None:
    if not condition:
        raise PredictionError(message)


def check_semantic_prediction(pred: Prediction, spatial: tuple[int, ...], hook: str) -> str:
    """Labels (and confidence, if given) of exactly the ``spatial`` size."""
    _require(isinstance(pred, SemanticPrediction), f"{hook} returned {type(pred).__name__}, expected SemanticPrediction")
    shapes = {"labels": np.shape(pred.labels)}
    if pred.confidence is not None:
        shapes["confidence"] = np.shape(pred.confidence)
    for key, shape in shapes.items():
        _require(shape == spatial, f"{hook} gave {key} of shape {shape}, expected {spatial}")
    return f"labels {shapes['labels']}"


def check_semantic_reduced(model: SegmentationModel, reduced: dict[str, torch.Tensor], spatial: tuple[int, ...]) -> None:
    """``reduce`` returns integer ``labels`` of (B, *spatial) inside the model's label range."""
    _require("labels" in reduced, f"reduce() of a semantic model lacks 'labels' (keys: {sorted(reduced)})")
    labels, want = reduced["labels"], (int(next(iter(reduced.values())).shape[0]), *spatial)
    _require(tuple(labels.shape) == want, f"reduce()['labels'] has shape {tuple(labels.shape)}, expected {want}")
    _require(not (labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool),
             f"reduce()['labels'] has dtype {labels.dtype}, expected an integer type")
    lo, hi, bound = int(labels.min()), int(labels.max()), max(model.num_classes, 2)
    _require(0 <= lo and hi < bound, f"reduce()['labels'] spans {lo}..{hi}, outside 0..{bound - 1}")


def semantic_target(model: SegmentationModel, mask: np.ndarray) -> np.ndarray:
    """A decoded label mask -> the plugin's class-index target (its ``encode_target``)."""
    return model.encode_target(mask)


def pixel_loss(model: SegmentationModel, output: Any, target: torch.Tensor) -> torch.Tensor:
    """Softmax cross-entropy per pixel (sigmoid BCE for one class), plus weighted auxiliary outputs.

    This is the contract's own default ``SegmentationModel.loss``: the semantic task's default
    loss and the base class's are one definition.
    """
    return SegmentationModel.loss(model, output, target)


def blended_logits(plan: TilePlan, model: SegmentationModel, mode: str, margin: tuple[int, ...]) -> StripMerger:
    """Tiled windows' logits blended strip by strip (one channel per class); ``reduce`` then labels each strip."""
    return StripMerger(plan, max(1, model.num_classes), mode=mode, margin=margin)


def label_map_of_row(row: Mapping[str, Any]) -> np.ndarray:
    """An output row's (H, W) label map for scoring; pixels no segment covers are class 0.

    Semantic rows tile the image; instance rows scored as label maps leave holes, and "no object
    here" is a background prediction in COCO-style numbering.
    """
    return row_label_map(row, fill=0)


def semantic_report(metrics: SegmentationMetrics) -> dict[str, Any]:
    """An epoch's validation fields: mIoU, foreground mIoU, mAcc, pixel accuracy, pixels, IoU and Dice per class.

    A mean with no labelled pixel behind it (NaN) is reported as 0, so checkpoint ranking stays
    defined; a class with no pixel in prediction or truth has IoU and Dice None.
    """
    per_class = metrics.to_dict()["per_class"]
    iou = {k: v["iou"] for k, v in per_class.items()}
    fg = [v for v in list(iou.values())[1:] if v is not None]
    return {
        "val_miou": _finite(metrics.miou),
        "val_fg_miou": float(np.mean(fg)) if fg else 0.0,  # without class 0 (background)
        "val_macc": _finite(metrics.macc),
        "val_pixel_acc": _finite(metrics.pixel_acc),
        "val_pixels": int(metrics.confusion.sum()),  # every labelled validation pixel, counted once
        "val_iou": iou,
        "val_dice": {k: None if v is None else 2 * v / (1 + v) for k, v in iou.items()},  # Dice = 2 IoU / (1 + IoU)
    }


def semantic_select(text: str | None, label_names: Sequence[str]) -> str:
    """``--select`` -> the report field ranking checkpoints.

    ``miou``, ``fg_miou`` (mean IoU without background), ``iou:<class>`` or ``dice:<class>``.
    The default is the foreground class's IoU for two-class runs (an all-background model can
    win on mIoU when the foreground is rare), else ``miou``.
    """
    names = list(label_names)
    if text is None:
        return f"val_iou/{names[1]}" if len(names) == 2 else "val_miou"
    kind, _, cls = text.strip().partition(":")
    if kind in ("miou", "fg_miou") and not cls:
        return f"val_{kind}"
    if kind in ("iou", "dice") and cls:
        if cls not in names:
            raise ValueError(f"--select {text}: no class {cls!r} (classes: {', '.join(names)})")
        return f"val_{kind}/{cls}"
    raise ValueError(f"--select must be miou, fg_miou, iou:<class> or dice:<class>, got {text!r}")


def _finite(value: float) -> float:
    return float(value) if value == value else 0.0


def _segments(pred: Prediction, class_names: Sequence[str]) -> list[dict[str, Any]]:
    if not isinstance(pred, SemanticPrediction):
        raise PredictionError(f"postprocess returned {type(pred).__name__}, expected SemanticPrediction")
    return semantic_segments(pred, class_names)


SEMANTIC = TaskSpec(
    task=Task.SEMANTIC,
    prediction_types=(SemanticPrediction,),
    check_prediction=check_semantic_prediction,
    segments=_segments,
    target=semantic_target,
    default_loss=pixel_loss,
    metric=ConfusionAccumulator,
    row_prediction=label_map_of_row,
    validation_report=semantic_report,
    select=semantic_select,
    tiled_merge=blended_logits,
    check_reduced=check_semantic_reduced,
)
