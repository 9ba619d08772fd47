"""FCN-32s, FCN-16s and FCN-8s: Long, Shelhamer & Darrell, "Fully Convolutional Networks for Semantic
Segmentation", CVPR 2015 / TPAMI 2017, arXiv:1411.4038.

Mechanism: VGG16 made fully convolutional. fc6 becomes a 7x7 convolution with 4096 channels and fc7 a
1x1 convolution with 4096 channels (each ReLU + dropout 0.5), ``score_fr`` a 1x1 convolution to the
classes (zero-initialised, as in the paper). FCN-32s upsamples these stride-32 scores straight to the
input; FCN-16s adds ``score_pool4`` (1x1 conv on pool4, zero-initialised so training starts from the
coarser net's predictions) to the 2x upsampled scores; FCN-8s also fuses ``score_pool3`` after another
2x upsampling, then upsamples 8x. Every upsampling is a transposed convolution initialised to bilinear
interpolation: the intermediate 2x ones (``upscore2``, ``upscore_pool4``) are full class-to-class
transposed convs initialised to a per-class bilinear kernel and learned, as the paper describes
(``learn_upsampling=False`` freezes them, as the reference Caffe nets do with ``lr_mult: 0``); the
final one (``upscore``) is fixed bilinear in both the paper and the reference, so it is a frozen
depthwise kernel held in a non-persistent buffer (no parameters, not in the state dict).

Deviation: the paper pads conv1_1 by 100 pixels and crops the score maps back into register. Here every
3x3 conv pads by 1 and fc6 (7x7) pads by 3, so for inputs whose H and W are multiples of 32 (the plugin's
``size_divisor``) every stride-s map is exactly (H/s, W/s), each k = 2f, stride f transposed conv pads by
f/2, and the fused maps and the output align with no cropping: logits are exactly (B, K, H, W). A
transposed conv of kernel 2f, stride f, padding f/2 with the bilinear kernel equals
``F.interpolate(scale_factor=f, mode="bilinear", align_corners=False)`` away from the border.
``width_divisor`` (default 1 = the paper) divides every channel count for tiny test builds.

Example:

>>> import torch
>>> net = FCN(in_channels=1, num_classes=2, variant=8, width_divisor=16).eval()
>>> net(torch.zeros(1, 1, 64, 96)).shape
torch.Size([1, 2, 64, 96])
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from raysegment.weights import load_pretrained
from raysegment_classic.vgg import check_width_divisor, pool_positions, vgg16_features

__all__ = [
    "FCN",
    "FixedBilinearUpsample",
    "VARIANTS",
    "bilinear_kernel",
    "fcn_state_dict_from_vgg16",
    "learned_bilinear_upsample",
    "load_vgg16_weights",
]

#: The output stride of the finest fused scores: FCN-32s, FCN-16s, FCN-8s.
VARIANTS: tuple[int, ...] = (32, 16, 8)


def bilinear_kernel(factor: int) -> torch.Tensor:
    """The (2f, 2f) bilinear interpolation kernel of the reference ``upsample_filt`` for an even kernel."""
    size = 2 * factor
    center = factor - 0.5
    ramp = 1.0 - (torch.arange(size, dtype=torch.float64, device="cpu") - center).abs() / factor
    return (ramp[:, None] * ramp[None, :]).float()


def learned_bilinear_upsample(channels: int, factor: int = 2) -> nn.ConvTranspose2d:
    """A learnable class-to-class transposed conv (kernel 2f, stride f) initialised to bilinear per class.

    Off-diagonal (class i -> class j != i) kernels start at zero, as in the reference ``surgery.interp``.
    """
    up = nn.ConvTranspose2d(channels, channels, 2 * factor, stride=factor, padding=factor // 2, bias=False)
    diagonal = torch.eye(channels, device="cpu")[:, :, None, None] * bilinear_kernel(factor)
    with torch.no_grad():
        up.weight.copy_(diagonal)
    return up


class FixedBilinearUpsample(nn.Module):
    """Frozen bilinear upsampling by an even factor f: a depthwise transposed conv (kernel 2f, stride f, pad f/2).

    The kernel is a non-persistent buffer: it is not a weight (the paper fixes it), so it adds no parameters
    and is not stored in checkpoints, but it follows the module to its device.
    """

    weight: torch.Tensor

    def __init__(self, channels: int, factor: int) -> None:
        super().__init__()
        if factor < 2 or factor % 2:
            raise ValueError(f"upsampling factor must be even, got {factor}")
        self.channels, self.factor = channels, factor
        kernel = bilinear_kernel(factor).expand(channels, 1, 2 * factor, 2 * factor).contiguous()
        kernel = kernel.to(torch.empty(0).device)  # the default device, like the other modules' tensors
        self.register_buffer("weight", kernel, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv_transpose2d(x, self.weight.to(x.dtype), stride=self.factor, padding=self.factor // 2,
                                  groups=self.channels)

    def extra_repr(self) -> str:
        return f"{self.channels}, factor={self.factor}, fixed bilinear"


class FCN(nn.Module):
    """VGG16 FCN of stride ``variant`` (32, 16 or 8); logits at the input's size (H, W multiples of 32)."""

    size_divisor = 32

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 21,
        variant: int = 8,
        *,
        width_divisor: int = 1,
        dropout: float = 0.5,
        learn_upsampling: bool = True,
    ) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {list(VARIANTS)}, got {variant}")
        check_width_divisor(width_divisor)
        self.variant = variant
        self.features = vgg16_features(in_channels, width_divisor=width_divisor)
        self._pool3, self._pool4, _ = pool_positions(self.features)[2:]
        c3, c4, c5, cfc = (c // width_divisor for c in (256, 512, 512, 4096))
        self.fc6 = nn.Conv2d(c5, cfc, kernel_size=7, padding=3)  # VGG16 fc6 (4096 x 512*7*7) as a conv
        self.drop6 = nn.Dropout(dropout)
        self.fc7 = nn.Conv2d(cfc, cfc, kernel_size=1)
        self.drop7 = nn.Dropout(dropout)
        for conv in (self.fc6, self.fc7):
            nn.init.kaiming_normal_(conv.weight, mode="fan_in", nonlinearity="relu")
            nn.init.zeros_(conv.bias)
        self.score_fr = _zero_conv(cfc, num_classes)
        if variant <= 16:
            self.score_pool4 = _zero_conv(c4, num_classes)
            self.upscore2 = learned_bilinear_upsample(num_classes)
            self.upscore2.weight.requires_grad_(learn_upsampling)
        if variant <= 8:
            self.score_pool3 = _zero_conv(c3, num_classes)
            self.upscore_pool4 = learned_bilinear_upsample(num_classes)
            self.upscore_pool4.weight.requires_grad_(learn_upsampling)
        self.upscore = FixedBilinearUpsample(num_classes, variant)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if h % 32 or w % 32:
            raise ValueError(f"FCN input height and width must be multiples of 32, got {h}x{w}")
        pool3 = self.features[: self._pool3 + 1](x)
        pool4 = self.features[self._pool3 + 1 : self._pool4 + 1](pool3)
        pool5 = self.features[self._pool4 + 1 :](pool4)
        fc6 = self.drop6(F.relu(self.fc6(pool5), inplace=True))
        fc7 = self.drop7(F.relu(self.fc7(fc6), inplace=True))
        score = self.score_fr(fc7)  # stride 32
        if self.variant <= 16:
            score = self.upscore2(score) + self.score_pool4(pool4)  # fuse_pool4, stride 16
        if self.variant <= 8:
            score = self.upscore_pool4(score) + self.score_pool3(pool3)  # fuse_pool3, stride 8
        return self.upscore(score)


def _zero_conv(in_channels: int, out_channels: int) -> nn.Conv2d:
    """A 1x1 class-scoring conv, zero-initialised (the paper found random init neither better nor faster)."""
    conv = nn.Conv2d(in_channels, out_channels, kernel_size=1)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


def fcn_state_dict_from_vgg16(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """torchvision VGG16 keys -> FCN keys: ``features.*`` as is, ``classifier.0`` -> ``fc6`` reshaped to
    (4096, 512, 7, 7), ``classifier.3`` -> ``fc7`` reshaped to (4096, 4096, 1, 1), ``classifier.6``
    (the ImageNet classifier) dropped. Other keys pass unchanged, so a mismatch is still named.
    """
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        if key.startswith("classifier.6."):
            continue
        for source, target, kernel in (("classifier.0.", "fc6.", 7), ("classifier.3.", "fc7.", 1)):
            if key.startswith(source):
                key = target + key[len(source) :]
                if key.endswith("weight") and tensor.ndim == 2:
                    tensor = tensor.reshape(tensor.shape[0], -1, kernel, kernel)
                break
        out[key] = tensor
    return out


def load_vgg16_weights(net: FCN, state_dict: Mapping[str, torch.Tensor], source: str = "") -> None:
    """Load ImageNet VGG16 weights into the body and fc6/fc7; the new scoring and upsampling layers keep
    their paper initialisation. The first conv is fitted to ``in_channels`` bands.
    """
    load_pretrained(net, fcn_state_dict_from_vgg16(state_dict), source=source, first_conv="features.0.weight",
                    skip=("score_", "upscore"))
