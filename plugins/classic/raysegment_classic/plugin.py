"""The ``fcn32s``, ``fcn16s``, ``fcn8s`` and ``segnet`` model plugins: :mod:`.fcn` and :mod:`.segnet`
behind the raysegment contract.

Preprocessing, reduction, postprocessing and the loss are the base class's defaults: inputs scaled to
[0, 1] (no ImageNet mean subtraction), pixel-wise softmax cross-entropy, as both papers train.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from torch import nn

from raysegment.plugin import Modality, Param, ParamError, SegmentationModel, Task
from raysegment.weights import read_state_dict
from raysegment_classic.fcn import FCN, load_vgg16_weights
from raysegment_classic.segnet import SegNet as SegNetModule
from raysegment_classic.segnet import load_vgg16_bn_weights
from raysegment_classic.vgg import check_width_divisor

__all__ = ["FCN32s", "FCN16s", "FCN8s", "SegNet"]

_FCN_PAPER = (
    "J. Long, E. Shelhamer, T. Darrell. Fully Convolutional Networks for Semantic Segmentation. "
    "CVPR 2015; E. Shelhamer, J. Long, T. Darrell, TPAMI 39(4), 2017. arXiv:1411.4038"
)
_IN_CHANNELS = Param("in_channels", int, 3, help="input bands (3 = RGB as in the paper)")
_WIDTH_DIVISOR = Param("width_divisor", int, 1,
                       help="divide every channel count by this (a divisor of 64); 1 = the paper's VGG16 widths")
_CLASS_NAMES = Param("class_names", str, "", help="comma-separated class names; empty means class_0, class_1, ...")


def _validate(p: dict[str, Any]) -> None:
    """Shared checks; a ``ValueError`` becomes a one-line ``ParamError``."""
    try:
        if p["in_channels"] < 1:
            raise ValueError(f"in_channels must be >= 1, got {p['in_channels']}")
        if p["num_classes"] < 1:
            raise ValueError(f"num_classes must be >= 1, got {p['num_classes']}")
        check_width_divisor(p["width_divisor"])
        if "dropout" in p and not 0.0 <= p["dropout"] < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {p['dropout']}")
    except ValueError as exc:
        raise ParamError(str(exc)) from None


class _VGG16Model(SegmentationModel):
    """What the four share: a VGG16 body with five 2x2 pools, its shared checks, and a build that
    reads the ``backbone_weights`` file before allocating the network and loads it after.

    A model states :meth:`network` (the module from ``self.params``) and :attr:`load_backbone`.
    """

    task = Task.SEMANTIC
    modality = Modality.IMAGE
    smoke_params: ClassVar[dict[str, Any]] = {"in_channels": 1, "num_classes": 2, "width_divisor": 16}
    #: copies a torchvision-keyed VGG16 state dict into the network: ``(net, state, source=...)``
    load_backbone: ClassVar[Callable[..., None]]

    def validate(self) -> None:
        super().validate()
        _validate(self.params)

    @property
    def size_divisor(self) -> int:
        """Five 2x2 pools: H and W padded to 32, so every score map aligns without cropping (FCN) and
        every pool is exact, its unpool a true inverse of shape (SegNet)."""
        return 32

    @property
    def output_stride(self) -> int:
        """The coarsest map the classifier or decoder starts from: fc7/score_fr (FCN) or pool5 (SegNet)."""
        return 32

    def network(self) -> nn.Module:
        """The module with random weights."""
        raise NotImplementedError

    def build(self) -> nn.Module:
        source = self.params["backbone_weights"]
        state = read_state_dict(source) if source else None  # a missing file fails before 134M are allocated
        net = self.network()
        if state is not None:
            self.load_backbone(net, state, source=source)
        return net


class _FCNBase(_VGG16Model):
    """FCN on VGG16; subclasses fix the stride of the finest fused scores (32, 16, 8)."""

    variant: ClassVar[int] = 32
    paper = _FCN_PAPER
    paper_parameters: ClassVar[float | None] = 134.0
    parameter_note: ClassVar[str] = (
        "paper counts 21 PASCAL VOC classes; the fixed bilinear final upsampling is a buffer, not a parameter"
    )
    params = (
        _IN_CHANNELS,
        Param("num_classes", int, 21, help="output classes (21 = PASCAL VOC with background)"),
        _WIDTH_DIVISOR,
        Param("dropout", float, 0.5, help="dropout after fc6 and fc7, in [0, 1)"),
        Param("learn_upsampling", bool, True,
              help="learn the bilinear-initialised 2x upsamplings of FCN-16s/8s (paper); false freezes them "
                   "(reference Caffe nets); the final upsampling is always fixed bilinear"),
        Param("backbone_weights", str, "", loads_weights=True,
              help="torchvision VGG16 state dict (path, fsspec URL or VGG16_Weights.IMAGENET1K_V1 from the "
                   "local torch hub cache) for the convs and fc6/fc7; empty = random init"),
        _CLASS_NAMES,
    )
    load_backbone = staticmethod(load_vgg16_weights)

    def network(self) -> nn.Module:
        p = self.params
        return FCN(p["in_channels"], p["num_classes"], self.variant, width_divisor=p["width_divisor"],
                   dropout=p["dropout"], learn_upsampling=p["learn_upsampling"])


class FCN32s(_FCNBase):
    """FCN-32s: stride-32 scores upsampled 32x by a fixed bilinear transposed conv."""

    variant = 32
    summary = "FCN-32s (Long et al. 2015): VGG16 made fully convolutional, 32x bilinear upsampling."


class FCN16s(_FCNBase):
    """FCN-16s: FCN-32s scores, 2x upsampled, fused with pool4 scores, then 16x."""

    variant = 16
    summary = "FCN-16s (Long et al. 2015): FCN-32s plus a pool4 skip, 16x bilinear upsampling."


class FCN8s(_FCNBase):
    """FCN-8s: FCN-16s plus a pool3 skip, then 8x."""

    variant = 8
    summary = "FCN-8s (Long et al. 2015): FCN with pool4 and pool3 skips, 8x bilinear upsampling."


class SegNet(_VGG16Model):
    """SegNet: VGG16-BN encoder, decoder upsampling by max-unpooling with the encoder's pooling indices."""

    summary = "SegNet (Badrinarayanan et al. 2017): VGG16-BN encoder-decoder, unpooling by stored pool indices."
    paper = (
        "V. Badrinarayanan, A. Kendall, R. Cipolla. SegNet: A Deep Convolutional Encoder-Decoder Architecture "
        "for Image Segmentation. IEEE TPAMI 39(12), 2017. arXiv:1511.00561"
    )
    paper_parameters: ClassVar[float | None] = 29.5
    parameter_note: ClassVar[str] = "paper counts 11 CamVid classes, as our default"
    params = (
        _IN_CHANNELS,
        Param("num_classes", int, 11, help="output classes (11 = CamVid road scenes, the paper's benchmark)"),
        _WIDTH_DIVISOR,
        Param("backbone_weights", str, "", loads_weights=True,
              help="torchvision VGG16-BN state dict (path, fsspec URL or VGG16_BN_Weights.IMAGENET1K_V1 from "
                   "the local torch hub cache) for the encoder; empty = random init"),
        _CLASS_NAMES,
    )
    load_backbone = staticmethod(load_vgg16_bn_weights)

    def network(self) -> nn.Module:
        p = self.params
        return SegNetModule(p["in_channels"], p["num_classes"], width_divisor=p["width_divisor"])
