"""The VGG16 convolutional body (Simonyan & Zisserman, arXiv:1409.1556) that FCN and SegNet build on.

Both papers start from ImageNet VGG16, so the body here reproduces torchvision's
``vgg16().features`` / ``vgg16_bn().features`` layer for layer: the same module
indices, hence the same state-dict keys (``features.0.weight`` ...), so that
torchvision weights load without renaming. Two deviations, both off by default:
the first conv takes ``in_channels`` bands (multispectral input), and
``width_divisor`` divides every channel count (64 ... 512) to make tiny test
builds; ``width_divisor=1`` is the paper network.
"""

from __future__ import annotations

from torch import nn

__all__ = ["VGG16_CONFIG", "VGG16_STAGES", "check_width_divisor", "pool_positions", "vgg16_features"]

#: Output channels of the 13 convolutions, "M" = 2x2 max-pool (VGG configuration "D").
VGG16_CONFIG: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M",
)
#: Convolutions per stage (a stage ends with a max-pool).
VGG16_STAGES: tuple[int, ...] = (2, 2, 3, 3, 3)


def check_width_divisor(width_divisor: int) -> None:
    """Every channel count is a multiple of 64, so the divisor must divide 64."""
    if width_divisor < 1 or 64 % width_divisor:
        raise ValueError(f"width_divisor must divide 64 (1, 2, 4, ..., 64), got {width_divisor}")


def vgg16_features(
    in_channels: int = 3,
    *,
    batch_norm: bool = False,
    width_divisor: int = 1,
    return_indices: bool = False,
) -> nn.Sequential:
    """VGG16's 13 convs (+BN) + ReLU and 5 max-pools, indexed exactly like torchvision's ``features``.

    ``return_indices`` makes the pools return their argmax indices (SegNet's unpooling needs them).
    """
    check_width_divisor(width_divisor)
    layers: list[nn.Module] = []
    channels = in_channels
    for item in VGG16_CONFIG:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2, return_indices=return_indices))
            continue
        out = int(item) // width_divisor
        layers.append(nn.Conv2d(channels, out, kernel_size=3, padding=1))
        if batch_norm:
            layers.append(nn.BatchNorm2d(out))
        layers.append(nn.ReLU(inplace=True))
        channels = out
    features = nn.Sequential(*layers)
    for m in features.modules():  # torchvision's VGG initialisation
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return features


def pool_positions(features: nn.Sequential) -> list[int]:
    """Indices of the max-pool modules in ``features`` (stage ends)."""
    return [i for i, m in enumerate(features) if isinstance(m, nn.MaxPool2d)]
