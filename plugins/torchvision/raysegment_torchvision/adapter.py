"""The shared adapter: one of torchvision's segmentation models behind the raysegment contract.

torchvision's ``torchvision.models.segmentation`` builders (FCN, DeepLabV3,
LR-ASPP) are used as they are, always with ``weights=None`` and
``weights_backbone=None``: these machines never download. What the adapter adds:

- **Any band count.** For ``in_channels != 3`` the backbone's first convolution
  is replaced by one with ``in_channels`` inputs (same kernel, stride, padding,
  torchvision's Kaiming fan-out init); RGB weights are fitted to it by
  :func:`raysegment.weights.load_pretrained` (``first_conv=...``).
- **Weights by name, path or URL.** ``weights`` (the whole model) and
  ``backbone_weights`` (the ImageNet backbone) go through
  :func:`raysegment.weights.read_state_dict`: a file, an fsspec URL, a
  raysegment checkpoint, or a torchvision weight-enum name already in the local
  torch hub cache. Tensors that do not fit fail as one-line
  :class:`raysegment.weights.WeightsError` naming the first of them.
- **The auxiliary loss of torchvision's reference recipe.** The modules return
  ``OrderedDict(out=..., aux=...)``. In training, :meth:`forward` returns the
  contract's ``(out, aux)`` tuple with ``aux_loss_weights = (0.5,)``, so the loss
  (the plugin's and ``raysegment train --loss``) is ``L(out) + 0.5 * L(aux)``
  (``references/segmentation/train.py``); in eval mode it returns the ``out``
  logits only and does not even run the auxiliary head.
- **torchvision's input normalisation** (ImageNet mean/std, as its
  ``SemanticSegmentation`` transforms), extended to any band count: band ``i``
  takes RGB channel ``i mod 3``'s statistics, the way the first conv's kernels
  are copied; a single band takes their average.

The models accept any input size (their heads resize logits to the input with
bilinear interpolation), so ``size_divisor`` is 1, as torchvision evaluates at
arbitrary sizes (e.g. a 520-pixel short side).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from raysegment.plugin import Modality, Param, ParamError, Sample, SegmentationModel, Task
from raysegment.weights import load_pretrained, read_state_dict

__all__ = ["AUX_WEIGHT", "IMAGENET_MEAN", "IMAGENET_STD", "band_statistics", "common_params", "TorchvisionSegmentation"]

#: Weight of the auxiliary head's loss in torchvision's reference training recipe.
AUX_WEIGHT = 0.5
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_ENUM_NAME = re.compile(r"^([A-Za-z][A-Za-z0-9_]*_Weights)\.[A-Za-z0-9_]+$")


def band_statistics(in_channels: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-band mean and std: ImageNet's RGB values, copied cyclically like the first conv's kernels."""
    mean, std = np.asarray(IMAGENET_MEAN, np.float32), np.asarray(IMAGENET_STD, np.float32)
    if in_channels == 1:
        return mean.mean(keepdims=True), std.mean(keepdims=True)
    index = np.arange(in_channels) % 3
    return mean[index], std[index]


def common_params(*, aux: bool) -> tuple[Param, ...]:
    """The parameters every torchvision adapter takes; ``aux`` adds ``aux_loss`` (LR-ASPP has no aux head)."""
    params = [
        Param("in_channels", int, 3, help="input bands; other than 3 replaces the backbone's first conv"),
        Param("num_classes", int, 21, help="output classes (21 = PASCAL VOC with background, as torchvision)"),
    ]
    if aux:
        params.append(Param("aux_loss", bool, False, help="add torchvision's auxiliary FCN head on the "
                            "stride-8 features, trained with loss weight 0.5, unused at inference"))
    params += [
        Param("normalize", bool, True, help="subtract ImageNet mean and divide by std per band after "
              "scaling to [0, 1], as torchvision's transforms (needed for pretrained weights)"),
        Param("class_names", str, "", help="comma-separated class names; empty means class_0, class_1, ..."),
        Param("weights", str, "", loads_weights=True, help="whole-model weights: a path, an fsspec URL, or a "
              "torchvision enum name such as FCN_ResNet50_Weights.COCO_WITH_VOC_LABELS_V1 (local hub cache only)"),
        Param("backbone_weights", str, "", loads_weights=True, help="backbone weights: a path, an fsspec URL, "
              "or a torchvision enum name such as ResNet50_Weights.IMAGENET1K_V1 (local hub cache only)"),
    ]
    return tuple(params)


