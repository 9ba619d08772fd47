"""The 2D U-Net of Ronneberger, Fischer and Brox (2015), arXiv:1505.04597.

This is the "padded convolutions" variant: every 3x3 convolution uses
``padding=1``, so the output logits have the input's height and width and no
overlap-tile cropping is needed. Everything else follows the paper: two 3x3
conv + ReLU per level, 2x2 max-pooling with channels doubling on the way down,
2x2 up-convolutions halving channels on the way up, concatenation with the
matching contracting-path feature map, and a final 1x1 convolution.

Example:

>>> import torch
>>> net = UNet2d(in_channels=3, num_classes=2, depth=2, base_channels=8)
>>> net.size_divisor
4
>>> net(torch.zeros(1, 3, 64, 48)).shape
torch.Size([1, 2, 64, 48])
"""

from __future__ import annotations

import torch
from torch import nn

from raysegment_unet.skeleton import UNetSkeleton, check_positive

__all__ = ["DoubleConv", "UNet2d", "validate_config"]


def validate_config(
    in_channels: int,
    num_classes: int,
    depth: int,
    base_channels: int,
    dropout: float,
) -> None:
    """Reject impossible configurations up front, before any layer is allocated.

    Raises ``ValueError`` naming the parameter so that callers (the plugin) can
    pass the message on to users unchanged.
    """
    check_positive(in_channels=in_channels, num_classes=num_classes, depth=depth, base_channels=base_channels)
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"parameter 'dropout' must be in [0, 1), got {dropout!r}")


class DoubleConv(nn.Sequential):
    """Two 3x3 conv + ReLU, the building block of every U-Net level.

    With ``batch_norm`` the convolutions drop their bias: BatchNorm's shift
    makes it redundant.
    """

    def __init__(self, in_channels: int, out_channels: int, batch_norm: bool = False) -> None:
        layers: list[nn.Module] = []
        for c_in in (in_channels, out_channels):
            layers.append(nn.Conv2d(c_in, out_channels, kernel_size=3, padding=1, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm2d(out_channels))
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)
        self.in_channels = in_channels
        self.out_channels = out_channels


class UNet2d(UNetSkeleton):
    """U-Net with ``depth`` pooling steps, i.e. ``depth + 1`` resolution levels.

    Level ``i`` has ``base_channels * 2**i`` feature channels; the defaults
    (``depth=4``, ``base_channels=64``) are the paper's network. Input height
    and width must be multiples of :attr:`size_divisor` (``2**depth``) so that
    every up-convolution lands exactly on its skip connection's size.

    ``dropout`` is applied at the end of the contracting path (after the
    bottleneck), where the paper places it. Weights use the paper's He
    initialisation (Gaussian, std ``sqrt(2 / fan_in)``).
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 2,
        depth: int = 4,
        base_channels: int = 64,
        batch_norm: bool = False,
        dropout: float = 0.0,
    ) -> None:
        validate_config(in_channels, num_classes, depth, base_channels, dropout)
        super().__init__(in_channels, num_classes, depth)
        self.base_channels = base_channels

        widths = [base_channels * 2**i for i in range(depth + 1)]
        self.encoders = nn.ModuleList()
        c_in = in_channels
        for width in widths[:-1]:
            self.encoders.append(DoubleConv(c_in, width, batch_norm))
            c_in = width
        self.pool = nn.MaxPool2d(kernel_size=2, stride=2)
        self.bottleneck = DoubleConv(widths[-2], widths[-1], batch_norm)
        self.dropout: nn.Module = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

        # Expanding path, deepest first: up-conv halves channels, then the
        # concatenation with the skip doubles them again for the DoubleConv.
        self.upconvs = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for i in range(depth, 0, -1):
            self.upconvs.append(nn.ConvTranspose2d(widths[i], widths[i - 1], kernel_size=2, stride=2))
            self.decoders.append(DoubleConv(2 * widths[i - 1], widths[i - 1], batch_norm))
        self.head = nn.Conv2d(widths[0], num_classes, kernel_size=1)
        self.reset_parameters()

    def middle(self, x: torch.Tensor) -> torch.Tensor:
        """The bottleneck, then the paper's dropout."""
        return self.dropout(self.bottleneck(x))
