"""DeepLab-LargeFOV (Chen et al., ICLR 2015, arXiv:1412.7062): VGG16 turned into a dense, output-stride-8 net.

Mechanism: the strides of pool4 and pool5 are removed (3x3 max pools, stride 1,
pad 1), so conv5 runs with dilation 2 ("hole algorithm"), and the fully connected
fc6 becomes a 3x3 convolution with dilation 12 and 1024 channels (the
"LargeFOV" variant), followed by fc7 (1x1, 1024), both with ReLU and dropout
0.5, and fc8 (1x1) to class scores. The stride-8 score map is bilinearly
upsampled to the input size.

Deviations: the VGG16 convs come from torchvision's ``make_layers(cfgs["D"])``
(the layers of ``vgg16().features``, same keys, same initialisation). Pool1-3
are 3x3/stride 2/pad 1 as in the authors' released prototxt (torchvision's VGG
uses 2x2 pools; neither has weights). Pretrained fc6/fc7 are taken from the
torchvision VGG16 classifier by decimation, as the paper does: every 4th output
channel, and for fc6 the kernel taps 0, 3, 6 of the 7x7 grid (fc7: every 4th
input channel too); without them fc6/fc7 get He initialisation like the convs
(fc8: N(0, 0.01) as released). The multi-scale (MSc) variant is not included; the dense
CRF is the plugin's post-processing (:mod:`raysegment_deeplab.crf`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.vgg import cfgs, make_layers

__all__ = ["VGG_POOLS", "VGG_CONV5", "vgg16_features", "LargeFOVHead", "DeepLabV1", "vgg16_pretrained"]

VGG_POOLS = (4, 9, 16, 23, 30)  # indices of the max pools in torchvision's vgg16().features
VGG_CONV5 = (24, 26, 28)


def vgg16_features(in_channels: int = 3) -> nn.Sequential:
    """torchvision VGG16 convs (same indices, so its state dict loads) at output stride 8.

    Built with torchvision's own ``make_layers`` and VGG's initialisation, without
    the 120M-parameter classifier that ``vgg16(weights=None)`` would allocate.
    """
    features = make_layers(cfgs["D"], batch_norm=False)
    if in_channels != 3:
        features[0] = nn.Conv2d(in_channels, 64, kernel_size=3, padding=1)
    for m in features:
        if isinstance(m, nn.Conv2d):  # as torchvision.models.VGG initialises its convs
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(m.bias)
    for i in VGG_POOLS[:3]:
        features[i] = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
    for i in VGG_POOLS[3:]:  # pool4, pool5: no subsampling
        features[i] = nn.MaxPool2d(kernel_size=3, stride=1, padding=1)
    for i in VGG_CONV5:  # conv5 after the removed pool4 stride: the "hole" rate 2
        conv = features[i]
        conv.dilation, conv.padding = (2, 2), (2, 2)
    return features


class LargeFOVHead(nn.Module):
    """fc6 (3x3, dilation ``rate``, 1024) -> fc7 (1x1, 1024) -> fc8 (1x1, classes), ReLU and dropout between."""

    def __init__(self, in_channels: int, num_classes: int, rate: int = 12, width: int = 1024,
                 dropout: float = 0.5) -> None:
        super().__init__()
        self.rate = rate
        self.fc6 = nn.Conv2d(in_channels, width, kernel_size=3, padding=rate, dilation=rate)
        self.fc7 = nn.Conv2d(width, width, kernel_size=1)
        self.fc8 = nn.Conv2d(width, num_classes, kernel_size=1)
        self.relu = nn.ReLU(inplace=True)
        self.drop = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        for fc in (self.fc6, self.fc7):  # random only without pretrained weights: He init, as VGG's convs
            nn.init.kaiming_normal_(fc.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(fc.bias)
        nn.init.normal_(self.fc8.weight, std=0.01)  # as the released models initialise the classifier
        nn.init.zeros_(self.fc8.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop(self.relu(self.fc6(x)))
        x = self.drop(self.relu(self.fc7(x)))
        return self.fc8(x)


class DeepLabV1(nn.Module):
    """DeepLab-LargeFOV: dense VGG16 features, one LargeFOV head, logits upsampled to the input size."""

    output_stride = 8

    def __init__(self, in_channels: int = 3, num_classes: int = 21, dropout: float = 0.5) -> None:
        super().__init__()
        self.features = vgg16_features(in_channels)
        self.head = LargeFOVHead(512, num_classes, rate=12, dropout=dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.head(self.features(x))
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


def _decimate(state: dict[str, torch.Tensor], key: str, shape: tuple[int, ...], fc: str) -> torch.Tensor:
    """fc6/fc7 weights from the torchvision classifier, subsampled as in the paper."""
    from raysegment.weights import WeightsError

    t = state[key]
    want = {"fc6.weight": (4096, 512 * 7 * 7), "fc7.weight": (4096, 4096)}.get(f"{fc}.weight")
    if key.endswith("bias"):
        if tuple(t.shape) != (4096,):
            raise WeightsError(f"weights tensor {key!r} has shape {tuple(t.shape)}, expected (4096,) to decimate")
        return t[::4].clone()
    if tuple(t.shape) != want:
        raise WeightsError(f"weights tensor {key!r} has shape {tuple(t.shape)}, expected {want} to decimate")
    if fc == "fc6":
        return t.view(4096, 512, 7, 7)[::4, :, ::3, ::3].clone()  # taps 0, 3, 6: 7x7 -> 3x3
    return t[::4, ::4].reshape(shape).clone()


def vgg16_pretrained(module: nn.Module, source: str, heads: Sequence[str], features: str = "features") -> None:
    """Load a torchvision VGG16 state dict into ``module.<features>`` and the LargeFOV heads named ``heads``.

    ``features.*`` load as they are, under ``features`` (the first conv fitted to the band count);
    ``classifier.0``/``classifier.3`` are decimated into every head's fc6/fc7
    when present, else those stay random; the 1000-class ``classifier.6`` and
    fc8 are never loaded.
    """
    from raysegment.weights import load_pretrained, read_state_dict

    state = read_state_dict(source)
    own = module.state_dict()
    fitted = {k: v for k, v in state.items() if not k.startswith("classifier.")}
    has_fc = all(f"classifier.{i}.{p}" in state for i in (0, 3) for p in ("weight", "bias"))
    skip = [f"{h}.fc8." for h in heads]
    for head in heads:
        if not has_fc:
            skip += [f"{head}.fc6.", f"{head}.fc7."]
            continue
        for fc, idx in (("fc6", 0), ("fc7", 3)):
            for part in ("weight", "bias"):
                name = f"{head}.{fc}.{part}"
                fitted[name] = _decimate(state, f"classifier.{idx}.{part}", tuple(own[name].shape), fc)

    def rename(key: str) -> str:
        return features + key[len("features"):] if key.startswith("features.") else key

    load_pretrained(module, fitted, source=source, first_conv=f"{features}.0.weight", skip=tuple(skip),
                    rename=rename)
