"""The ``unet`` model plugin: :class:`UNet2d` behind the raysegment contract."""

from __future__ import annotations

from typing import Any

from torch import nn

from raysegment.plugin import Modality, Param, ParamError, SegmentationModel, Task, class_names_from

from raysegment_unet.unet2d import UNet2d, validate_config

__all__ = ["UNet"]


class UNet(SegmentationModel):
    """2D U-Net for semantic segmentation of images.

    Preprocessing, reduction, postprocessing and the loss are the base class's
    defaults: inputs scaled to [0, 1], pixel-wise softmax cross-entropy, as in
    the paper (minus its border weight map, which needs instance labels).
    """

    task = Task.SEMANTIC
    modality = Modality.IMAGE
    summary = "U-Net (Ronneberger et al. 2015): encoder-decoder CNN with skip connections."
    paper = (
        "O. Ronneberger, P. Fischer, T. Brox. U-Net: Convolutional Networks for Biomedical "
        "Image Segmentation. MICCAI 2015, LNCS 9351, pp. 234-241. arXiv:1505.04597"
    )
    params = (
        Param("in_channels", int, 1, help="input bands (1 for grey-scale, 3 for RGB)"),
        Param("num_classes", int, 2, help="output classes; 1 means a single sigmoid foreground map"),
        Param("depth", int, 4, help="pooling steps; 4 gives the paper's 5 levels; input H, W padded to 2**depth"),
        Param("base_channels", int, 64, help="channels of the first level; doubled at each level below"),
        Param("batch_norm", bool, False, help="add BatchNorm after every 3x3 conv (not in the paper)"),
        Param("dropout", float, 0.0, help="dropout rate at the end of the contracting path, in [0, 1)"),
        Param("class_names", str, "", help="comma-separated class names; empty means class_0, class_1, ..."),
    )

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        p = self.params
        try:
            validate_config(p["in_channels"], p["num_classes"], p["depth"], p["base_channels"], p["dropout"])
        except ValueError as exc:
            raise ParamError(str(exc)) from None
        self.class_names()  # a name count that disagrees with num_classes fails here, not later

    @property  # type: ignore[override]  # the base's ClassVar default is meant to be overridden
    def size_divisor(self) -> int:
        """Every level halves H and W, so inputs are padded to ``2**depth``."""
        return 2 ** int(self.params["depth"])

    def class_names(self) -> tuple[str, ...]:
        return class_names_from(self.params["class_names"], self.num_classes)

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
