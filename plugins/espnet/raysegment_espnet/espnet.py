"""ESPNet-A/B/C and ESPNet (Mehta et al., ECCV 2018, arXiv:1803.06815, Sec. 3.2, Fig. 4).

The networks are stacks of ESP modules (:mod:`raysegment_espnet.esp`) at three spatial levels
(strides 2, 4, 8), each level a step on the paper's path from ESPNet-A to ESPNet:

* **ESPNet-A**: conv 3x3 stride 2 (16 ch) -> strided ESP (64) -> alpha_2 ESP (64) -> strided
  ESP (128) -> alpha_3 ESP (128) -> 1x1 classifier, output stride 8.
* **ESPNet-B**: shares feature maps: at levels 2 and 3 the output of the last ESP module is
  concatenated with the output of the level's strided ESP module (then BN + PReLU).
* **ESPNet-C**: also reinforces the input: the image, average-pooled to the level's size, is
  concatenated to the level-1 and level-2 outputs. The paper's encoder.
* **ESPNet**: ESPNet-C plus the light-weight reduce-upsample-merge decoder: the level-3
  class map is up-sampled (2x2 transposed conv), merged with the level-2 features projected to
  C channels by an ESP module, up-sampled again, merged with the level-1 features by a 3x3
  conv, and a last transposed conv gives full-resolution logits.

ESPNet-A/B/C logits are up-sampled bilinearly from stride 8 to the input size (the authors
train ESPNet-C against 1/8-size labels instead; full-size logits are raysegment's contract).
The defaults alpha_2 = p = 2 and alpha_3 = q = 8 are the paper's Cityscapes configuration.

Following the reference code (github sacmehta/ESPNet ``train/Model.py``): layer names, so its
released state dicts load into :class:`ESPNetEncoder` (variant c) and :class:`ESPNetWithDecoder`;
the concatenation orders; BN after the class map before the first up-sampling; and the
decoder's last merge, which concatenates the 16 + in_channels level-1 maps directly (the
paper's Fig. 4d first projects them with a 1x1 conv to C channels). ESPNet-B's BN + PReLU
after each concatenation is our reading of Fig. 4b, matching what ESPNet-C does.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from raysegment_espnet.esp import BN_EPS, BR, CBR, ESP, Conv, InputProjection, StridedESP

__all__ = ["VARIANTS", "ESPNetEncoder", "ESPNetWithDecoder", "validate_config"]

#: Encoder variants of Fig. 4: a = plain, b = + feature sharing, c = + input reinforcement.
VARIANTS = ("a", "b", "c")
#: Widths of levels 1, 2, 3 (stem conv, ESP modules at stride 4, ESP modules at stride 8).
WIDTHS = (16, 64, 128)
OUTPUT_STRIDE = 8


def validate_config(in_channels: int, num_classes: int, p: int, q: int) -> None:
    """Reject impossible configurations with a message naming the parameter."""
    for name, value in (("in_channels", in_channels), ("num_classes", num_classes), ("p", p), ("q", q)):
        if value < 1:
            raise ValueError(f"parameter {name!r} must be >= 1, got {value!r}")


class ESPNetEncoder(nn.Module):
    """ESPNet-A, -B or -C: three levels of ESP modules and a 1x1 classifier at stride 8.

    ``forward`` returns logits bilinearly up-sampled to the input size; :meth:`features`
    gives the three level outputs the decoder of :class:`ESPNetWithDecoder` merges.
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 20, p: int = 2, q: int = 8,
                 variant: str = "c") -> None:
        super().__init__()
        validate_config(in_channels, num_classes, p, q)
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
        self.variant = variant
        self.share = variant in ("b", "c")  # concatenate strided-ESP and last-ESP outputs
        self.reinforce = variant == "c"  # concatenate the down-sampled input image
        w1, w2, w3 = WIDTHS
        extra = in_channels if self.reinforce else 0

        self.level1 = CBR(in_channels, w1, 3, stride=2)
        if self.reinforce:
            self.sample1 = InputProjection(1)
            self.sample2 = InputProjection(2)
            self.b1 = BR(w1 + extra)
        c1 = w1 + extra
        self.level2_0 = StridedESP(c1, w2)
        self.level2 = nn.ModuleList(ESP(w2, w2) for _ in range(p))
        c2 = (2 * w2 if self.share else w2) + extra
        if self.share:
            self.b2 = BR(c2)
        self.level3_0 = StridedESP(c2, w3)
        self.level3 = nn.ModuleList(ESP(w3, w3) for _ in range(q))
        c3 = 2 * w3 if self.share else w3
        if self.share:
            self.b3 = BR(c3)
        self.classifier = Conv(c3, num_classes, 1)
        #: channels of the level-1, level-2 and level-3 outputs of :meth:`features`
        self.channels: tuple[int, int, int] = (c1, c2, c3)

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Outputs of levels 1, 2, 3 (strides 2, 4, 8), after their concatenations."""
        out0 = self.level1(x)
        if self.reinforce:
            out0 = self.b1(torch.cat([out0, self.sample1(x)], 1))
        out1_0 = self.level2_0(out0)
        out1 = out1_0
        for layer in self.level2:
            out1 = layer(out1)
        if self.share:
            parts = [out1, out1_0] + ([self.sample2(x)] if self.reinforce else [])
            out1 = self.b2(torch.cat(parts, 1))
        out2_0 = self.level3_0(out1)
        out2 = out2_0
        for layer in self.level3:
            out2 = layer(out2)
        if self.share:
            out2 = self.b3(torch.cat([out2_0, out2], 1))
        return out0, out1, out2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.classifier(self.features(x)[2])
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


class ESPNetWithDecoder(nn.Module):
    """ESPNet: the ESPNet-C encoder plus the light-weight reduce-upsample-merge decoder.

    Inputs must have H and W divisible by 8 (three exact 2x up-samplings back).
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 20, p: int = 2, q: int = 8) -> None:
        super().__init__()
        self.encoder = ESPNetEncoder(in_channels, num_classes, p, q, variant="c")
        c1, c2, _ = self.encoder.channels
        n = num_classes
        self.level3_C = Conv(c2, n, 1)  # level-2 features projected to class space
        self.br = nn.BatchNorm2d(n, eps=BN_EPS)  # on the level-3 class map
        self.conv = CBR(n + c1, n, 3)  # merge with level-1 features
        self.up_l3 = nn.Sequential(nn.ConvTranspose2d(n, n, 2, stride=2, bias=False))
        self.combine_l2_l3 = nn.Sequential(BR(2 * n), ESP(2 * n, n, residual=False))
        self.up_l2 = nn.Sequential(nn.ConvTranspose2d(n, n, 2, stride=2, bias=False), BR(n))
        self.classifier = nn.ConvTranspose2d(n, n, 2, stride=2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if h % OUTPUT_STRIDE or w % OUTPUT_STRIDE:
            raise ValueError(f"ESPNet input height and width must be multiples of {OUTPUT_STRIDE}, got {h}x{w}")
        l1, l2, l3 = self.encoder.features(x)
        up3 = self.up_l3(self.br(self.encoder.classifier(l3)))  # stride 8 -> 4
        merged2 = self.combine_l2_l3(torch.cat([self.level3_C(l2), up3], 1))
        up2 = self.up_l2(merged2)  # stride 4 -> 2
        merged1 = self.conv(torch.cat([up2, l1], 1))
        return self.classifier(merged1)  # stride 2 -> 1
