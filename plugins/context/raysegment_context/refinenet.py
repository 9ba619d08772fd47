"""RefineNet: Lin, Milan, Shen, Reid. RefineNet: Multi-Path Refinement Networks for High-Resolution
Semantic Segmentation. CVPR 2017, arXiv:1611.06612.

Mechanism (multi-path, 4-cascaded RefineNet, Sec. 3 and Fig. 2-3): a plain ResNet
(no dilation; features at 1/4, 1/8, 1/16, 1/32) whose stage outputs are refined
coarse-to-fine. RefineNet-4 takes the 1/32 features alone; RefineNet-3..1 take one
ResNet stage plus the previous RefineNet's output. Each RefineNet block has

- adaptive convs: per input path, two residual conv units (RCU: ReLU-conv3x3-ReLU-
  conv3x3 plus identity, no BatchNorm);
- multi-resolution fusion: per path a 3x3 conv to the smallest width among the
  inputs, upsampling to the largest input resolution, summation (one input passes
  through unchanged);
- chained residual pooling (CRP): a ReLU, then a chain of blocks of 5x5 max-pool
  (stride 1) + 3x3 conv, each block fed by the previous one and every block's output
  added to the running sum;
- an output RCU.

Widths are 512 for the 1/32 path and 256 for the others. Two RCUs and a 1x1
classifier follow RefineNet-1 (1/4); logits are bilinearly upsampled to the input.

Deviations and choices: the ResNet stage outputs are first reduced to the path width
by a 3x3 conv (the authors' released models do this; the paper leaves the reduction
implicit). ``crp_blocks`` defaults to the paper's 2 (the released models use 4). The
released models also use 3 output RCUs per block, a 3x3 classifier and dropout; we
follow the paper's text (1 output RCU, a softmax over 1x1 logits). The stem is
torchvision's ResNet stem.

Example:

>>> import torch
>>> net = RefineNetModule(in_channels=3, num_classes=2, depth=18, width=8).eval()
>>> net(torch.zeros(1, 3, 64, 96)).shape
torch.Size([1, 2, 64, 96])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from raysegment_backbones import resnet
from raysegment_context.common import resize

__all__ = ["ResidualConvUnit", "MultiResolutionFusion", "ChainedResidualPooling", "RefineNetBlock",
           "RefineNetModule"]

_STAGES = ("layer1", "layer2", "layer3", "layer4")


def _conv3x3(in_channels: int, out_channels: int, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=bias)


class ResidualConvUnit(nn.Module):
    """RCU: ``x + conv(relu(conv(relu(x))))``, the ResNet unit without BatchNorm."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = _conv3x3(channels, channels)
        self.conv2 = _conv3x3(channels, channels)
        self.relu = nn.ReLU()  # not in place: the identity path needs the unactivated input

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(self.relu(self.conv1(self.relu(x))))


class MultiResolutionFusion(nn.Module):
    """3x3 conv of every path to the smallest input width, upsampling to the largest resolution, sum.

    With a single path the input passes through unchanged (RefineNet-4).
    """

    def __init__(self, in_channels: Sequence[int], align_corners: bool = False) -> None:
        super().__init__()
        self.out_channels = min(in_channels)
        self.convs = nn.ModuleList(
            [] if len(in_channels) == 1 else [_conv3x3(c, self.out_channels, bias=False) for c in in_channels]
        )
        self.align_corners = align_corners

    def forward(self, xs: Sequence[torch.Tensor]) -> torch.Tensor:
        if not self.convs:
            return xs[0]
        size = max((x.shape[-2:] for x in xs), key=lambda s: s[0] * s[1])
        out = None
        for conv, x in zip(self.convs, xs):
            y = resize(conv(x), size, self.align_corners)
            out = y if out is None else out + y
        return out


class ChainedResidualPooling(nn.Module):
    """ReLU, then ``blocks`` chained (5x5 max-pool stride 1 -> 3x3 conv) blocks, each added to the sum."""

    def __init__(self, channels: int, blocks: int = 2) -> None:
        super().__init__()
        if blocks < 1:
            raise ValueError(f"chained residual pooling needs at least 1 block, got {blocks}")
        self.relu = nn.ReLU()
        self.pools = nn.ModuleList(nn.MaxPool2d(kernel_size=5, stride=1, padding=2) for _ in range(blocks))
        self.convs = nn.ModuleList(_conv3x3(channels, channels, bias=False) for _ in range(blocks))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(x)
        out, path = x, x
        for pool, conv in zip(self.pools, self.convs):
            path = conv(pool(path))
            out = out + path
        return out


class RefineNetBlock(nn.Module):
    """One RefineNet: adaptive RCUs per input, multi-resolution fusion, chained residual pooling, output RCU."""

    def __init__(self, in_channels: Sequence[int], crp_blocks: int = 2, adaptive_rcus: int = 2) -> None:
        super().__init__()
        self.adaptive = nn.ModuleList(
            nn.Sequential(*(ResidualConvUnit(c) for _ in range(adaptive_rcus))) for c in in_channels
        )
        self.fusion = MultiResolutionFusion(in_channels)
        self.out_channels = self.fusion.out_channels
        self.crp = ChainedResidualPooling(self.out_channels, crp_blocks)
        self.output = ResidualConvUnit(self.out_channels)

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        paths = [adapt(x) for adapt, x in zip(self.adaptive, xs)]
        return self.output(self.crp(self.fusion(paths)))


class RefineNetModule(nn.Module):
    """4-cascaded multi-path RefineNet on a ResNet: logits (B, K, H, W), H and W multiples of 32.

    ``width`` is the path width of RefineNet-1..3 (256 in the paper); the 1/32 path
    (RefineNet-4) has twice that (512).
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 21,
        depth: int = 101,
        width: int = 256,
        crp_blocks: int = 2,
        backbone_weights: str = "",
    ) -> None:
        super().__init__()
        self.backbone = resnet(depth, in_channels=in_channels, output_stride=32, weights=backbone_weights)
        widths = {"layer1": width, "layer2": width, "layer3": width, "layer4": 2 * width}
        # Stage output -> path width, 3x3 conv without bias as in the released models.
        self.reduce = nn.ModuleDict({s: _conv3x3(self.backbone.channels[s], widths[s], bias=False) for s in _STAGES})
        self.refine4 = RefineNetBlock([widths["layer4"]], crp_blocks)
        self.refine3 = RefineNetBlock([widths["layer3"], self.refine4.out_channels], crp_blocks)
        self.refine2 = RefineNetBlock([widths["layer2"], self.refine3.out_channels], crp_blocks)
        self.refine1 = RefineNetBlock([widths["layer1"], self.refine2.out_channels], crp_blocks)
        self.final = nn.Sequential(ResidualConvUnit(width), ResidualConvUnit(width))
        self.classifier = nn.Conv2d(width, num_classes, kernel_size=1)
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> logits (B, K, H, W); the prediction is made at 1/4 and upsampled."""
        h, w = x.shape[-2:]
        if h % 32 or w % 32:
            raise ValueError(f"input size {int(h)}x{int(w)} is not a multiple of 32; pad it first")
        feats = self.backbone(x)
        f = {s: self.reduce[s](feats[s]) for s in _STAGES}
        y = self.refine4(f["layer4"])
        y = self.refine3(f["layer3"], y)
        y = self.refine2(f["layer2"], y)
        y = self.refine1(f["layer1"], y)
        return resize(self.classifier(self.final(y)), (h, w), False)
