"""PSPNet: Zhao, Shi, Qi, Wang, Jia. Pyramid Scene Parsing Network. CVPR 2017, arXiv:1612.01105.

Mechanism: a dilated ResNet (output stride 8) feeds the *pyramid pooling module*:
the last feature map (C channels) is average-pooled to N grids of bins (1x1, 2x2,
3x3, 6x6), each pooled map is reduced to C/N channels by a 1x1 conv + BN + ReLU,
bilinearly upsampled back to the feature map's size and concatenated with the
features themselves (2C channels). A 3x3 conv (512) + BN + ReLU, dropout 0.1 and a
1x1 classifier give the logits, which are bilinearly upsampled to the input size.
Training adds a deep-supervision loss on the stage-3 (``layer3``) features through
a small FCN head (3x3 conv 256 + BN + ReLU, dropout, 1x1), weighted 0.4; the head
only runs in training.

Deviations: the paper's ResNets have a deep stem (three 3x3 convs); we use
torchvision's (one 7x7 conv) so that torchvision ImageNet weights load. Bilinear
resizing uses ``align_corners=True`` like the authors' PyTorch code (hszhao/semseg),
whose aux head width (256) and Dropout2d we follow as well. Both 1x1 classifiers start
from N(0, 0.01) weights (see ``common.init_classifier``).

Example:

>>> import torch
>>> net = PSPNetModule(in_channels=3, num_classes=2, depth=18, head_channels=16).eval()
>>> net(torch.zeros(1, 3, 64, 48)).shape
torch.Size([1, 2, 64, 48])
>>> [t.shape[1] for t in net.train()(torch.zeros(2, 3, 64, 48))]
[2, 2]
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from raysegment_backbones import resnet
from raysegment_context.common import conv_bn_relu, init_classifier, resize

__all__ = ["PyramidPooling", "PSPNetModule"]


class PyramidPooling(nn.Module):
    """The pyramid pooling module: ``len(bins)`` pooled, reduced, upsampled levels concatenated with the input.

    Each level reduces C to ``C // len(bins)`` channels, so with 4 levels the
    pooled context has as many channels as the input (the paper's 1/N rule).
    """

    def __init__(self, in_channels: int, bins: Sequence[int] = (1, 2, 3, 6), align_corners: bool = True) -> None:
        super().__init__()
        if not bins or any(int(b) < 1 for b in bins):
            raise ValueError(f"bins must be positive ints, got {tuple(bins)}")
        self.bins = tuple(int(b) for b in bins)
        self.reduced_channels = in_channels // len(self.bins)
        if self.reduced_channels < 1:
            raise ValueError(f"{in_channels} channels cannot be split over {len(self.bins)} pyramid levels")
        self.levels = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(b), *conv_bn_relu(in_channels, self.reduced_channels, 1))
            for b in self.bins
        )
        self.in_channels = in_channels
        self.out_channels = in_channels + self.reduced_channels * len(self.bins)
        self.align_corners = align_corners

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        return torch.cat([x] + [resize(level(x), size, self.align_corners) for level in self.levels], dim=1)


def _classifier(in_channels: int, width: int, num_classes: int, dropout: float) -> nn.Sequential:
    """3x3 conv-BN-ReLU, dropout, 1x1 conv: the shape of both the main and the auxiliary head."""
    return nn.Sequential(
        *conv_bn_relu(in_channels, width, 3),
        nn.Dropout2d(dropout),
        init_classifier(nn.Conv2d(width, num_classes, kernel_size=1)),
    )


class PSPNetModule(nn.Module):
    """Dilated ResNet + pyramid pooling + classifier; (main, aux) logits in training, main logits in eval.

    ``depth`` is the ResNet depth; ``head_channels`` the width of the 3x3 conv after
    the pyramid (512 in the paper); the auxiliary head has half of it (256).
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 21,
        depth: int = 101,
        bins: Sequence[int] = (1, 2, 3, 6),
        head_channels: int = 512,
        dropout: float = 0.1,
        output_stride: int = 8,
        backbone_weights: str = "",
    ) -> None:
        super().__init__()
        self.backbone = resnet(depth, in_channels=in_channels, output_stride=output_stride, weights=backbone_weights)
        channels = self.backbone.channels
        self.ppm = PyramidPooling(channels["layer4"], bins)
        self.head = _classifier(self.ppm.out_channels, head_channels, num_classes, dropout)
        self.aux_head = _classifier(channels["layer3"], max(1, head_channels // 2), num_classes, dropout)
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """(B, C, H, W) -> logits (B, K, H, W); in training mode also the stage-3 auxiliary logits."""
        size = x.shape[-2:]
        feats = self.backbone(x)
        main = resize(self.head(self.ppm(feats["layer4"])), size, True)
        if not self.training:
            return main
        return main, resize(self.aux_head(feats["layer3"]), size, True)
