"""Deep Residual U-Net (ResUNet) of Zhang, Liu and Wang, "Road Extraction by Deep Residual U-Net",
IEEE GRSL 15(5), 2018, arXiv:1711.10684.

Mechanism: a U-Net whose plain conv blocks are replaced by *pre-activation residual units*
(He et al. 2016): ``x + F(x)`` with ``F = BN-ReLU-conv3x3-BN-ReLU-conv3x3``. The encoder
halves the resolution with a stride-2 first convolution inside a unit, not with pooling:
level 1 stays at full resolution, levels 2..``depth`` and the bridge each start with a
stride-2 conv. Each decoder level upsamples 2x, concatenates the encoder feature map of the
same size and applies one residual unit. A 1x1 convolution gives the logits (the paper's
sigmoid/softmax lives in the loss and in ``reduce``). The defaults are the paper's network
(Table 1: filters 64, 128, 256, 512, 3 input bands, 1 output map, 7 residual units).

Details the paper leaves open, and what we chose:

- The first unit follows the paper's Fig. 3: it starts with the convolution
  (``conv-BN-ReLU-conv``), since BN-ReLU on the raw image would only re-scale and clip it.
- Wherever a unit changes the width or the resolution the shortcut is a (strided) 1x1
  convolution followed by BN; otherwise it is the identity. With the paper's widths every
  unit changes one of them. These projections (0.43M parameters) are the gap between our
  8.2M and the paper's 7.8M, which equals the 3x3 convolutions alone (7.78M).
- Upsampling is nearest-neighbour (parameter-free, as the paper's parameter count implies).
- Biases are dropped before BN and in the residual branches, where BN or the head's bias
  absorbs them.

Example:

>>> import torch
>>> net = ResUNet2d(in_channels=4, num_classes=2, depth=2, base_channels=8)
>>> net.size_divisor
4
>>> net(torch.zeros(1, 4, 32, 24)).shape
torch.Size([1, 2, 32, 24])
"""

from __future__ import annotations

import torch
from torch import nn

from raysegment_unet.skeleton import UNetSkeleton, check_positive

__all__ = ["ResidualUnit", "ResUNet2d", "validate_config"]


def validate_config(in_channels: int, num_classes: int, depth: int, base_channels: int) -> None:
    """Reject impossible configurations before any layer is allocated (``ValueError`` naming the parameter)."""
    check_positive(in_channels=in_channels, num_classes=num_classes, depth=depth, base_channels=base_channels)


def _conv3x3(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel_size=3, stride=stride, padding=1, bias=False)


class ResidualUnit(nn.Module):
    """Pre-activation residual unit: ``shortcut(x) + conv(ReLU(BN(conv(ReLU(BN(x))))))``.

    ``stride=2`` downsamples in the first 3x3 conv (and in the projection shortcut).
    ``preactivate=False`` drops the leading BN-ReLU, for the unit that sees the raw image.
    The shortcut is the identity when neither width nor resolution changes, else a
    strided 1x1 conv + BN, so the sum always has matching shapes.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, preactivate: bool = True) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride
        pre: list[nn.Module] = [nn.BatchNorm2d(in_channels), nn.ReLU(inplace=True)] if preactivate else []
        self.residual = nn.Sequential(
            *pre,
            _conv3x3(in_channels, out_channels, stride),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            _conv3x3(out_channels, out_channels),
        )
        self.shortcut: nn.Module
        if stride == 1 and in_channels == out_channels:
            self.shortcut = nn.Identity()
        else:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shortcut(x) + self.residual(x)


class ResUNet2d(UNetSkeleton):
    """ResUNet with ``depth`` downsampling steps: ``depth`` encoder levels, a bridge, ``depth`` decoder levels.

    Encoder level ``i`` (0-based) and the bridge (``i = depth``) have ``base_channels * 2**i``
    channels; level 0 keeps the input resolution, every later one starts with a stride-2
    conv. ``depth=3, base_channels=64`` is the paper's network. Input height and width must
    be multiples of :attr:`size_divisor` (``2**depth``).
    """

    skip_first = False  # each decoder level concatenates (upsampled, skip)

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 1,
        depth: int = 3,
        base_channels: int = 64,
    ) -> None:
        validate_config(in_channels, num_classes, depth, base_channels)
        super().__init__(in_channels, num_classes, depth)
        widths = [base_channels * 2**i for i in range(depth + 1)]
        self.widths = widths

        self.encoders = nn.ModuleList([ResidualUnit(in_channels, widths[0], stride=1, preactivate=False)])
        for i in range(1, depth):
            self.encoders.append(ResidualUnit(widths[i - 1], widths[i], stride=2))
        self.bridge = ResidualUnit(widths[depth - 1], widths[depth], stride=2)

        # Decoder, deepest first: upsample the coarser map, concatenate the skip, one unit.
        self.upsample = nn.Upsample(scale_factor=2, mode="nearest")
        self.decoders = nn.ModuleList(
            ResidualUnit(widths[i + 1] + widths[i], widths[i]) for i in range(depth - 1, -1, -1)
        )
        self.head = nn.Conv2d(widths[0], num_classes, kernel_size=1)
        self.reset_parameters()

    # -- the steps where the paper differs from the original U-Net --------------------------
    def down(self, x: torch.Tensor) -> torch.Tensor:
        """Nothing: every unit after the first starts with a stride-2 conv."""
        return x

    def middle(self, x: torch.Tensor) -> torch.Tensor:
        return self.bridge(x)

    def up(self, step: int, x: torch.Tensor) -> torch.Tensor:
        """Nearest-neighbour 2x, parameter-free."""
        return self.upsample(x)
