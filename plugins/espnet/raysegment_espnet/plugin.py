"""The ``espnet``, ``espnet_c``, ``espnet_b`` and ``espnet_a`` model plugins (Mehta et al., ECCV 2018).

ESPNet is trained from scratch (no ImageNet backbone), so there is no ``backbone_weights``
parameter: full-model weights come through raysegment's ``--checkpoint``, which also takes
a bare state dict such as the authors' released Cityscapes models (our layer names are theirs).
"""

from __future__ import annotations

from typing import Any, ClassVar

from torch import nn

from raysegment.plugin import Modality, Param, SegmentationModel, Task
from raysegment_espnet.espnet import OUTPUT_STRIDE, ESPNetEncoder, ESPNetWithDecoder, validate_config

__all__ = ["ESPNet", "ESPNetC", "ESPNetB", "ESPNetA"]

PAPER = (
    "S. Mehta, M. Rastegari, A. Caspi, L. Shapiro, H. Hajishirzi. ESPNet: Efficient Spatial Pyramid "
    "of Dilated Convolutions for Semantic Segmentation. ECCV 2018. arXiv:1803.06815"
)


class _ESPNetBase(SegmentationModel):
    """Shared parameters and validation; subclasses pick the network of Fig. 4.

    Preprocessing and loss are the base class's defaults (inputs in [0, 1], pixel-wise
    cross-entropy); the paper's class-weighted loss needs dataset statistics.
    """

    task = Task.SEMANTIC
    modality = Modality.IMAGE
    paper = PAPER
    params = (
        Param("in_channels", int, 3, help="input bands (3 for RGB); the stem conv and input reinforcement use them all"),
        Param("num_classes", int, 20, help="output classes; 20 = the paper's Cityscapes 19 classes + background"),
        Param("p", int, 2, help="alpha_2: ESP modules at level 2 (stride 4); the paper uses 2"),
        Param("q", int, 8, help="alpha_3: ESP modules at level 3 (stride 8); the paper uses 8 (also 3 and 5)"),
        Param("class_names", str, "", help="comma-separated class names; empty means class_0, class_1, ..."),
    )
    smoke_params: ClassVar[dict[str, Any]] = {"in_channels": 1, "num_classes": 2, "p": 1, "q": 1}

    def validate(self) -> None:
        super().validate()
        p = self.params
        validate_config(p["in_channels"], p["num_classes"], p["p"], p["q"])

    @property
    def size_divisor(self) -> int:
        """Three stride-2 steps: inputs are padded to a multiple of 8."""
        return OUTPUT_STRIDE

    @property
    def output_stride(self) -> int:
        """The classifier (and the decoder) start from the level-3 map at 1/8 of the input."""
        return OUTPUT_STRIDE


    def _encoder(self, variant: str) -> ESPNetEncoder:
        p = self.params
        return ESPNetEncoder(p["in_channels"], p["num_classes"], p["p"], p["q"], variant=variant)


class ESPNet(_ESPNetBase):
    """ESPNet: the ESPNet-C encoder plus the light-weight reduce-upsample-merge decoder."""

    summary = "ESPNet (Mehta et al. 2018): ESP modules (dilated spatial pyramid + HFF) with a light decoder."
    paper_parameters = 0.364
    parameter_note = (
        "default build (20 classes, p=2, q=8) has 365,109 parameters, 0.3% above the paper's 0.364M; "
        "its layers mirror the authors' reference code one for one (with 19 classes it would be 363,462)"
    )
    # 5 classes: the decoder's ESP module keeps all 5 dilated branches (it has num_classes channels).
    smoke_params: ClassVar[dict[str, Any]] = {"in_channels": 1, "num_classes": 5, "p": 1, "q": 1}

    def build(self) -> nn.Module:
        p = self.params
        return ESPNetWithDecoder(p["in_channels"], p["num_classes"], p["p"], p["q"])


class ESPNetC(_ESPNetBase):
    """ESPNet-C: the paper's encoder alone, logits bilinearly up-sampled from stride 8."""

    summary = "ESPNet-C (Mehta et al. 2018): ESPNet's encoder with input reinforcement; bilinear 8x output."
    parameter_note = (
        "no paper figure recorded (ablation table not checked); default build (20 classes, p=2, q=8) "
        "has 349,449 parameters (187,529 with q=3, 252,297 with q=5)"
    )

    def build(self) -> nn.Module:
        return self._encoder("c")


class ESPNetB(_ESPNetBase):
    """ESPNet-B (ablation, Fig. 4b): ESPNet-A plus concatenation of strided-ESP and last-ESP outputs."""

    summary = "ESPNet-B (Mehta et al. 2018 ablation): ESPNet-A plus feature sharing within each level."
    parameter_note = "ablation variant; default build (20 classes, p=2, q=8) has 348,384 parameters"

    def build(self) -> nn.Module:
        return self._encoder("b")


class ESPNetA(_ESPNetBase):
    """ESPNet-A (ablation, Fig. 4a): a plain stack of ESP modules and a 1x1 classifier at stride 8."""

    summary = "ESPNet-A (Mehta et al. 2018 ablation): a plain stack of ESP modules, bilinear 8x output."
    parameter_note = "ablation variant; default build (20 classes, p=2, q=8) has 330,272 parameters"

    def build(self) -> nn.Module:
        return self._encoder("a")
