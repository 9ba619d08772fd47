"""DeepLab-v3+ (Chen et al., ECCV 2018, arXiv:1802.02611): the v3 encoder plus a simple, effective decoder.

Mechanism: the DeepLab-v3 encoder (atrous ResNet at output stride 16 with ASPP
and image pooling) whose 3x3 atrous branches are atrous depthwise-separable
convolutions (depthwise 3x3 dilated + BN, pointwise 1x1 + BN + ReLU). The
decoder upsamples the encoder output bilinearly by 4 (to stride 4), reduces the
low-level stride-4 features (ResNet ``layer1``, the paper's Conv2) with a 1x1
conv to 48 channels (+ BN + ReLU), concatenates the two, refines them with two
3x3 separable convs of 256 channels, predicts classes with a 1x1 conv and
upsamples bilinearly by 4 to the input size.

Deviations: the paper's best backbone is a modified aligned Xception; we use
torchvision ResNet (the paper also reports ResNet-101). At output stride 8 (an
option) the decoder's first upsampling is 2x, as in the paper's OS-8 runs.
Dropout after the ASPP projection (0.1) follows the authors' TensorFlow code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from raysegment_deeplab.deeplabv3 import ASPP, SeparableConv2d, aspp_rates, conv_bn_relu

__all__ = ["LOW_LEVEL_CHANNELS", "Decoder", "DeepLabV3Plus"]

LOW_LEVEL_CHANNELS = 48


class Decoder(nn.Module):
    """Upsampled encoder features + 48-channel low-level projection -> two separable 3x3 convs -> classes."""

    def __init__(self, low_level_channels: int, encoder_channels: int = 256, num_classes: int = 21,
                 width: int = 256) -> None:
        super().__init__()
        self.reduce = conv_bn_relu(low_level_channels, LOW_LEVEL_CHANNELS, 1)
        self.refine = nn.Sequential(
            SeparableConv2d(encoder_channels + LOW_LEVEL_CHANNELS, width, 3),
            SeparableConv2d(width, width, 3),
        )
        self.classifier = nn.Conv2d(width, num_classes, 1)

    def forward(self, encoded: torch.Tensor, low_level: torch.Tensor) -> torch.Tensor:
        up = F.interpolate(encoded, size=low_level.shape[-2:], mode="bilinear", align_corners=False)
        return self.classifier(self.refine(torch.cat([up, self.reduce(low_level)], dim=1)))


class DeepLabV3Plus(nn.Module):
    """ResNet -> separable ASPP (encoder) -> decoder with ``layer1`` features -> logits at the input size."""

    def __init__(self, backbone: nn.Module, num_classes: int = 21, dropout: float = 0.1) -> None:
        super().__init__()
        self.backbone = backbone
        self.aspp = ASPP(backbone.channels["layer4"], aspp_rates(backbone.output_stride), dropout=dropout,
                         separable=True)
        self.decoder = Decoder(backbone.channels["layer1"], 256, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.backbone(x)
        logits = self.decoder(self.aspp(feats["layer4"]), feats["layer1"])
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
