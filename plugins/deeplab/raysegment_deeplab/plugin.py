"""The DeepLab model plugins (``deeplabv1``, ``deeplabv2``, ``deeplabv3``, ``deeplabv3plus``).

All four share one base class: its parameters, validation, and the optional
dense-CRF post-processing of DeepLab v1/v2 (also allowed on v3/v3+). With
``crf`` off the hooks are the base class defaults (arg-max labels and their
softmax confidence). With ``crf`` on, ``forward`` keeps the input next to the
logits, ``reduce`` ships the softmax probabilities (float16) and the image
(uint8) off the device, and ``postprocess`` runs mean-field inference per item
on the CPU. Architectures are imported lazily, in ``build()``: every process
imports every plugin, and only some build one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from raysegment.plugin import Modality, Param, ParamError, SegmentationModel, SemanticPrediction, Task
from raysegment_deeplab.crf import CRF_EXTRA, crf_available, dense_crf

__all__ = ["DeepLabV1", "DeepLabV2", "DeepLabV3", "DeepLabV3Plus", "RESNETS"]

RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101")
_CRF_KERNEL = ("crf_bilateral_weight", "crf_theta_alpha", "crf_theta_beta", "crf_gaussian_weight", "crf_theta_gamma")


def _crf_params(w1: float, theta_alpha: float, theta_beta: float, w2: float, theta_gamma: float,
                where: str) -> tuple[Param, ...]:
    return (
        Param("crf", bool, False, help=f"dense-CRF post-processing (needs the {CRF_EXTRA} extra)"),
        Param("crf_iterations", int, 10, help="mean-field iterations of the dense CRF"),
        Param("crf_bilateral_weight", float, w1, help=f"w1, weight of the bilateral (appearance) kernel; {where}"),
        Param("crf_theta_alpha", float, theta_alpha, help="theta_alpha, bilateral spatial std (pixels)"),
        Param("crf_theta_beta", float, theta_beta, help="theta_beta, bilateral intensity std (0..255)"),
        Param("crf_gaussian_weight", float, w2, help="w2, weight of the spatial smoothness kernel"),
        Param("crf_theta_gamma", float, theta_gamma, help="theta_gamma, smoothness spatial std (pixels)"),
    )


_BASE = (
    Param("in_channels", int, 3, help="input bands (3 for RGB; others adapt pretrained RGB first-conv weights)"),
    Param("num_classes", int, 21, help="output classes (21 = PASCAL VOC 2012)"),
    Param("class_names", str, "", help="comma-separated class names; empty means class_0, class_1, ..."),
)


def _weights_param(what: str) -> Param:
    return Param("backbone_weights", str, "", loads_weights=True,
                 help=f"{what} state dict: path, fsspec URL or torchvision weight-enum name (local hub cache only)")


def _parse_grid(text: str) -> tuple[int, ...]:
    try:
        grid = tuple(int(g) for g in str(text).split(","))
    except ValueError:
        raise ParamError(f"multi_grid must be comma-separated positive ints, got {text!r}") from None
    if not grid or any(g < 1 for g in grid):
        raise ParamError(f"multi_grid must be comma-separated positive ints, got {text!r}")
    return grid


class _DeepLab(SegmentationModel):
    """Shared parameters, validation and the CRF path of every DeepLab plugin."""

    task = Task.SEMANTIC
    modality = Modality.IMAGE

    def validate(self) -> None:
        """The family's checks; each model adds its own after ``super().validate()``."""
        super().validate()
        p = self.params
        if p["in_channels"] < 1:
            raise ParamError(f"in_channels must be positive, got {p['in_channels']}")
        if p["num_classes"] < 1:
            raise ParamError(f"num_classes must be positive, got {p['num_classes']}")
        if "dropout" in p and not 0.0 <= p["dropout"] < 1.0:
            raise ParamError(f"dropout must be in [0, 1), got {p['dropout']}")
        if p["crf_iterations"] < 1:
            raise ParamError(f"crf_iterations must be positive, got {p['crf_iterations']}")
        for name in _CRF_KERNEL:
            if p[name] < 0 or (name.startswith("crf_theta") and p[name] == 0):
                raise ParamError(f"{name} must be {'positive' if 'theta' in name else 'non-negative'}, got {p[name]}")
        if p["crf"]:
            if p["num_classes"] < 2:
                raise ParamError("crf needs num_classes >= 2 (softmax probabilities)")
            if not crf_available():
                raise ParamError(f"crf=True needs pydensecrf2: pip install '{CRF_EXTRA}'")


    @property
    def output_stride(self) -> int:
        return int(self.params["output_stride"])

    @property
    def size_divisor(self) -> int:
        """Inputs padded to the output stride keep every feature map aligned with the input grid."""
        return self.output_stride

    def _resnet(self, multi_grid: tuple[int, ...] = (1, 1, 1)) -> nn.Module:
        from raysegment_backbones import resnet

        p = self.params
        return resnet(int(p["backbone"].removeprefix("resnet")), in_channels=p["in_channels"],
                      output_stride=self.output_stride, multi_grid=multi_grid, weights=p["backbone_weights"])

    # -- inference: the CRF path ----------------------------------------------------------
    def forward(self, module: nn.Module, batch: torch.Tensor) -> Any:
        logits = module(batch)
        if self.params["crf"] and not module.training:
            return {"logits": logits, "image": batch}
        return logits

    def reduce(self, output: Any) -> dict[str, torch.Tensor]:
        if not isinstance(output, Mapping):
            return super().reduce(output)
        probs = torch.softmax(output["logits"].float(), dim=1)
        labels = probs.argmax(dim=1).to(torch.uint8 if probs.shape[1] <= 256 else torch.int32)
        return {"labels": labels, "probs": probs.half(), "image": image_uint8(output["image"])}

    def postprocess(self, reduced: Mapping[str, np.ndarray], sample_meta: Mapping[str, Any]) -> SemanticPrediction:
        if "probs" not in reduced:
            return super().postprocess(reduced, sample_meta)  # type: ignore[return-value]
        h, w = int(sample_meta["height"]), int(sample_meta["width"])
        p = self.params
        q = dense_crf(
            reduced["probs"][:, :h, :w].astype(np.float32), np.ascontiguousarray(reduced["image"][:h, :w]),
            iterations=p["crf_iterations"], bilateral_weight=p["crf_bilateral_weight"],
            theta_alpha=p["crf_theta_alpha"], theta_beta=p["crf_theta_beta"],
            gaussian_weight=p["crf_gaussian_weight"], theta_gamma=p["crf_theta_gamma"],
        )
        labels = q.argmax(axis=0).astype(np.uint8 if q.shape[0] <= 256 else np.int32)
        return SemanticPrediction(labels=labels, confidence=q.max(axis=0))

    def loss(self, output: Any, target: torch.Tensor) -> torch.Tensor:
        if isinstance(output, Mapping):
            output = output["logits"]
        return super().loss(output, target)


