"""The 3D U-Net of Çiçek, Abdulkadir, Lienkamp, Brox and Ronneberger, "3D U-Net: Learning Dense
Volumetric Segmentation from Sparse Annotation", MICCAI 2016, LNCS 9901, arXiv:1606.06650.

Mechanism: the U-Net with every operation made volumetric. Analysis path: per level two
3x3x3 conv-BN-ReLU, the *first* keeping and the second doubling the width (so channels double
before each 2x2x2 max-pool, which avoids bottlenecks): 32/64, 64/128, 128/256, bottom 256/512.
Synthesis path: a 2x2x2 stride-2 up-convolution (keeping the width), concatenation with the
analysis map of that level, two 3x3x3 conv-BN-ReLU, and a final 1x1x1 conv to the classes.

Deviations. The paper uses valid (unpadded) convolutions, so its output (44^3 voxels for a
132^3 input) is smaller than the input and skips are cropped. Here every 3x3x3 conv uses
``padding=1`` ('same'), so logits have the padded input's D, H and W and no cropping is
needed; depth, height and width must be multiples of ``2**depth``. The parameter count does
not depend on padding. The paper's 19,069,955 parameters (3 input channels, 3 classes) are
all conv weights, a bias per 3x3x3 and 1x1x1 conv and no BN parameters (Caffe's BatchNorm
layer learns none); we drop the 2,336 biases of the convs that BN follows (BN's shift makes
them redundant) and count BN's scale and shift (2 x 2,336): 19,072,291 = paper + 2,336.

Registered as the model ``unet3d`` (:class:`raysegment_unet.plugin.UNet3D`), which runs it
on 3D sliding windows of NIfTI volumes.

Example:

>>> import torch
>>> net = UNet3d(in_channels=1, num_classes=2, depth=2, base_channels=4)
>>> net(torch.zeros(1, 1, 8, 16, 12)).shape
torch.Size([1, 2, 8, 16, 12])
"""

from __future__ import annotations

import torch
from torch import nn

from raysegment_unet.skeleton import UNetSkeleton, check_positive

__all__ = ["AnalysisBlock", "UNet3d", "validate_config"]

#: The paper's count for its network (3 input channels, 3 classes).
PAPER_PARAMETERS = 19_069_955


def validate_config(in_channels: int, num_classes: int, depth: int, base_channels: int) -> None:
    """Reject impossible configurations before any layer is allocated (``ValueError`` naming the parameter)."""
    check_positive(in_channels=in_channels, num_classes=num_classes, depth=depth, base_channels=base_channels)


class AnalysisBlock(nn.Sequential):
    """Two 3x3x3 conv-BN-ReLU: ``in -> mid -> out`` (the analysis path has ``out = 2 * mid``)."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int) -> None:
        layers: list[nn.Module] = []
        for c_in, c_out in ((in_channels, mid_channels), (mid_channels, out_channels)):
            layers += [nn.Conv3d(c_in, c_out, kernel_size=3, padding=1, bias=False), nn.BatchNorm3d(c_out),
                       nn.ReLU(inplace=True)]
        super().__init__(*layers)
        self.in_channels, self.mid_channels, self.out_channels = in_channels, mid_channels, out_channels


class UNet3d(UNetSkeleton):
    """3D U-Net with ``depth`` max-pooling steps; ``depth=3, base_channels=32`` is the paper's network.

    Analysis level ``i`` convolves to ``base * 2**i`` then ``base * 2**(i+1)`` channels; the
    bottom (level ``depth``) to ``base * 2**depth`` then ``base * 2**(depth+1)``. Input
    (B, C, D, H, W) with D, H, W multiples of :attr:`size_divisor`.
    """

    spatial_dims = 3

    def __init__(self, in_channels: int = 3, num_classes: int = 3, depth: int = 3, base_channels: int = 32) -> None:
        validate_config(in_channels, num_classes, depth, base_channels)
        super().__init__(in_channels, num_classes, depth)

        self.encoders = nn.ModuleList()
        c_in = in_channels
        for level in range(depth):
            mid = base_channels * 2**level
            self.encoders.append(AnalysisBlock(c_in, mid, 2 * mid))
            c_in = 2 * mid
        self.pool = nn.MaxPool3d(kernel_size=2, stride=2)
        bottom_mid = base_channels * 2**depth
        self.bottom = AnalysisBlock(c_in, bottom_mid, 2 * bottom_mid)

        # Synthesis path, deepest first: the up-conv keeps the width, the concatenation adds the skip's.
        self.upconvs = nn.ModuleList()
        self.decoders = nn.ModuleList()
        width = 2 * bottom_mid
        for level in range(depth - 1, -1, -1):
            skip = self.encoders[level].out_channels
            self.upconvs.append(nn.ConvTranspose3d(width, width, kernel_size=2, stride=2, bias=False))
            self.decoders.append(AnalysisBlock(width + skip, skip, skip))
            width = skip
        self.head = nn.Conv3d(width, num_classes, kernel_size=1)
        self.reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_channels, D, H, W) -> logits (B, num_classes, D, H, W)."""
        if x.ndim != 5:
            raise ValueError(f"expected a (B, C, D, H, W) volume batch, got shape {tuple(x.shape)}")
        return super().forward(x)
