"""SegNet: Badrinarayanan, Kendall & Cipolla, "SegNet: A Deep Convolutional Encoder-Decoder Architecture
for Image Segmentation", TPAMI 2017, arXiv:1511.00561.

Mechanism: the encoder is VGG16-BN's 13 convolutions (conv + BN + ReLU) and 5 non-overlapping 2x2 max-pools
that keep their argmax indices. The decoder mirrors it: each stage first upsamples with ``nn.MaxUnpool2d``
using the indices stored by the matching encoder pool (a sparse map: each value goes back to where its
maximum came from, zeros elsewhere; no learned upsampling, no transposed convolutions), then densifies it
with conv + BN + ReLU blocks whose channel counts mirror the encoder (512-512-512, 512-512-256,
256-256-128, 128-64, 64). The last decoder conv (the paper's ``conv1_1_D``) is a 3x3 convolution to the
classes, followed by the softmax of the loss, as in the reference Caffe ``segnet_train.prototxt``.
No fully connected layers: 14.7M encoder + 14.7M decoder parameters.

Default classes: 11, the CamVid road-scene classes of the paper's main benchmark.

Deviation: the unpooling is given each pre-pool size, so any H, W of at least 32 works (odd sizes
included); the plugin still pads to ``size_divisor`` 32 so that all five pools see even sizes.
``width_divisor`` (default 1 = the paper) divides every channel count for tiny test builds.

Example:

>>> import torch
>>> net = SegNet(in_channels=1, num_classes=2, width_divisor=16).eval()
>>> net(torch.zeros(1, 1, 64, 96)).shape
torch.Size([1, 2, 64, 96])
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from raysegment.weights import load_pretrained
from raysegment_classic.vgg import VGG16_CONFIG, VGG16_STAGES, check_width_divisor, vgg16_features

__all__ = ["SegNet", "decoder_channels", "load_vgg16_bn_weights"]


def decoder_channels() -> list[list[int]]:
    """Output channels of the decoder convs, deepest stage first; the final one (-1) is the classes.

    The mirror of VGG16: stage s ends with the channel count entering encoder stage s.
    """
    convs = [int(c) for c in VGG16_CONFIG if c != "M"]
    stages, start = [], 0
    for n in VGG16_STAGES:
        stages.append(convs[start : start + n])
        start += n
    entering = [-1] + [s[-1] for s in stages[:-1]]  # channels entering each encoder stage; -1 = the classes
    out = []
    for stage, into in zip(reversed(stages), reversed(entering)):
        out.append(stage[:-1] + [into])
    return out


def _conv_bn_relu(in_channels: int, out_channels: int) -> list[nn.Module]:
    return [nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)]


class SegNet(nn.Module):
    """VGG16-BN encoder, max-unpooling decoder with the encoder's pooling indices; logits at the input size."""

    size_divisor = 32

    def __init__(self, in_channels: int = 3, num_classes: int = 11, *, width_divisor: int = 1) -> None:
        super().__init__()
        check_width_divisor(width_divisor)
        self.features = vgg16_features(in_channels, batch_norm=True, width_divisor=width_divisor,
                                       return_indices=True)
        self.unpool = nn.MaxUnpool2d(kernel_size=2, stride=2)
        stages: list[nn.Sequential] = []
        channels = 512 // width_divisor
        plan = decoder_channels()
        for i, outs in enumerate(plan):
            last_stage = i == len(plan) - 1
            layers: list[nn.Module] = []
            for out in outs[:-1] if last_stage else outs:
                layers += _conv_bn_relu(channels, out // width_divisor)
                channels = out // width_divisor
            stages.append(nn.Sequential(*layers))
        self.decoder = nn.ModuleList(stages)
        self.score = nn.Conv2d(channels, num_classes, 3, padding=1)  # conv1_1_D: to the classes, no BN/ReLU
        for m in [*self.decoder.modules(), self.score]:
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if h < 32 or w < 32:
            raise ValueError(f"SegNet input must be at least 32x32 (five 2x2 pools), got {h}x{w}")
        indices: list[torch.Tensor] = []
        sizes: list[torch.Size] = []
        for layer in self.features:
            if isinstance(layer, nn.MaxPool2d):
                sizes.append(x.shape[-2:])
                x, idx = layer(x)
                indices.append(idx)
            else:
                x = layer(x)
        for stage, idx, size in zip(self.decoder, reversed(indices), reversed(sizes)):
            x = stage(self.unpool(x, idx, output_size=size))
        return self.score(x)


def load_vgg16_bn_weights(net: SegNet, state_dict: Mapping[str, torch.Tensor], source: str = "") -> None:
    """Load a torchvision ``vgg16_bn`` state dict into the encoder (``features.*``, same keys); its
    ImageNet classifier is dropped and the decoder keeps its initialisation. The first conv is fitted
    to ``in_channels`` bands.
    """
    load_pretrained(net, state_dict, source=source, first_conv="features.0.weight", skip=("decoder.", "score."),
                    rename=lambda key: None if key.startswith("classifier.") else key)