def image_uint8(batch: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) preprocessed input -> (B, H, W, C) uint8 for the CRF's bilateral kernel.

    Items within [0, 1] (the default preprocessing of integer data) are scaled
    by 255, back to 8-bit intensities; other items are min-max stretched.
    """
    x = batch.detach().float()
    flat = x.flatten(1)
    lo, hi = flat.amin(dim=1), flat.amax(dim=1)
    unit = (lo >= 0) & (hi <= 1)
    lo = torch.where(unit, torch.zeros_like(lo), lo)
    span = torch.where(unit, torch.ones_like(hi), (hi - lo).clamp_min(1e-12))
    scaled = (x - lo.view(-1, 1, 1, 1)) / span.view(-1, 1, 1, 1) * 255.0
    return scaled.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


# -- the four models -----------------------------------------------------------------------------
class DeepLabV1(_DeepLab):
    """DeepLab-LargeFOV on VGG16, output stride 8, optional dense CRF."""

    summary = "DeepLab-v1 LargeFOV (Chen et al. 2015): atrous VGG16, fc6 3x3 rate 12, OS 8, dense CRF."
    paper = (
        "L.-C. Chen, G. Papandreou, I. Kokkinos, K. Murphy, A. L. Yuille. Semantic Image Segmentation with Deep "
        "Convolutional Nets and Fully Connected CRFs. ICLR 2015. arXiv:1412.7062"
    )
    paper_parameters = 20.5
    parameter_note = ("paper Table 2: DeepLab-LargeFOV 20.5M (21 VOC classes); our default build has 20,505,429 "
                      "(VGG16 convs 14.7M + fc6 4.7M + fc7 1.0M + fc8)")
    smoke_params: ClassVar[dict[str, Any]] = {"in_channels": 1, "num_classes": 2}
    params = (
        *_BASE,
        Param("dropout", float, 0.5, help="dropout after fc6 and fc7 (paper: 0.5)"),
        _weights_param("torchvision VGG16 (fc6/fc7 decimated from classifier.0/3 as in the paper)"),
        *_crf_params(4.0, 121.0, 5.0, 3.0, 3.0, "defaults of the released DeepLab-LargeFOV"),
    )

    @property
    def output_stride(self) -> int:
        return 8

    def build(self) -> nn.Module:
        from raysegment_deeplab.deeplabv1 import DeepLabV1 as Net
        from raysegment_deeplab.deeplabv1 import vgg16_pretrained

        p = self.params
        net = Net(p["in_channels"], p["num_classes"], p["dropout"])
        if p["backbone_weights"]:
            vgg16_pretrained(net, p["backbone_weights"], heads=["head"])
        return net


class DeepLabV2(_DeepLab):
    """Atrous ResNet-101 (or VGG16) at output stride 8 with ASPP-L (four summed class-score branches)."""

    summary = "DeepLab-v2 (Chen et al. 2017): atrous ResNet-101, OS 8, ASPP-L rates 6/12/18/24 summed, dense CRF."
    paper = (
        "L.-C. Chen, G. Papandreou, I. Kokkinos, K. Murphy, A. L. Yuille. DeepLab: Semantic Image Segmentation with "
        "Deep Convolutional Nets, Atrous Convolution, and Fully Connected CRFs. IEEE TPAMI 40(4):834-848, 2018 "
        "(online 2017). arXiv:1606.00915"
    )
    paper_parameters = None
    parameter_note = ("the paper gives no parameter count; our default build (ResNet-101, 21 classes) has "
                      "44,048,532: torchvision ResNet-101 without fc (42.5M) + four 3x3 2048->21 branches (1.5M); "
                      "with backbone=vgg16 37,877,652")
    smoke_params: ClassVar[dict[str, Any]] = {"backbone": "resnet18", "in_channels": 1, "num_classes": 2}
    params = (
        *_BASE,
        Param("backbone", str, "resnet101", choices=(*RESNETS, "vgg16"),
              help="atrous ResNet (single-conv ASPP-L branches) or vgg16 (LargeFOV branches, as in the paper)"),
        Param("output_stride", int, 8, choices=(8, 16), help="backbone output stride (paper: 8; vgg16: 8 only)"),
        Param("dropout", float, 0.5, help="dropout after fc6/fc7 of each branch (vgg16 only; ResNet has none)"),
        _weights_param("torchvision ResNet or VGG16 (per backbone)"),
        *_crf_params(4.0, 67.0, 3.0, 3.0, 1.0, "defaults of the released DeepLab-v2 ResNet-101"),
    )

    def validate(self) -> None:
        super().validate()
        if self.params["backbone"] == "vgg16" and self.params["output_stride"] != 8:
            raise ParamError("backbone vgg16 has output_stride 8 only")

    def build(self) -> nn.Module:
        from raysegment_deeplab.deeplabv1 import vgg16_pretrained
        from raysegment_deeplab.deeplabv2 import DeepLabV2 as Net

        p = self.params
        if p["backbone"] == "vgg16":
            net = Net.vgg16(p["in_channels"], p["num_classes"], p["dropout"])
            if p["backbone_weights"]:
                heads = [f"aspp.branches.{i}" for i in range(len(net.aspp.branches))]
                vgg16_pretrained(net, p["backbone_weights"], heads=heads, features="backbone")
            return net
        return Net.resnet(self._resnet(), p["num_classes"])


class DeepLabV3(_DeepLab):
    """Multi-grid atrous ResNet + ASPP (1x1, three atrous 3x3, image pooling; BN, 256 channels)."""

    summary = "DeepLab-v3 (Chen et al. 2017): multi-grid atrous ResNet-101, OS 16, ASPP with image pooling."
    paper = (
        "L.-C. Chen, G. Papandreou, F. Schroff, H. Adam. Rethinking Atrous Convolution for Semantic Image "
        "Segmentation. arXiv:1706.05587, 2017"
    )
    paper_parameters = None
    parameter_note = ("the paper gives no parameter count; our default build (ResNet-101, 21 classes) has "
                      "58,040,661: torchvision ResNet-101 without fc (42.5M) + ASPP (15.5M) + classifier")
    smoke_params: ClassVar[dict[str, Any]] = {"backbone": "resnet18", "in_channels": 1, "num_classes": 2}
    params = (
        *_BASE,
        Param("backbone", str, "resnet101", choices=RESNETS, help="torchvision ResNet body, dilated"),
        Param("output_stride", int, 16, choices=(8, 16), help="16 (paper's training) or 8; ASPP rates double at 8"),
        Param("multi_grid", str, "1,2,4", help="unit rates of block4, multiplied by its dilation (paper: 1,2,4)"),
        Param("dropout", float, 0.1, help="dropout after the ASPP projection (authors' code: 0.1)"),
        _weights_param("torchvision ResNet"),
        *_crf_params(4.0, 67.0, 3.0, 3.0, 1.0, "not in the v3 paper: DeepLab-v2's values"),
    )

    def validate(self) -> None:
        super().validate()
        _parse_grid(self.params["multi_grid"])

    def build(self) -> nn.Module:
        from raysegment_deeplab.deeplabv3 import DeepLabV3 as Net

        p = self.params
        return Net(self._resnet(_parse_grid(p["multi_grid"])), p["num_classes"], p["dropout"])


class DeepLabV3Plus(DeepLabV3):
    """The v3 encoder with separable atrous convs, plus a decoder fusing 48-channel stride-4 features."""

    summary = "DeepLab-v3+ (Chen et al. 2018): v3 encoder + decoder with stride-4 features, separable atrous convs."
    paper = (
        "L.-C. Chen, Y. Zhu, G. Papandreou, F. Schroff, H. Adam. Encoder-Decoder with Atrous Separable "
        "Convolution for Semantic Image Segmentation. ECCV 2018. arXiv:1802.02611"
    )
    paper_parameters = None
    parameter_note = ("the paper gives no parameter count, and its best backbone is a modified aligned Xception; "
                      "we use torchvision ResNet-101 (also reported in the paper); our default build (21 classes) "
                      "has 45,688,261")
    smoke_params: ClassVar[dict[str, Any]] = {"backbone": "resnet18", "in_channels": 1, "num_classes": 2}

    def build(self) -> nn.Module:
        from raysegment_deeplab.deeplabv3plus import DeepLabV3Plus as Net

        p = self.params
        return Net(self._resnet(_parse_grid(p["multi_grid"])), p["num_classes"], p["dropout"])
