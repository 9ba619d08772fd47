"""What every U-Net variant here shares: He initialisation and the padded-size check."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["he_init", "check_divisible"]


def he_init(module: nn.Module) -> None:
    """He-normal conv weights and zero biases (Ronneberger et al. 2015, Sec. 3); unit BN scale, zero shift."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Conv3d, nn.ConvTranspose3d)):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm3d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def check_divisible(x: torch.Tensor, divisor: int, spatial_dims: int = 2) -> None:
    """Every level halves the size, so inputs must be padded to ``divisor`` (the pipeline does this)."""
    size = tuple(int(s) for s in x.shape[-spatial_dims:])
    if any(s % divisor for s in size):
        raise ValueError(f"input size {'x'.join(map(str, size))} is not a multiple of {divisor} (2**depth); pad it first")
