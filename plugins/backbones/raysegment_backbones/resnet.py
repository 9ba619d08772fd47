"""A torchvision ResNet as a feature extractor, with atrous (dilated) stages and multi-grid rates.

DeepLab (Chen et al. 2015-2018), PSPNet and DANet keep feature maps large by
removing the stride of the last stages and dilating their 3x3 convolutions
instead, so the receptive field is unchanged while the output stride drops from
32 to 16 or 8. DeepLab-v3 further multiplies the rates of the last stage's units
by a "multi-grid" (e.g. 1, 2, 4). torchvision's ``replace_stride_with_dilation``
does the first for Bottleneck ResNets only, and not the second, so the
conversion is done here on the built module, for BasicBlock and Bottleneck
alike.

Module names match torchvision's (``conv1``, ``bn1``, ``layer1`` ... ``layer4``;
no ``fc``), so torchvision ImageNet state dicts load as they are.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torchvision.models import resnet as tv_resnet

__all__ = ["RESNET_DEPTHS", "ResNetBackbone", "resnet"]

RESNET_DEPTHS: dict[int, str] = {18: "resnet18", 34: "resnet34", 50: "resnet50", 101: "resnet101", 152: "resnet152"}
_STAGES = ("layer1", "layer2", "layer3", "layer4")


class ResNetBackbone(nn.Module):
    """Features of every stage: ``{"stem", "layer1", ..., "layer4"}`` with known channels and strides."""

    def __init__(self, depth: int = 50, *, in_channels: int = 3, output_stride: int = 32,
                 multi_grid: Sequence[int] = (1, 1, 1)) -> None:
        super().__init__()
        if depth not in RESNET_DEPTHS:
            raise ValueError(f"resnet depth must be one of {sorted(RESNET_DEPTHS)}, got {depth}")
        if output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
        if in_channels < 1:
            raise ValueError(f"in_channels must be positive, got {in_channels}")
        if not multi_grid or any(int(g) < 1 for g in multi_grid):
            raise ValueError(f"multi_grid must be positive rates, got {tuple(multi_grid)}")
        net = getattr(tv_resnet, RESNET_DEPTHS[depth])(weights=None)
        if in_channels != 3:
            net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.depth = depth
        self.output_stride = output_stride
        # Dilation per stage: OS 16 dilates layer4 by 2; OS 8 dilates layer3 by 2 and layer4 by 4.
        rates = {"layer3": 2 if output_stride == 8 else 1, "layer4": {8: 4, 16: 2, 32: 1}[output_stride]}
        _atrous(self.layer3, rates["layer3"], (1,))
        _atrous(self.layer4, rates["layer4"], tuple(int(g) for g in multi_grid))
        self.multi_grid = tuple(int(g) for g in multi_grid)
        expansion = 4 if depth >= 50 else 1
        self.channels: dict[str, int] = {"stem": 64, **{s: 64 * 2**i * expansion for i, s in enumerate(_STAGES)}}
        self.strides: dict[str, int] = {
            "stem": 4, "layer1": 4, "layer2": 8,
            "layer3": min(16, output_stride), "layer4": output_stride,
        }

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {"stem": self.maxpool(self.relu(self.bn1(self.conv1(x))))}
        feat = out["stem"]
        for name in _STAGES:
            feat = getattr(self, name)(feat)
            out[name] = feat
        return out


def _atrous(stage: nn.Sequential, rate: int, grid: tuple[int, ...]) -> None:
    """Turn a strided stage into a dilated one: stride 1, 3x3 dilation ``rate * grid[i]`` in unit i."""
    if rate == 1 and all(g == 1 for g in grid):
        return
    for i, block in enumerate(stage):
        dilation = rate * grid[i % len(grid)]
        for conv in block.modules():
            if isinstance(conv, nn.Conv2d) and conv.kernel_size == (3, 3):
                conv.dilation, conv.padding = (dilation, dilation), (dilation, dilation)
        if rate > 1 and i == 0:
            for conv in block.modules():
                if isinstance(conv, nn.Conv2d) and conv.stride == (2, 2):
                    conv.stride = (1, 1)


def resnet(depth: int, *, in_channels: int = 3, output_stride: int = 32, multi_grid: Sequence[int] = (1, 1, 1),
           weights: str = "") -> ResNetBackbone:
    """Build a :class:`ResNetBackbone` and load ``weights`` (path, fsspec URL or torchvision enum name) into it."""
    body = ResNetBackbone(depth, in_channels=in_channels, output_stride=output_stride, multi_grid=multi_grid)
    if weights:
        from raysegment.weights import load_pretrained, read_state_dict

        load_pretrained(body, read_state_dict(weights), source=weights, first_conv="conv1.weight", skip=("fc.",))
    return body
