"""The ``unet``, ``resunet`` and ``denseunet`` model plugins: :mod:`.unet2d`, :mod:`.resunet` and
:mod:`.denseunet` behind the raysegment contract.

Preprocessing, reduction, postprocessing and the loss are the base class's defaults: inputs
scaled to [0, 1], pixel-wise softmax cross-entropy (sigmoid binary cross-entropy when
``num_classes=1``). All three are trained from scratch in their papers, so there is no
``backbone_weights`` parameter; full-model weights come through ``--checkpoint``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from torch import nn

from raysegment.plugin import Modality, Param, ParamError, SegmentationModel, Task

from raysegment_unet import denseunet, resunet
from raysegment_unet.unet2d import UNet2d, validate_config

__all__ = ["UNet", "ResUNet", "DenseUNet"]

_NAMES_HELP = "comma-separated class names; empty means class_0, class_1, ..."


def _validated(check: Callable[..., None], *args: Any) -> None:
    """Run a module's ``validate_config``; its ``ValueError`` becomes a one-line ``ParamError``."""
    try:
        check(*args)
    except ValueError as exc:
        raise ParamError(str(exc)) from None


class _UNetFamily(SegmentationModel):
    """Shared by the three: semantic images, ``2**depth`` padding and stride, named classes."""

    task = Task.SEMANTIC
    modality = Modality.IMAGE

    @property  # type: ignore[override]  # the base's ClassVar default is meant to be overridden
    def size_divisor(self) -> int:
        """Every level halves H and W, so inputs are padded to ``2**depth``."""
        return 2 ** int(self.params["depth"])

    @property  # type: ignore[override]
    def output_stride(self) -> int:
        """The decoder starts from the coarsest level, ``depth`` halvings below the input."""
        return 2 ** int(self.params["depth"])


class UNet(_UNetFamily):
    """2D U-Net for semantic segmentation of images.

    The loss is the base class's softmax cross-entropy, as in the paper (minus its
    border weight map, which needs instance labels).
    """

    summary = "U-Net (Ronneberger et al. 2015): encoder-decoder CNN with skip connections."
    paper = (
        "O. Ronneberger, P. Fischer, T. Brox. U-Net: Convolutional Networks for Biomedical "
        "Image Segmentation. MICCAI 2015, LNCS 9351, pp. 234-241. arXiv:1505.04597"
    )
    paper_parameters: ClassVar[float | None] = 31.0
    parameter_note: ClassVar[str] = (
        "31,030,658 at the defaults (1 band, 2 classes, 64 base channels), the paper's network: padding the "
        "3x3 convs does not change the count; batch_norm=true adds BN parameters"
    )
    smoke_params: ClassVar[dict[str, Any]] = {"depth": 2, "base_channels": 4}
    params = (
        Param("in_channels", int, 1, help="input bands (1 for grey-scale, 3 for RGB)"),
        Param("num_classes", int, 2, help="output classes; 1 means a single sigmoid foreground map"),
        Param("depth", int, 4, help="pooling steps; 4 gives the paper's 5 levels; input H, W padded to 2**depth"),
        Param("base_channels", int, 64, help="channels of the first level; doubled at each level below"),
        Param("batch_norm", bool, False, help="add BatchNorm after every 3x3 conv (not in the paper)"),
        Param("dropout", float, 0.0, help="dropout rate at the end of the contracting path, in [0, 1)"),
        Param("class_names", str, "", help=_NAMES_HELP),
    )

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        p = self.params
        _validated(validate_config, p["in_channels"], p["num_classes"], p["depth"], p["base_channels"], p["dropout"])
        self.class_names()  # a name count that disagrees with num_classes fails here, not later

    def build(self) -> nn.Module:
        p = self.params
        return UNet2d(
            in_channels=p["in_channels"],
            num_classes=p["num_classes"],
            depth=p["depth"],
            base_channels=p["base_channels"],
            batch_norm=p["batch_norm"],
            dropout=p["dropout"],
        )


