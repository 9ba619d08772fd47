"""DeepLab-v3 (Chen et al. 2017, arXiv:1706.05587): multi-grid atrous ResNet + ASPP with image-level features.

Mechanism: the ResNet (default ResNet-101) runs at output stride 16 (block4
dilated by 2) or 8 (block3 by 2, block4 by 4), and block4's three units
multiply their rate by the multi-grid (1, 2, 4). ASPP then applies, in
parallel: a 1x1 conv, three 3x3 atrous convs with rates 6, 12, 18 (doubled to
12, 24, 36 at output stride 8), and image pooling (global average pool -> 1x1
conv -> BN -> ReLU -> bilinear upsampling back to the feature size); every
branch has 256 channels and BN. The five maps are concatenated and projected by
a 1x1 conv (256) + BN, then a 1x1 conv gives the logits, bilinearly upsampled
to the input size.

Deviations: torchvision ResNet (stride in the 3x3 conv). Dropout after the
projection (0.1 by default) follows the authors' TensorFlow code; the paper
does not mention it. :class:`ASPP` also serves DeepLab-v3+, which makes its
atrous branches depthwise-separable (:class:`SeparableConv2d`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ASPP_RATES", "aspp_rates", "conv_bn_relu", "SeparableConv2d", "ImagePooling", "ASPP", "DeepLabV3"]

ASPP_RATES = (6, 12, 18)  # at output stride 16


def aspp_rates(output_stride: int, base: Sequence[int] = ASPP_RATES) -> tuple[int, ...]:
    """The paper's rates at ``output_stride``: (6, 12, 18) at 16, doubled at 8."""
    return tuple(int(r) * 16 // int(output_stride) for r in base)


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int = 1, dilation: int = 1) -> nn.Sequential:
    """Conv (no bias: BN follows) + BN + ReLU, padded to keep the size."""
    pad = dilation * (kernel_size // 2)
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=pad, dilation=dilation, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class SeparableConv2d(nn.Sequential):
    """Atrous depthwise-separable conv (DeepLab-v3+): depthwise 3x3 (dilated) + BN, pointwise 1x1 + BN + ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, dilation: int = 1) -> None:
        pad = dilation * (kernel_size // 2)
        super().__init__(
            nn.Conv2d(in_channels, in_channels, kernel_size, padding=pad, dilation=dilation, groups=in_channels,
                      bias=False),
            nn.BatchNorm2d(in_channels),
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )
        self.dilation = dilation

    @property
    def depthwise(self) -> nn.Conv2d:
        return self[0]

    @property
    def pointwise(self) -> nn.Conv2d:
        return self[2]


class ImagePooling(nn.Module):
    """Image-level features: global average pool -> 1x1 conv -> BN -> ReLU -> upsample to the input size."""

    def __init__(self, in_channels: int, out_channels: int = 256) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.conv = conv_bn_relu(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(self.pool(x))
        return F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)


class ASPP(nn.Module):
    """1x1 + three 3x3 atrous branches + image pooling, concatenated, projected by 1x1 conv + BN + ReLU."""

    def __init__(self, in_channels: int, rates: Sequence[int] = ASPP_RATES, out_channels: int = 256,
                 dropout: float = 0.1, separable: bool = False) -> None:
        super().__init__()
        self.rates = tuple(int(r) for r in rates)
        atrous = [SeparableConv2d(in_channels, out_channels, 3, dilation=r) if separable
                  else conv_bn_relu(in_channels, out_channels, 3, dilation=r) for r in self.rates]
        self.branches = nn.ModuleList([conv_bn_relu(in_channels, out_channels, 1), *atrous,
                                       ImagePooling(in_channels, out_channels)])
        self.project = conv_bn_relu(len(self.branches) * out_channels, out_channels, 1)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.project(torch.cat([b(x) for b in self.branches], dim=1)))


class DeepLabV3(nn.Module):
    """ResNet ``layer4`` -> ASPP -> 1x1 classifier -> bilinear upsampling to the input size."""

    def __init__(self, backbone: nn.Module, num_classes: int = 21, dropout: float = 0.1) -> None:
        super().__init__()
        self.backbone = backbone
        self.aspp = ASPP(backbone.channels["layer4"], aspp_rates(backbone.output_stride), dropout=dropout)
        self.classifier = nn.Conv2d(256, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.classifier(self.aspp(self.backbone(x)["layer4"]))
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
