"""The ``pspnet``, ``refinenet`` and ``danet`` model plugins: the modules behind the raysegment contract.

PSPNet and DANet train with auxiliary outputs: their modules return a tuple
``(main, aux...)`` in training mode and the main logits alone in eval mode; the
contract's loss (``SegmentationModel.loss`` and ``raysegment train --loss``) adds
the auxiliary terms with :attr:`aux_loss_weights`.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from raysegment.plugin import Modality, Param, SegmentationModel, Task
from raysegment_context.common import BACKBONES, backbone_depth
from raysegment_context.danet import DANetModule
from raysegment_context.pspnet import PSPNetModule
from raysegment_context.refinenet import RefineNetModule

__all__ = ["PSPNet", "RefineNet", "DANet", "parse_bins"]

_VOC = "output classes (default 21: PASCAL VOC's 20 classes + background)"
#: the two dilated models' own parameters
_OUTPUT_STRIDE = Param("output_stride", int, 8, help="backbone output stride (8 in the paper)", choices=(8, 16))
_DROPOUT = Param("dropout", float, 0.1, help="dropout before the classifiers, in [0, 1)")


def _common_params(default_backbone: str) -> tuple[Param, ...]:
    return (
        Param("in_channels", int, 3, help="input bands (3 for RGB; any count, RGB weights are expanded)"),
        Param("num_classes", int, 21, help=_VOC),
        Param("backbone", str, default_backbone, help="torchvision ResNet body", choices=tuple(BACKBONES)),
        Param("backbone_weights", str, "", loads_weights=True,
              help="ImageNet weights of the ResNet (torchvision key names): a path, an fsspec URL or a "
                   "torchvision enum name such as ResNet101_Weights.IMAGENET1K_V1 (local hub cache only)"),
        Param("class_names", str, "", help="comma-separated class names; empty means class_0, class_1, ..."),
    )


def parse_bins(text: str) -> tuple[int, ...]:
    """``"1,2,3,6"`` -> (1, 2, 3, 6); a ValueError naming the parameter otherwise."""
    try:
        bins = tuple(int(b) for b in str(text).split(",") if b.strip())
    except ValueError:
        raise ValueError(f"parameter 'bins' must be comma-separated positive ints, got {text!r}") from None
    if not bins or any(b < 1 for b in bins):
        raise ValueError(f"parameter 'bins' must be comma-separated positive ints, got {text!r}")
    return bins


def _positive(params: dict[str, Any], *names: str) -> None:
    for name in names:
        if params[name] < 1:
            raise ValueError(f"parameter {name!r} must be >= 1, got {params[name]!r}")


def _dropout(params: dict[str, Any]) -> None:
    if not 0.0 <= params["dropout"] < 1.0:
        raise ValueError(f"parameter 'dropout' must be in [0, 1), got {params['dropout']!r}")


class _ContextModel(SegmentationModel):
    """What the three plugins share: the ResNet backbone parameters, the checks of the parameters
    they have in common (``dropout``, ``aux_weight``, ``output_stride``), the stride and padding, and
    the auxiliary-loss weights. The base class's loss adds the auxiliary outputs with
    :attr:`aux_loss_weights` (and so does ``raysegment train``)."""

    task = Task.SEMANTIC
    modality = Modality.IMAGE
    #: auxiliary outputs the module returns after the main logits in training mode, each weighted
    #: by the ``aux_weight`` parameter
    aux_heads: ClassVar[int] = 0

    def validate(self) -> None:
        """The family's checks; each model adds its own after ``super().validate()``."""
        super().validate()
        _positive(self.params, "in_channels", "num_classes")
        if "dropout" in self.params:
            _dropout(self.params)
        if "aux_weight" in self.params and self.params["aux_weight"] < 0:
            raise ValueError(f"parameter 'aux_weight' must be >= 0, got {self.params['aux_weight']!r}")

    @property
    def depth(self) -> int:
        return backbone_depth(self.params["backbone"])

    @property
    def output_stride(self) -> int:
        """The dilated backbone's ``output_stride`` parameter; 32 for a plain (undilated) ResNet."""
        return int(self.params.get("output_stride", 32))

    @property
    def size_divisor(self) -> int:
        """The backbone's output stride: its coarsest stage then tiles the input exactly."""
        return self.output_stride

    @property
    def aux_loss_weights(self) -> tuple[float, ...]:
        """Weights of the auxiliary outputs the module returns after the main logits in training mode."""
        return (float(self.params["aux_weight"]),) * self.aux_heads if self.aux_heads else ()

    def backbone_kwargs(self) -> dict[str, Any]:
        """The module arguments every model here takes."""
        p = self.params
        return {"in_channels": p["in_channels"], "num_classes": p["num_classes"], "depth": self.depth,
                "backbone_weights": p["backbone_weights"]}

    def reduce(self, output: Any) -> dict[str, torch.Tensor]:
        """As the base, on the main logits should a training-mode tuple arrive."""
        return super().reduce(output[0] if isinstance(output, (tuple, list)) else output)