class TorchvisionSegmentation(SegmentationModel):
    """Base class of the adapters; a subclass sets the builder, the weight enums and where the first conv is."""

    task = Task.SEMANTIC
    modality = Modality.IMAGE
    size_divisor = 1  # any size: the heads resize the logits to the input
    #: ``(num_classes, aux_loss) -> module``, a torchvision builder called with weights=None.
    builder: ClassVar[Callable[[int, bool], nn.Module]]
    #: Names of the torchvision weight enums that ``weights`` and ``backbone_weights`` may name.
    weights_enum: ClassVar[str] = ""
    backbone_enum: ClassVar[str] = ""
    #: Path of the first Conv2d inside ``module.backbone`` (e.g. ``conv1`` for ResNets).
    first_conv: ClassVar[str] = ""

    def validate(self) -> None:
        super().validate()
        p = self.params
        if p["in_channels"] < 1:
            raise ParamError(f"in_channels must be at least 1, got {p['in_channels']}")
        if p["num_classes"] < 1:
            raise ParamError(f"num_classes must be at least 1, got {p['num_classes']}")
        if p["weights"] and p["backbone_weights"]:
            raise ParamError("give weights (the whole model) or backbone_weights, not both")
        for name, family in (("weights", self.weights_enum), ("backbone_weights", self.backbone_enum)):
            match = _ENUM_NAME.match(p[name])
            if match and match.group(1) != family:
                raise ParamError(f"{name} {p[name]!r} are not {family} weights; give {family}.<name>, a path or a URL")

    @property
    def aux_loss(self) -> bool:
        return bool(self.params.get("aux_loss", False))


    # -- inference ---------------------------------------------------------------------
    def preprocess(self, sample: Sample) -> np.ndarray:
        """The base's band check and [0, 1] scaling, then ImageNet mean/std per band (``normalize``)."""
        x = super().preprocess(sample)
        if self.params["normalize"]:
            mean, std = band_statistics(self.in_channels)
            shape = (-1,) + (1,) * (x.ndim - 1)
            x = (x - mean.reshape(shape)) / std.reshape(shape)
        return x.astype(np.float32, copy=False)

    @property
    def aux_loss_weights(self) -> tuple[float, ...]:
        """torchvision's recipe weighs the auxiliary head's loss 0.5, when there is one."""
        return (AUX_WEIGHT,) if self.aux_loss else ()

    def forward(self, module: nn.Module, batch: torch.Tensor) -> Any:
        """Training: ``(out, aux)`` when there is an aux head, else the logits; eval: the ``out`` logits."""
        if module.training:
            result = module(batch)
            return (result["out"], result["aux"]) if "aux" in result else result["out"]
        if getattr(module, "aux_classifier", None) is None:
            return module(batch)["out"]
        # torchvision's _SimpleSegmentationModel.forward without the auxiliary head, which inference ignores.
        features = module.backbone(batch)
        logits = module.classifier(features["out"])
        return F.interpolate(logits, size=batch.shape[-2:], mode="bilinear", align_corners=False)

    # -- model -------------------------------------------------------------------------
    def build(self) -> nn.Module:
        """torchvision's module (no weights), first conv fitted to ``in_channels``, then the given weights."""
        module = type(self).builder(self.num_classes, self.aux_loss)
        if self.in_channels != 3:
            self._replace_first_conv(module)
        if self.params["backbone_weights"]:
            self._load_backbone(module, self.params["backbone_weights"])
        if self.params["weights"]:
            self._load_full(module, self.params["weights"])
        return module

    def _replace_first_conv(self, module: nn.Module) -> None:
        path = f"backbone.{self.first_conv}"
        old = module.get_submodule(path)
        if not isinstance(old, nn.Conv2d):
            raise TypeError(f"{type(self).__name__}.first_conv: {path} is {type(old).__name__}, not Conv2d")
        new = nn.Conv2d(self.in_channels, old.out_channels, old.kernel_size, old.stride, old.padding,
                        old.dilation, old.groups, bias=old.bias is not None)
        nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")  # as torchvision's init
        if new.bias is not None:
            nn.init.zeros_(new.bias)
        parent, _, name = path.rpartition(".")
        setattr(module.get_submodule(parent), name, new)

    def backbone_key(self, key: str) -> str | None:
        """A key of the backbone's classification state_dict -> its key in ``module.backbone`` (None: drop)."""
        return key

    def _load_backbone(self, module: nn.Module, source: str) -> None:
        load_pretrained(module.backbone, read_state_dict(source), source=source,
                        first_conv=f"{self.first_conv}.weight", rename=self.backbone_key)

    def _load_full(self, module: nn.Module, source: str) -> None:
        state = read_state_dict(source)
        has_aux = getattr(module, "aux_classifier", None) is not None
        rename: Callable[[str], str | None] | None = None
        skip: tuple[str, ...] = ()
        if not has_aux:  # torchvision's published weights carry the aux head; without aux_loss it is dropped
            rename = lambda key: None if key.startswith("aux_classifier.") else key  # noqa: E731
        elif not any(k.startswith("aux_classifier.") for k in state):
            skip = ("aux_classifier.",)  # a training-only head the weights lack: it keeps its random init
        load_pretrained(module, state, source=source, first_conv=f"backbone.{self.first_conv}.weight",
                        skip=skip, rename=rename)
