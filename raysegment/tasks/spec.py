"""What a task is to the pipeline, and the table of task specs.

Built-in specs are named in :data:`TASKS` and imported on first use; a new task
is one module with its spec plus :func:`register_task` (or a line in the table).
A capability a task does not have (``tiled_merge`` or ``metric`` left ``None``)
fails in one line naming the task, where it is asked for.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np
import torch

from raysegment.plugin.contract import Prediction, SegmentationModel, Task
from raysegment.table import Table

__all__ = ["TaskSpec", "TaskError", "PredictionError", "MetricAccumulator", "TiledMerger", "TASKS", "register_task", "task_spec"]


class TaskError(ValueError):
    """A task has no spec, or its spec lacks what was asked of it (one line)."""


class PredictionError(ValueError):
    """A plugin's prediction breaks its task's rules (type, shape, counts)."""


class MetricAccumulator(Protocol):
    """A metric that shards and workers compute apart and combine exactly."""

    def update(self, pred: np.ndarray, target: np.ndarray) -> Any: ...

    def merge(self, other: Any) -> Any: ...

    def metrics(self, class_names: Sequence[str] | None = None) -> Any: ...


class TiledMerger(Protocol):
    """Fan-in of one scene's windows (MONAI's Merger): ``aggregate`` and ``skip`` hand back finished strips.

    :class:`~raysegment.tiling.merge.StripMerger` is the semantic task's; windows arrive in any order.
    """

    def aggregate(self, window: Any, values: np.ndarray, valid: np.ndarray | None = None) -> list[Any]: ...

    def skip(self, window: Any) -> list[Any]: ...

    def finalize(self) -> list[Any]: ...


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """Everything the pipeline dispatches on for one task."""

    task: Task
    #: Prediction classes ``postprocess`` may return for this task.
    prediction_types: tuple[type, ...]
    #: ``(prediction, spatial, hook) -> description``; raises :class:`PredictionError`.
    check_prediction: Callable[[Prediction, tuple[int, ...], str], str]
    #: ``(prediction, class_names) -> segments`` of the output row (COCO RLE).
    segments: Callable[[Prediction, Sequence[str]], list[dict[str, Any]]]
    #: ``(model, decoded ground-truth mask) -> training target``; None: the task cannot train yet.
    target: Callable[[SegmentationModel, np.ndarray], np.ndarray] | None = None
    #: ``(model, output, target) -> loss``: what ``SegmentationModel.loss`` is when not overridden.
    default_loss: Callable[[SegmentationModel, Any, torch.Tensor], torch.Tensor] | None = None
    #: ``(num_classes, ignore_index) -> accumulator`` with ``update``, ``merge``, ``metrics``.
    metric: Callable[[int, int], MetricAccumulator] | None = None
    #: ``(metric result) -> {"val_...": value}``: an epoch's validation fields in ``metrics.jsonl``
    #: and ``ray.train.report`` (nested dicts are flattened as ``key/sub``).
    validation_report: Callable[[Any], dict[str, Any]] | None = None
    #: ``(--select text or None, label names) -> the flat report field`` that picks the best
    #: checkpoint (higher is better); a bad text is a one-line ``ValueError``.
    select: Callable[[str | None, Sequence[str]], str] | None = None
    #: ``(output row) -> prediction`` that ``metric`` compares with a decoded ground-truth mask
    #: (semantic: the row's label map); None: ``raysegment eval`` cannot score this task.
    row_prediction: Callable[[Mapping[str, Any]], np.ndarray] | None = None
    #: ``(plan, model, blend mode, margin) -> merger`` for one scene's windows (semantic: blended
    #: logits); None: no tiled path for this task.
    tiled_merge: Callable[[Any, SegmentationModel, str, tuple[int, ...]], TiledMerger] | None = None
    #: Keys ``reduce`` must return, with their checks (the conformance kit runs them).
    check_reduced: Callable[[SegmentationModel, dict[str, torch.Tensor], tuple[int, ...]], None] | None = None

    def require(self, capability: str, doing: str) -> Any:
        """The spec's ``capability``, or a one-line :class:`TaskError` saying the task cannot do ``doing``."""
        value = getattr(self, capability)
        if value is None:
            raise TaskError(f"{doing} is not available for {self.task.value} models (no {capability} in its task spec)")
        return value


def _task_text(key: object) -> str:
    return getattr(key, "value", str(key))


#: Task -> spec. Instance masks encode today; their metric, training target and merge come with
#: the instance-segmentation work.
TASKS: Table[TaskSpec] = Table(
    "task spec",
    {
        Task.SEMANTIC: "raysegment.tasks.semantic:SEMANTIC",
        Task.INSTANCE: "raysegment.tasks.instance:INSTANCE",
    },
    describe=_task_text,
)


def register_task(spec: TaskSpec) -> None:
    """Add the spec of a task that has none yet; a second spec for one task is an error."""
    TASKS.register(spec.task, spec)


def task_spec(task: Task | str) -> TaskSpec:
    """The spec of ``task``; a task without one fails in one line listing those that have one."""
    task = Task(task)
    spec = TASKS.get(task)
    if spec is None:
        known = ", ".join(_task_text(k) for k in TASKS.keys())
        raise TaskError(f"no task spec for {task.value} models yet (tasks with one: {known})")
    return spec
