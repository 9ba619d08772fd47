"""The words of the plugin contract: what a model's masks mean (``Task``), what it takes
(``Modality``), a decoded input (``Sample``) and what ``postprocess`` returns.

Kept apart from :mod:`raysegment.plugin.contract` so that the model class there stays one
concept; :mod:`raysegment.plugin` re-exports all of these.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any, Union

import numpy as np

from raysegment.errors import ItemError

__all__ = ["Task", "Modality", "InputError", "Sample", "SemanticPrediction", "InstancePrediction", "Prediction"]


class Task(str, enum.Enum):
    """What a model's masks mean; decides how ``postprocess`` output is encoded."""

    SEMANTIC = "semantic"  # one class per pixel; one segment per class present
    INSTANCE = "instance"  # N scored masks, each with a class
    PANOPTIC = "panoptic"  # instances plus stuff classes, non-overlapping
    SEPARATION = "separation"  # soft masks over a spectrogram (audio sources)


class Modality(str, enum.Enum):
    """What kind of input a model takes; selects the decoder family."""

    IMAGE = "image"  # 2D, (H, W, C) with 1..N bands
    RASTER = "raster"  # georeferenced 2D scenes (tiled)
    VOLUME = "volume"  # 3D, (D, H, W, C)
    AUDIO = "audio"  # waveforms / spectrograms


class InputError(ItemError):
    """An input item that this model cannot take (e.g. wrong band count).

    Raised from ``preprocess``; the pipeline turns it into an error row.
    """


@dataclasses.dataclass
class Sample:
    """A decoded input item, as handed to ``preprocess``.

    ``data`` is channels-last: (H, W, C) for images, (D, H, W, C) for volumes.
    ``meta`` carries modality-specific facts (source dtype, georeferencing, ...).
    """

    data: np.ndarray
    uri: str = ""
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class SemanticPrediction:
    """A dense label map and, optionally, the confidence of each pixel's label."""

    labels: np.ndarray  # (H, W) integer class indices
    confidence: np.ndarray | None = None  # (H, W) float in [0, 1]


@dataclasses.dataclass
class InstancePrediction:
    """Scored, possibly overlapping binary masks (instance or panoptic tasks)."""

    masks: np.ndarray  # (N, H, W) bool
    labels: np.ndarray  # (N,) int
    scores: np.ndarray  # (N,) float


Prediction = Union[SemanticPrediction, InstancePrediction]
