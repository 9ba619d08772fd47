"""The U-Net skeleton the four variants share: ``depth`` encoder levels whose outputs are kept as
skips, a bottom level, ``depth`` decoder levels that each concatenate one skip, a 1x1 head.

The papers differ in their blocks (plain conv pairs, residual units, dense blocks, 3D conv
pairs) and in how a level goes down and up (max-pooling or a strided conv, a transposed conv or
nearest upsampling), not in how the levels are wired. So the wiring, the padded-size check, the
He initialisation and the parameter checks live here once; each variant builds its own modules,
under the attribute names its checkpoints use, and overrides only the steps that differ from
the default (which is the original U-Net's).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from raysegment_unet.init import check_divisible, he_init

__all__ = ["UNetSkeleton", "check_positive"]


def check_positive(**values: int) -> None:
    """``ValueError`` naming the first parameter below 1, before any layer is allocated.

    The message names the parameter so that the plugin can pass it on to users unchanged.
    """
    for name, value in values.items():
        if value < 1:
            raise ValueError(f"parameter {name!r} must be >= 1, got {value!r}")


class UNetSkeleton(nn.Module):
    """The forward pass of a U-Net; a subclass registers the modules the steps below use.

    The default steps read ``encoders``, ``pool``, ``bottom``, ``upconvs``, ``decoders`` and
    ``head``; a variant whose modules are named or combined otherwise overrides that step.
    Inputs must be multiples of :attr:`size_divisor` (``2**depth``) along every spatial axis, so
    that every upsampled map lands exactly on its skip connection's size.
    """

    #: 2 for images ``(B, C, H, W)``, 3 for volumes ``(B, C, D, H, W)``
    spatial_dims: ClassVar[int] = 2
    #: concatenation order at a decoder level: ``(skip, upsampled)`` as in Ronneberger et al.
    #: 2015, else ``(upsampled, skip)``. The weights of the decoder's first conv depend on it.
    skip_first: ClassVar[bool] = True

    def __init__(self, in_channels: int, num_classes: int, depth: int) -> None:
        super().__init__()
        self.in_channels, self.num_classes, self.depth = in_channels, num_classes, depth

    @property
    def size_divisor(self) -> int:
        """Spatial multiple the input's sides must have: every level halves them."""
        return 2**self.depth

    def reset_parameters(self) -> None:
        """He-normal convs (ReLU networks; Ronneberger et al. 2015, Sec. 3), unit BN scale, zero shifts and biases."""
        he_init(self)

    # -- the steps, in the order forward takes them ---------------------------------------
    def stem_step(self, x: torch.Tensor) -> torch.Tensor:
        """Before the first encoder level: nothing by default."""
        return x

    def encode(self, level: int, x: torch.Tensor) -> torch.Tensor:
        """Encoder level ``level`` (0 = finest); its output is that level's skip."""
        return self.encoders[level](x)

    def down(self, x: torch.Tensor) -> torch.Tensor:
        """From a skip to the next coarser level's input."""
        return self.pool(x)

    def middle(self, x: torch.Tensor) -> torch.Tensor:
        """The coarsest level, which has no skip."""
        return self.bottom(x)

    def up(self, step: int, x: torch.Tensor) -> torch.Tensor:
        """Decoder step ``step`` (0 = deepest) upsamples 2x onto its skip's size."""
        return self.upconvs[step](x)

    def decode(self, step: int, x: torch.Tensor) -> torch.Tensor:
        """Decoder step ``step`` on the concatenation of its skip and the upsampled map."""
        return self.decoders[step](x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_channels, *spatial) -> logits (B, num_classes, *spatial)."""
        check_divisible(x, self.size_divisor, self.spatial_dims)
        x = self.stem_step(x)
        skips: list[torch.Tensor] = []
        for level in range(self.depth):
            x = self.encode(level, x)
            skips.append(x)
            x = self.down(x)
        x = self.middle(x)
        for step, skip in enumerate(reversed(skips)):
            upsampled = self.up(step, x)
            x = self.decode(step, torch.cat([skip, upsampled] if self.skip_first else [upsampled, skip], dim=1))
        return self.head(x)
