"""The model-plugin contract.

A plugin author subclasses :class:`SegmentationModel`, declares its parameters,
and registers the class under the ``raysegment.models`` entry-point group::

    [project.entry-points."raysegment.models"]
    unet = "raysegment_unet:UNet"

Everything here is plain PyTorch and NumPy: a plugin never touches Ray. The same
class serves inference (``preprocess`` -> ``forward`` -> ``reduce`` ->
``postprocess``) and training (``encode_target`` -> ``loss``), so later
capabilities add loops, not a new contract.

Data flow and where each hook runs:

=================  ==============================  ==========================
hook               runs on                          shapes
=================  ==============================  ==========================
``preprocess``     CPU decode task, per item        Sample -> (C, H, W) float32
``forward``        predictor actor (GPU or CPU)     (B, C, H, W) -> model output
``reduce``         predictor actor, batched         output -> dict of (B, ...) tensors
``postprocess``    CPU encode task, per item        dict of arrays -> Prediction
``encode_target``  CPU data stage (training)        mask (H, W) -> (H, W) int64
``loss``           training worker                  output, target -> scalar
=================  ==============================  ==========================

``reduce`` exists so that large per-class logits never leave the device: the
default keeps only the arg-max label and its softmax confidence.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from raysegment.plugin.params import Param, ParamError
from raysegment.plugin.types import (
    InputError,
    InstancePrediction,
    Modality,
    Prediction,
    Sample,
    SemanticPrediction,
    Task,
)

__all__ = [
    "Task",
    "Modality",
    "Param",
    "ParamError",
    "InputError",
    "Sample",
    "SemanticPrediction",
    "InstancePrediction",
    "Prediction",
    "SegmentationModel",
    "with_aux_losses",
    "class_names_from",
]


def _dtype_scale(dtype: np.dtype) -> float:
    if np.issubdtype(dtype, np.integer):
        return float(np.iinfo(dtype).max)
    return 1.0


class SegmentationModel:
    """Base class for a model plugin. Subclass it and register the subclass.

    Class attributes describe the model; ``params`` must include ``in_channels``
    and ``num_classes`` (every plugin spells them so). An instance holds resolved
    parameter values in ``self.params`` and is cheap: ``build()`` makes the
    ``nn.Module`` only where it is needed (the predictor or a training worker).
    """

    task: ClassVar[Task] = Task.SEMANTIC
    modality: ClassVar[Modality] = Modality.IMAGE
    summary: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    params: ClassVar[tuple[Param, ...]] = ()
    #: Target value ignored by the loss and by metrics.
    ignore_index: ClassVar[int] = 255

    @property
    def size_divisor(self) -> int:
        """Spatial multiple the input is padded to (e.g. ``2**depth`` for a U-Net); 1 means none.

        Override it as a property computed from ``self.params``, or as a plain class attribute;
        the core reads ``plugin.size_divisor`` as it is, and the conformance kit checks it is a
        positive int.
        """
        return 1

    @property
    def output_stride(self) -> int | None:
        """Input size / size of the coarsest feature map the decoder or classifier starts from.

        Usually a property computed from the parameters; None means not stated (the model card
        shows n/a and the kit's stride check falls back to ``size_divisor``).
        """
        return None
    #: Parameter count (millions) the paper reports for its canonical configuration.
    paper_parameters: ClassVar[float | None] = None
    #: Why our default build's count differs from ``paper_parameters``, where it does.
    parameter_note: ClassVar[str] = ""
    #: The smallest configuration that still exercises every part of the architecture; used by
    #: ``raysegment models check``, the end-to-end test over every model, and the docs.
    smoke_params: ClassVar[Mapping[str, Any]] = {}
    #: Default window of tiled sliding-window inference, one size per spatial axis ((H, W), or
    #: (D, H, W) for volumes). None: images run whole unless ``--tile`` is given. Volume models
    #: must set it, since volumes always run tiled (a volume smaller than the tile is one window).
    default_tile: ClassVar[tuple[int, ...] | None] = None
    #: Default overlap of neighbouring windows, pixels per axis; None means a quarter of the tile.
    default_overlap: ClassVar[tuple[int, ...] | None] = None

    REQUIRED_PARAMS: ClassVar[tuple[str, ...]] = ("in_channels", "num_classes")

    def __init__(self, **params: Any) -> None:
        self.params: dict[str, Any] = self.resolve_params(params)
        try:
            self.validate()
        except ParamError:
            raise
        except ValueError as exc:  # a plugin's own checks: one line, as a ParamError
            raise ParamError(str(exc)) from None

    def validate(self) -> None:
        """Check the resolved ``self.params`` together; called once, right after they resolve.

        Bad values fail here, on the driver, not later in a worker. Override it for a model's
        own checks: call ``super().validate()`` first, raise ``ParamError`` or ``ValueError``
        with a one-line message (a ``ValueError`` becomes a ``ParamError``). Plugins need no
        ``__init__``. The base checks that ``class_names`` agrees with ``num_classes``.
        """
        if "class_names" in self.params:
            self.class_names()

    # -- parameters -----------------------------------------------------------------
    @classmethod
    def param_specs(cls) -> dict[str, Param]:
        return {p.name: p for p in cls.params}

    @classmethod
    def resolve_params(cls, given: Mapping[str, Any]) -> dict[str, Any]:
        """Defaults overlaid with ``given``; unknown keys are rejected with the valid list."""
        specs = cls.param_specs()
        unknown = sorted(set(given) - set(specs))
        if unknown:
            valid = ", ".join(f"{p.name} ({p.type.__name__}, default {p.default!r})" for p in cls.params)
            raise ParamError(f"unknown parameter(s) {', '.join(unknown)}; valid: {valid}")
        out = {name: spec.default for name, spec in specs.items()}
        for key, value in given.items():
            out[key] = specs[key].coerce(value)
        return out

    @property
    def in_channels(self) -> int:
        return int(self.params["in_channels"])

    @property
    def num_classes(self) -> int:
        return int(self.params["num_classes"])

    def weight_sources(self) -> dict[str, str]:
        """The non-empty ``loads_weights`` parameters: what ``build()`` will read."""
        return {p.name: str(self.params[p.name]) for p in type(self).params if p.loads_weights and self.params[p.name]}

    # -- description ----------------------------------------------------------------
    def class_names(self) -> tuple[str, ...]:
        """Names of the ``num_classes`` output classes, index-aligned: from a comma-separated
        ``class_names`` parameter where the plugin declares one, else ``class_0``, ``class_1``, ..."""
        return class_names_from(self.params.get("class_names"), self.num_classes)

    # -- model ----------------------------------------------------------------------
    def build(self) -> nn.Module:
        """Make the ``nn.Module`` from ``self.params``, with random weights."""
        raise NotImplementedError

    # -- inference ------------------------------------------------------------------
    def preprocess(self, sample: Sample) -> np.ndarray:
        """Channels-last input -> (C, H, W) float32 on the CPU.

        The default scales integer data by its dtype's maximum to [0, 1] and
        rejects a band count other than ``in_channels``.
        """
        data = sample.data
        if data.ndim == 2:
            data = data[:, :, None]
        bands = data.shape[-1]
        if bands != self.in_channels:
            raise InputError(f"input has {bands} band(s) but the model takes in_channels={self.in_channels}")
        scale = _dtype_scale(data.dtype)
        out = np.ascontiguousarray(np.moveaxis(data, -1, 0), dtype=np.float32)
        if scale != 1.0:
            out *= np.float32(1.0 / scale)
        return out

    def forward(self, module: nn.Module, batch: torch.Tensor) -> Any:
        """Run the module; override when it returns a dict or needs extra inputs."""
        return module(batch)

    def reduce(self, output: Any) -> dict[str, torch.Tensor]:
        """Shrink a batch of model output on its device before it leaves the actor.

        Default for semantic logits (B, K, H, W): ``labels`` (arg-max, or
        threshold 0.5 of the sigmoid when K == 1) and ``confidence`` (the
        chosen label's probability, float16).
        """
        logits = output.float()
        if logits.shape[1] == 1:
            prob = torch.sigmoid(logits[:, 0])
            labels = (prob > 0.5).to(torch.uint8)
            conf = torch.where(labels.bool(), prob, 1.0 - prob)
        else:
            probs = torch.softmax(logits, dim=1)
            conf, labels = probs.max(dim=1)
            labels = labels.to(torch.uint8 if logits.shape[1] <= 256 else torch.int32)
        return {"labels": labels, "confidence": conf.to(torch.float16)}

    def logits(self, output: Any) -> torch.Tensor:
        """The (B, K, *spatial) logits that tiled inference blends across windows.

        The default takes the module's output as it is, or the first element of a
        ``(main, aux...)`` tuple. ``reduce`` later turns the blended logits of each
        finished strip into labels, so a plugin keeps one definition of its masks.
        """
        if isinstance(output, (tuple, list)):
            output = output[0]
        if not isinstance(output, torch.Tensor):
            raise TypeError(f"forward returned {type(output).__name__}; override logits() to pick the logits")
        return output

    def postprocess(self, reduced: Mapping[str, np.ndarray], sample_meta: Mapping[str, Any]) -> Prediction:
        """One item's reduced arrays -> a :data:`Prediction` at the input's size."""
        labels = reduced["labels"]
        h, w = int(sample_meta["height"]), int(sample_meta["width"])
        conf = reduced.get("confidence")
        return SemanticPrediction(
            labels=labels[..., :h, :w],
            confidence=None if conf is None else conf[..., :h, :w].astype(np.float32),
        )

    # -- training -------------------------------------------------------------------
    def encode_target(self, mask: np.ndarray) -> np.ndarray:
        """A decoded label mask (H, W) -> class-index target (H, W) int64.

        Values outside ``[0, num_classes)`` other than ``ignore_index`` are an
        error; a single-class (sigmoid) model takes 0 = background, 1 = foreground.
        """
        target = np.asarray(mask)
        if target.ndim == 3:
            target = target[..., 0]
        return self.check_target_values(target.astype(np.int64))

    def check_target_values(self, target: np.ndarray) -> np.ndarray:
        """Refuse class indices outside ``[0, max(num_classes, 2))`` other than ``ignore_index``."""
        top = max(self.num_classes, 2)
        bad = (target < 0) | ((target >= top) & (target != self.ignore_index))
        if bad.any():
            values = sorted(set(np.unique(target[bad]).tolist()))[:10]
            raise InputError(f"mask holds label values {values} outside 0..{top - 1}")
        return target

    @property
    def aux_loss_weights(self) -> tuple[float, ...]:
        """Weights of the auxiliary outputs a module returns after its main logits in training mode.

        As ``(main, aux_1, ...)`` (PSPNet's stage-3 head, DANet's branches); ``()`` means the
        module returns its logits alone. Each auxiliary output is (B, K, H, W) logits; the
        training loss (``loss`` or ``train --loss``) is applied to every output and summed with
        these weights. In eval mode the module returns the main logits only. Override as a
        property or a class attribute.
        """
        return ()

    def loss(self, output: Any, target: torch.Tensor) -> torch.Tensor:
        """Training loss; what ``raysegment train`` uses unless ``--loss`` is given.

        The default is the semantic task's: pixel-wise softmax cross-entropy (sigmoid BCE for one
        class) plus the weighted auxiliary outputs (:func:`raysegment.tasks.semantic.pixel_loss`
        computes the same). Plugins of other tasks override it.
        """
        return with_aux_losses(output, lambda logits: self._pixel_loss(logits, target), self.aux_loss_weights)

    def _pixel_loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if output.shape[1] == 1:
            valid = target != self.ignore_index
            return nn.functional.binary_cross_entropy_with_logits(
                output[:, 0][valid], target[valid].float()
            )
        return nn.functional.cross_entropy(output, target, ignore_index=self.ignore_index)

    # -- helpers for callers ----------------------------------------------------------
    def example_input(self, height: int = 64, width: int = 64, seed: int = 0) -> Sample:
        """A synthetic sample of this model's modality, for conformance checks."""
        rng = np.random.default_rng(seed)
        if self.modality is Modality.VOLUME:  # (D, H, W, C), depth taken equal to the height
            data = rng.integers(0, 256, size=(height, height, width, self.in_channels), dtype=np.uint8)
            meta = {"depth": height, "height": height, "width": width}
            return Sample(data=data, uri=f"synthetic://{seed}", meta=meta)
        data = rng.integers(0, 256, size=(height, width, self.in_channels), dtype=np.uint8)
        return Sample(data=data, uri=f"synthetic://{seed}", meta={"height": height, "width": width})


def with_aux_losses(output: Any, loss_fn: Callable[[torch.Tensor], torch.Tensor],
                    weights: Sequence[float]) -> torch.Tensor:
    """``loss_fn(main) + sum(w_i * loss_fn(aux_i))`` for an output that is logits or ``(main, aux...)``."""
    if not isinstance(output, (tuple, list)):
        return loss_fn(output)
    main, *aux = output
    if len(aux) != len(weights):
        raise ValueError(f"the module returned {len(aux)} auxiliary output(s) but aux_loss_weights has {len(weights)}")
    total = loss_fn(main)
    for weight, logits in zip(weights, aux):
        total = total + float(weight) * loss_fn(logits)
    return total


def class_names_from(names: Sequence[str] | str | None, num_classes: int) -> tuple[str, ...]:
    """Parse a comma-separated class-name parameter, falling back to generic names."""
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    if not names:
        return tuple(f"class_{i}" for i in range(num_classes))
    if len(names) != num_classes:
        raise ParamError(f"class_names has {len(names)} names but num_classes={num_classes}")
    return tuple(names)
