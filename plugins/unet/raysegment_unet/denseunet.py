"""Fully Dense U-Net (FD-UNet) of Guan, Khan, Sikdar and Chitnis, "Fully Dense UNet for 2-D Sparse
Photoacoustic Tomography Artifact Removal", IEEE JBHI 24(2), 2020, arXiv:1808.10848.

Mechanism: a U-Net with *dense blocks* in both the contracting and the expanding path. In a
dense block every layer sees the concatenation of the block input and all earlier layers'
outputs and adds ``k`` (the growth rate) new feature maps: a 1x1 bottleneck conv to ``4k``
maps, then a 3x3 conv to ``k``, each conv followed by BN and ReLU (the paper's
"Conv, BN, ReLU" composite). The growth rate doubles at every spatial level
(``k_l = k_1 * 2**l``), so with 4 layers per block each block doubles its input width:
the block at level ``l`` takes ``4 k_l`` maps and returns ``8 k_l``. The paper's network:
``k_1 = 16``, 5 spatial levels (128x128 input down to 8x8), widths 128, 256, 512, 1024, 2048.

- Contracting path: 3x3 conv to ``4 k_1`` maps, then per level a dense block, a 1x1
  conv-BN-ReLU (its output is the skip connection) and 2x2 max-pooling.
- Expanding path: 2x2 stride-2 transposed conv halving the width, BN-ReLU, concatenation
  with the skip, a 1x1 conv-BN-ReLU down to ``4 k_l`` maps, and a dense block with the
  same growth rate as the contracting block of that level.
- Head: 1x1 conv.

Deviations. The paper regresses an artifact-free image: its 1x1 conv outputs one channel and
a residual connection adds the input image to it. Here the head outputs ``num_classes``
logits for segmentation, so that input-to-output residual is left out (an image added to
class logits has no meaning, and the band count need not equal the class count). The
bottleneck width is ``4k`` in every dense layer (the paper's block-input width ``F``, which
is ``4k`` throughout its network). Convolutions followed by BN carry no bias.

Example:

>>> import torch
>>> net = DenseUNet2d(in_channels=3, num_classes=2, depth=2, growth_rate=2)
>>> net.size_divisor
4
>>> net(torch.zeros(1, 3, 32, 24)).shape
torch.Size([1, 2, 32, 24])
"""

from __future__ import annotations

import torch
from torch import nn

from raysegment_unet.skeleton import UNetSkeleton, check_positive

__all__ = ["DenseLayer", "DenseBlock", "DenseUNet2d", "validate_config"]


def validate_config(in_channels: int, num_classes: int, depth: int, growth_rate: int, layers_per_block: int) -> None:
    """Reject impossible configurations before any layer is allocated (``ValueError`` naming the parameter)."""
    check_positive(in_channels=in_channels, num_classes=num_classes, depth=depth, growth_rate=growth_rate,
                   layers_per_block=layers_per_block)


def conv_bn_relu(c_in: int, c_out: int, kernel_size: int) -> nn.Sequential:
    """The paper's composite layer: conv (no bias, BN shifts), BN, ReLU."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel_size, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class DenseLayer(nn.Sequential):
    """One dense layer: 1x1 conv to ``4 * growth_rate`` maps, then 3x3 conv to ``growth_rate`` maps."""

    def __init__(self, in_channels: int, growth_rate: int) -> None:
        super().__init__(conv_bn_relu(in_channels, 4 * growth_rate, 1), conv_bn_relu(4 * growth_rate, growth_rate, 3))
        self.in_channels, self.out_channels = in_channels, growth_rate


class DenseBlock(nn.Module):
    """``num_layers`` dense layers; layer ``i`` sees ``in_channels + i * growth_rate`` maps.

    The output is the concatenation of the input and every layer's ``growth_rate`` new maps:
    ``in_channels + num_layers * growth_rate`` channels.
    """

    def __init__(self, in_channels: int, growth_rate: int, num_layers: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(DenseLayer(in_channels + i * growth_rate, growth_rate) for i in range(num_layers))
        self.in_channels, self.growth_rate = in_channels, growth_rate
        self.out_channels = in_channels + num_layers * growth_rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for layer in self.layers:
            features.append(layer(torch.cat(features, dim=1)))
        return torch.cat(features, dim=1)


class DenseUNet2d(UNetSkeleton):
    """FD-UNet with ``depth`` pooling steps (``depth + 1`` spatial levels).

    Level ``l`` (0-based) uses growth rate ``growth_rate * 2**l``. ``depth=4,
    growth_rate=16, layers_per_block=4`` is the paper's network. Input height and width
    must be multiples of :attr:`size_divisor` (``2**depth``).
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 2,
        depth: int = 4,
        growth_rate: int = 16,
        layers_per_block: int = 4,
    ) -> None:
        validate_config(in_channels, num_classes, depth, growth_rate, layers_per_block)
        super().__init__(in_channels, num_classes, depth)
        rates = [growth_rate * 2**level for level in range(depth + 1)]
        self.growth_rates = rates

        self.stem = conv_bn_relu(in_channels, 4 * rates[0], 3)
        self.encoders = nn.ModuleList()
        self.transitions = nn.ModuleList()  # 1x1 conv-BN-ReLU after each contracting block: the skips
        width = 4 * rates[0]
        for level in range(depth):
            block = DenseBlock(width, rates[level], layers_per_block)
            self.encoders.append(block)
            self.transitions.append(conv_bn_relu(block.out_channels, block.out_channels, 1))
            width = block.out_channels
        self.pool = nn.MaxPool2d(kernel_size=2, stride=2)
        self.bottom = DenseBlock(width, rates[depth], layers_per_block)
        width = self.bottom.out_channels

        # Expanding path, deepest first.
        self.upconvs = nn.ModuleList()
        self.reducers = nn.ModuleList()  # 1x1 conv-BN-ReLU: concatenation -> 4 k_l maps
        self.decoders = nn.ModuleList()
        for level in range(depth - 1, -1, -1):
            up = max(width // 2, 1)
            self.upconvs.append(nn.Sequential(
                nn.ConvTranspose2d(width, up, kernel_size=2, stride=2, bias=False),
                nn.BatchNorm2d(up),
                nn.ReLU(inplace=True),
            ))
            skip = self.encoders[level].out_channels
            self.reducers.append(conv_bn_relu(up + skip, 4 * rates[level], 1))
            block = DenseBlock(4 * rates[level], rates[level], layers_per_block)
            self.decoders.append(block)
            width = block.out_channels
        self.head = nn.Conv2d(width, num_classes, kernel_size=1)
        self.reset_parameters()

    # -- the steps where the paper differs from the original U-Net --------------------------
    def stem_step(self, x: torch.Tensor) -> torch.Tensor:
        return self.stem(x)

    def encode(self, level: int, x: torch.Tensor) -> torch.Tensor:
        """Dense block, then the 1x1 transition whose output is the skip."""
        return self.transitions[level](self.encoders[level](x))

    def decode(self, step: int, x: torch.Tensor) -> torch.Tensor:
        """1x1 reduction of the concatenation to ``4 k_l`` maps, then the dense block."""
        return self.decoders[step](self.reducers[step](x))
