"""Pieces the three context models share: a conv-BN-ReLU, bilinear resizing and backbone names.

Kept apart so that each architecture module holds only its paper's mechanism.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["BACKBONES", "backbone_depth", "conv_bn_relu", "init_classifier", "resize"]

#: Backbone names accepted by the plugins' ``backbone`` parameter, and their ResNet depths.
BACKBONES: dict[str, int] = {"resnet18": 18, "resnet34": 34, "resnet50": 50, "resnet101": 101, "resnet152": 152}


def backbone_depth(name: str) -> int:
    """``"resnet101"`` -> 101; a ValueError that lists the valid names otherwise."""
    if name not in BACKBONES:
        raise ValueError(f"backbone must be one of {list(BACKBONES)}, got {name!r}")
    return BACKBONES[name]


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int = 3) -> nn.Sequential:
    """Conv (no bias: BatchNorm's shift replaces it) + BN + ReLU, 'same' padding."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def resize(x: torch.Tensor, size: tuple[int, int] | torch.Size, align_corners: bool) -> torch.Tensor:
    """Bilinear resize to ``size`` (a no-op when the size already matches)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=align_corners)


def init_classifier(conv: nn.Conv2d, std: float = 0.01) -> nn.Conv2d:
    """N(0, std) weights and zero bias for a final 1x1 classifier (the Caffe-era convention, e.g. DeepLab).

    The first predictions are then near-uniform, and the large early steps of a randomly
    initialised BatchNorm ResNet barely move the logits, so the loss falls from the first
    optimiser step on instead of jumping about.
    """
    nn.init.normal_(conv.weight, std=std)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    return conv
