"""Instance masks: N scored, possibly overlapping masks, each with a class.

What exists today, moved here: the kit's prediction checks and the encoding of
each mask as one segment. Training targets, the metric and tiled merging arrive
with the instance-segmentation models; until then asking for them fails in one line.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from raysegment.masks.rle import segments_from_prediction
from raysegment.plugin.contract import InstancePrediction, Prediction, SemanticPrediction, Task
from raysegment.tasks.semantic import check_semantic_prediction
from raysegment.tasks.spec import PredictionError, TaskSpec

__all__ = ["INSTANCE", "check_instance_prediction"]


def check_instance_prediction(pred: Prediction, spatial: tuple[int, ...], hook: str) -> str:
    """(N, *spatial) masks with N labels and N scores (a semantic map is accepted too)."""
    if isinstance(pred, SemanticPrediction):
        return check_semantic_prediction(pred, spatial, hook)
    if not isinstance(pred, InstancePrediction):
        raise PredictionError(f"{hook} returned {type(pred).__name__}, expected InstancePrediction")
    shape = np.shape(pred.masks)
    if not (len(shape) == 1 + len(spatial) and shape[1:] == spatial):
        raise PredictionError(f"{hook} gave masks of shape {shape}, expected (N, {', '.join(map(str, spatial))})")
    if not len(pred.labels) == len(pred.scores) == shape[0]:
        raise PredictionError(
            f"{hook} gave {shape[0]} masks, {len(pred.labels)} labels and {len(pred.scores)} scores")
    return f"{shape[0]} masks {shape[1:]}"


def _segments(pred: Prediction, class_names: Sequence[str]) -> list[dict[str, Any]]:
    return segments_from_prediction(pred, class_names)


INSTANCE = TaskSpec(
    task=Task.INSTANCE,
    prediction_types=(InstancePrediction, SemanticPrediction),
    check_prediction=check_instance_prediction,
    segments=_segments,
)