class PSPNet(_ContextModel):
    """Pyramid Scene Parsing Network on a dilated ResNet, with the stage-3 auxiliary loss (weight 0.4)."""

    summary = "PSPNet (Zhao et al. 2017): dilated ResNet + pyramid pooling module (bins 1, 2, 3, 6)."
    paper = (
        "H. Zhao, J. Shi, X. Qi, X. Wang, J. Jia. Pyramid Scene Parsing Network. "
        "CVPR 2017, pp. 2881-2890. arXiv:1612.01105"
    )
    params = _common_params("resnet101") + (
        _OUTPUT_STRIDE,
        Param("bins", str, "1,2,3,6", help="pyramid pooling bin counts; each level reduces C to C/levels"),
        Param("head_channels", int, 512, help="width of the 3x3 conv after the pyramid; the aux head has half"),
        _DROPOUT,
        Param("aux_weight", float, 0.4, help="weight of the stage-3 auxiliary loss in training"),
    )
    paper_parameters: ClassVar[float | None] = None
    parameter_note: ClassVar[str] = (
        "The paper gives no parameter count. Our default (ResNet-101, torchvision stem, 21 classes) counts "
        "the auxiliary head (about 2.4M), which is used in training only."
    )
    smoke_params: ClassVar[dict[str, Any]] = {
        "backbone": "resnet18", "in_channels": 1, "num_classes": 2, "head_channels": 32,
    }

    aux_heads = 1

    def validate(self) -> None:
        super().validate()
        parse_bins(self.params["bins"])
        _positive(self.params, "head_channels")

    def build(self) -> nn.Module:
        p = self.params
        return PSPNetModule(**self.backbone_kwargs(), bins=parse_bins(p["bins"]), head_channels=p["head_channels"],
                            dropout=p["dropout"], output_stride=p["output_stride"])


class RefineNet(_ContextModel):
    """Multi-path 4-cascaded RefineNet on a plain (undilated) ResNet."""

    summary = "RefineNet (Lin et al. 2017): 4-cascaded multi-path refinement (RCU, fusion, chained pooling)."
    paper = (
        "G. Lin, A. Milan, C. Shen, I. Reid. RefineNet: Multi-Path Refinement Networks for High-Resolution "
        "Semantic Segmentation. CVPR 2017, pp. 1925-1934. arXiv:1611.06612"
    )
    params = _common_params("resnet101") + (
        Param("width", int, 256, help="channels of the 1/4..1/16 paths (256 in the paper); the 1/32 path has 2x"),
        Param("crp_blocks", int, 2, help="pool+conv blocks in each chained residual pooling (paper 2, code 4)"),
    )
    paper_parameters: ClassVar[float | None] = None
    parameter_note: ClassVar[str] = (
        "The RefineNet paper gives no parameter count. The authors' released RefineNet-101 has more "
        "(4 CRP blocks, 3 output RCUs per block): Light-Weight RefineNet (arXiv:1810.03272) lists it at 118M; "
        "crp_blocks=4 here gives 118.0M."
    )
    smoke_params: ClassVar[dict[str, Any]] = {"backbone": "resnet18", "in_channels": 1, "num_classes": 2, "width": 8}

    def validate(self) -> None:
        super().validate()
        _positive(self.params, "width", "crp_blocks")

    def build(self) -> nn.Module:
        return RefineNetModule(**self.backbone_kwargs(), width=self.params["width"],
                               crp_blocks=self.params["crp_blocks"])


class DANet(_ContextModel):
    """Dual Attention Network: position and channel attention on a dilated ResNet, branches summed."""

    summary = "DANet (Fu et al. 2019): dilated ResNet + position and channel self-attention, summed."
    paper = (
        "J. Fu, J. Liu, H. Tian, Y. Li, Y. Bao, Z. Fang, H. Lu. Dual Attention Network for Scene "
        "Segmentation. CVPR 2019, pp. 3146-3154. arXiv:1809.02983"
    )
    params = _common_params("resnet101") + (
        _OUTPUT_STRIDE,
        _DROPOUT,
        Param("aux_weight", float, 1.0,
              help="weight of each single-branch (PAM, CAM) loss in training; 1 in the authors' code"),
    )
    paper_parameters: ClassVar[float | None] = None
    parameter_note: ClassVar[str] = (
        "The paper gives no parameter count. Our default (ResNet-101, torchvision stem, 21 classes) counts "
        "the two single-branch classifiers used only in training (about 22k)."
    )
    smoke_params: ClassVar[dict[str, Any]] = {"backbone": "resnet18", "in_channels": 1, "num_classes": 2}

    aux_heads = 2  # the single-branch (PAM, CAM) classifiers

    def build(self) -> nn.Module:
        p = self.params
        return DANetModule(**self.backbone_kwargs(), dropout=p["dropout"], output_stride=p["output_stride"])