class ResUNet(_UNetFamily):
    """Deep Residual U-Net: pre-activation residual units, strided-conv downsampling.

    The paper's single road map is ``num_classes=1``: one logit per pixel, sigmoid in
    ``reduce`` and binary cross-entropy in ``loss`` (the paper trains with MSE on the
    sigmoid output; BCE is the contract's single-class loss).
    """

    summary = "ResUNet (Zhang et al. 2018): U-Net of pre-activation residual units, stride-2 conv downsampling."
    paper = (
        "Z. Zhang, Q. Liu, Y. Wang. Road Extraction by Deep Residual U-Net. IEEE Geoscience and Remote "
        "Sensing Letters 15(5), pp. 749-753, 2018. arXiv:1711.10684"
    )
    paper_parameters: ClassVar[float | None] = 7.8
    parameter_note: ClassVar[str] = (
        "8.22M at the defaults (3 bands, 1 class): the paper's 7.8M equals its 3x3 convolutions alone (7.78M); "
        "the 1x1 projection shortcuts every unit needs (each changes width or resolution) add 0.43M"
    )
    smoke_params: ClassVar[dict[str, Any]] = {"depth": 2, "base_channels": 4}
    params = (
        Param("in_channels", int, 3, help="input bands (3 = RGB aerial images, as in the paper)"),
        Param("num_classes", int, 1, help="output classes; 1 (the paper's road map) means one sigmoid foreground map"),
        Param("depth", int, 3, help="stride-2 downsamplings: encoder levels below the first plus the bridge; "
                                    "3 is the paper's network; input H, W padded to 2**depth"),
        Param("base_channels", int, 64,
              help="filters of the first level, doubled at each level below (64 in the paper)"),
        Param("class_names", str, "", help=_NAMES_HELP),
    )

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        p = self.params
        _validated(resunet.validate_config, p["in_channels"], p["num_classes"], p["depth"], p["base_channels"])
        self.class_names()

    def build(self) -> nn.Module:
        p = self.params
        return resunet.ResUNet2d(p["in_channels"], p["num_classes"], p["depth"], p["base_channels"])


class DenseUNet(_UNetFamily):
    """Fully Dense U-Net: dense blocks in the contracting and the expanding path.

    The paper regresses an artifact-free image (1x1 conv to one channel plus a residual
    connection from the input); here the 1x1 head gives class logits, without that residual.
    """

    summary = "FD-UNet (Guan et al. 2019): U-Net with dense blocks in both paths, growth rate doubling per level."
    paper = (
        "S. Guan, A. A. Khan, S. Sikdar, P. V. Chitnis. Fully Dense UNet for 2-D Sparse Photoacoustic "
        "Tomography Artifact Removal. IEEE Journal of Biomedical and Health Informatics 24(2), pp. 568-576, "
        "2020. arXiv:1808.10848"
    )
    paper_parameters: ClassVar[float | None] = None
    parameter_note: ClassVar[str] = (
        "the paper reports no parameter count; 39.27M at the defaults (growth rate 16, 5 levels, 1 band, 2 classes)"
    )
    smoke_params: ClassVar[dict[str, Any]] = {"depth": 2, "growth_rate": 2}
    params = (
        Param("in_channels", int, 1, help="input bands (1 = grey-scale, as the paper's photoacoustic images)"),
        Param("num_classes", int, 2, help="output classes (the paper regresses an image; 1 = one sigmoid map)"),
        Param("depth", int, 4, help="max-pooling steps; 4 gives the paper's 5 levels; input H, W padded to 2**depth"),
        Param("growth_rate", int, 16, help="growth rate k of the first level's dense blocks, doubled at each level "
                                           "below (16 in the paper, giving 128 maps at the first level)"),
        Param("layers_per_block", int, 4, help="dense layers per block (4 in the paper: each block doubles its input)"),
        Param("class_names", str, "", help=_NAMES_HELP),
    )

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        p = self.params
        _validated(denseunet.validate_config, p["in_channels"], p["num_classes"], p["depth"], p["growth_rate"],
                   p["layers_per_block"])
        self.class_names()

    def build(self) -> nn.Module:
        p = self.params
        return denseunet.DenseUNet2d(p["in_channels"], p["num_classes"], p["depth"], p["growth_rate"],
                                     p["layers_per_block"])
