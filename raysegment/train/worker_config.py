"""What every Ray Train worker is told: one frozen, typed value instead of a loose dict.

The driver (:mod:`raysegment.train.training`) builds it once from the user's
:class:`~raysegment.train.training.TrainConfig` and the checked data; Ray ships
it to each worker inside ``train_loop_config`` (documented as a dict, so the
value travels under one key, :data:`KEY`), and
:func:`~raysegment.train.loop.train_loop_per_worker` reads typed fields from it.
A misspelt field is then an ``AttributeError`` on the driver, not a ``KeyError``
inside a worker epochs later.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from raysegment.plugin.spec import ModelSpec

__all__ = ["KEY", "WorkerConfig"]

#: The one key of ``train_loop_config``.
KEY = "raysegment"


@dataclasses.dataclass(frozen=True)
class WorkerConfig:
    """The settings of one training run as the workers need them."""

    spec: ModelSpec  # the model and its resolved parameters
    seed: int
    lr: float
    weight_decay: float
    epochs: int
    batch_size: int  # per worker
    augment: str  # the ``--augment`` spec, parsed by each worker
    label_names: tuple[str, ...]  # names by output label, for the per-class validation scores
    val_rows: tuple[Mapping[str, Any], ...]  # every validation pair; each rank scores its own share
    load_kwargs: Mapping[str, Any]  # ``fn_kwargs`` of :func:`~raysegment.train.data.load_pairs` for validation
    train_index_bound: int  # one past the largest training item index (size of the "seen" vector)
    score: str = "val_miou"  # the flat report field that ranks checkpoints (``--select``)
    loss: str | None = None  # ``--loss``; None: ``plugin.loss``
    class_weights: tuple[float, ...] | None = None
    init_checkpoint: str | None = None  # weights to start from (``--init-checkpoint``)
    storage_options: Mapping[str, Any] | None = None
    run: Any = None  # the :class:`~raysegment.train.run_folder.RunFolder` that rank 0 writes history to
    threads: int | None = None  # torch threads per CPU worker; None: leave torch's choice
    #: ``--window``: a :class:`~raysegment.train.window_plan.WindowPlan`; each rank draws its windows of every
    #: epoch, ``val_rows`` are windows and ``load_kwargs`` those of ``load_windows``. None: whole image pairs.
    windows: Any = None

    def as_loop_config(self) -> dict[str, Any]:
        """``train_loop_config`` for ``TorchTrainer``."""
        return {KEY: self}

    @classmethod
    def from_loop_config(cls, config: Mapping[str, Any]) -> WorkerConfig:
        """The value :meth:`as_loop_config` shipped; anything else is a programming error, said plainly."""
        value = config.get(KEY)
        if not isinstance(value, cls):
            raise TypeError(f"train_loop_config must be WorkerConfig.as_loop_config(), got keys {sorted(config)}")
        return value
