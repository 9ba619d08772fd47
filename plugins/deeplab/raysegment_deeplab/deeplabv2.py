"""DeepLab-v2 (Chen et al., TPAMI 2017, arXiv:1606.00915): atrous ResNet-101 at output stride 8 + ASPP-L.

Mechanism: the backbone's last two stages replace their stride by dilation
(rates 2 and 4, output stride 8), and Atrous Spatial Pyramid Pooling
(ASPP-L) runs four parallel 3x3 atrous branches with rates 6, 12, 18 and 24 on
the same feature map; EACH branch predicts class scores and the four score
maps are SUMMED (no concatenation, no BN). With ResNet each branch is a single
3x3 atrous conv to the classes, as in the released ResNet-101 model; with
VGG16 (``backbone="vgg16"``) each branch is a LargeFOV head
(fc6 3x3 rate r, 1024 -> fc7 1x1, 1024 -> fc8), as in the paper's VGG ASPP-L.
The summed scores are bilinearly upsampled to the input size.

Deviations: torchvision's ResNet-101 (stride in the 3x3 conv, "v1.5") replaces
the Caffe ResNet-101 (stride in the 1x1 conv). The multi-scale input fusion
(MSC, max over scales 1, 0.75, 0.5) and COCO pre-training are not included; the
dense CRF is plugin post-processing (:mod:`raysegment_deeplab.crf`).
At output stride 16 (an option, not the paper's) the rates stay 6/12/18/24.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from raysegment_deeplab.deeplabv1 import LargeFOVHead, vgg16_features

__all__ = ["ASPP_L_RATES", "ASPPL", "DeepLabV2"]

ASPP_L_RATES = (6, 12, 18, 24)


class ASPPL(nn.Module):
    """Parallel atrous branches that each predict class scores; their outputs are summed."""

    def __init__(self, branches: Sequence[nn.Module], rates: Sequence[int]) -> None:
        super().__init__()
        self.branches = nn.ModuleList(branches)
        self.rates = tuple(rates)

    @classmethod
    def single_conv(cls, in_channels: int, num_classes: int, rates: Sequence[int] = ASPP_L_RATES) -> ASPPL:
        """ResNet ASPP-L: one 3x3 atrous conv to the classes per rate (weights N(0, 0.01), as released)."""
        branches = []
        for r in rates:
            conv = nn.Conv2d(in_channels, num_classes, kernel_size=3, padding=r, dilation=r)
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)
            branches.append(conv)
        return cls(branches, rates)

    @classmethod
    def large_fov(cls, in_channels: int, num_classes: int, rates: Sequence[int] = ASPP_L_RATES,
                  dropout: float = 0.5) -> ASPPL:
        """VGG16 ASPP-L: one LargeFOV head (fc6 rate r, fc7, fc8) per rate."""
        return cls([LargeFOVHead(in_channels, num_classes, rate=r, dropout=dropout) for r in rates], rates)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.branches[0](x)
        for branch in self.branches[1:]:
            out = out + branch(x)
        return out


class DeepLabV2(nn.Module):
    """Backbone features -> ASPP-L (summed class scores) -> bilinear upsampling to the input size.

    ``backbone`` is a :class:`raysegment_backbones.ResNetBackbone` (its ``layer4``
    is used) or the dense VGG16 ``features`` of :func:`vgg16_features`.
    """

    def __init__(self, backbone: nn.Module, aspp: ASPPL) -> None:
        super().__init__()
        self.backbone = backbone
        self.aspp = aspp

    @classmethod
    def vgg16(cls, in_channels: int = 3, num_classes: int = 21, dropout: float = 0.5) -> DeepLabV2:
        return cls(vgg16_features(in_channels), ASPPL.large_fov(512, num_classes, dropout=dropout))

    @classmethod
    def resnet(cls, backbone: nn.Module, num_classes: int = 21) -> DeepLabV2:
        return cls(backbone, ASPPL.single_conv(backbone.channels["layer4"], num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.backbone(x)
        if isinstance(feats, dict):
            feats = feats["layer4"]
        return F.interpolate(self.aspp(feats), size=x.shape[-2:], mode="bilinear", align_corners=False)
