"""The ``unet``, ``resunet``, ``denseunet`` and ``unet3d`` model plugins: :mod:`.unet2d`,
:mod:`.resunet`, :mod:`.denseunet` and :mod:`.unet3d` behind the raysegment contract.

Preprocessing, reduction, postprocessing and the loss are the base class's defaults: inputs
scaled to [0, 1], pixel-wise softmax cross-entropy (sigmoid binary cross-entropy when
``num_classes=1``). ``unet3d`` takes volumes ``(D, H, W, C)`` and adds a fixed intensity
scale, a depth crop and 3D targets. All four are trained from scratch in their papers, so
there is no ``backbone_weights`` parameter; full-model weights come through ``--checkpoint``.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import numpy as np
from torch import nn

from raysegment.plugin import (
    InputError,
    Modality,
    Param,
    ParamError,
    Sample,
    SegmentationModel,
    SemanticPrediction,
    Task,
)
from raysegment_unet import denseunet, resunet, unet2d, unet3d

__all__ = ["UNet", "ResUNet", "DenseUNet", "UNet3D"]

_CLASS_NAMES = Param("class_names", str, "", help="comma-separated class names; empty means class_0, class_1, ...")


class _UNetFamily(SegmentationModel):
    """Shared by the four: semantic, ``2**depth`` padding and stride, and parameters that are the
    network's own keyword arguments, so that a model is declared by its network and its check.
    """

    task = Task.SEMANTIC
    modality = Modality.IMAGE
    #: the ``nn.Module`` class ``build()`` makes; every parameter not in :attr:`plugin_only` is
    #: one of its keyword arguments (an unknown one fails loudly, as a ``TypeError``)
    network: ClassVar[Callable[..., nn.Module]]
    #: the network module's ``validate_config``: the same checks, on the driver, before anything
    #: is allocated; it is passed the parameters its signature names
    check_config: ClassVar[Callable[..., None]]
    #: parameters the plugin uses itself rather than passing to the network
    plugin_only: ClassVar[tuple[str, ...]] = ("class_names",)

    def network_kwargs(self) -> dict[str, Any]:
        """The resolved parameters that are the network's arguments."""
        return {name: value for name, value in self.params.items() if name not in self.plugin_only}

    def validate(self) -> None:
        super().validate()
        kwargs = self.network_kwargs()
        self.check_config(**{name: kwargs[name] for name in inspect.signature(self.check_config).parameters})

    def build(self) -> nn.Module:
        return self.network(**self.network_kwargs())

    @property
    def size_divisor(self) -> int:
        """Every level halves H and W, so inputs are padded to ``2**depth``."""
        return 2 ** int(self.params["depth"])

    @property
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
        _CLASS_NAMES,
    )
    network = unet2d.UNet2d
    check_config = staticmethod(unet2d.validate_config)


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
        _CLASS_NAMES,
    )
    network = resunet.ResUNet2d
    check_config = staticmethod(resunet.validate_config)


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
        _CLASS_NAMES,
    )
    network = denseunet.DenseUNet2d
    check_config = staticmethod(denseunet.validate_config)


class UNet3D(_UNetFamily):
    """3D U-Net for semantic segmentation of volumes (``Modality.VOLUME``), run as 3D sliding windows.

    Windows arrive channels-last ``(D, H, W, C)``; the base ``preprocess`` moves the bands
    first, ``reduce`` works on ``(B, K, D, H, W)`` logits unchanged. Intensities: the dtype
    rule of the base class (integers divided by their dtype's maximum, floats as they are),
    then multiplied by ``intensity_scale``. The scale is fixed, never computed from a
    window: statistics per window would make neighbouring windows disagree at their seams.
    MRI has no absolute intensity scale, so pick it for the data the weights were trained
    on (e.g. ``1/4000`` for the float MSD hippocampus volumes, whose values reach about 4200).

    The loss is the base class's softmax cross-entropy; the paper's weighted loss gives
    unlabelled voxels weight 0, which is ``ignore_index`` (255) here.
    """

    modality = Modality.VOLUME
    summary = "3D U-Net (Çiçek et al. 2016): the U-Net made volumetric, 3x3x3 conv-BN-ReLU, 2x2x2 pooling."
    paper = (
        "Ö. Çiçek, A. Abdulkadir, S. S. Lienkamp, T. Brox, O. Ronneberger. 3D U-Net: Learning Dense Volumetric "
        "Segmentation from Sparse Annotation. MICCAI 2016, LNCS 9901, pp. 424-432. arXiv:1606.06650"
    )
    paper_parameters: ClassVar[float | None] = unet3d.PAPER_PARAMETERS / 1e6
    parameter_note: ClassVar[str] = (
        "19,072,291 at the defaults (3 bands, 3 classes, base 32, depth 3), the paper's network: its 19,069,955 "
        "count a bias on every 3x3x3 conv and no BatchNorm parameters; ours drop those 2,336 biases (BN follows "
        "each conv) and count BN's scale and shift (2 x 2,336), +2,336 in all; 'same' padding does not change it"
    )
    smoke_params: ClassVar[dict[str, Any]] = {"in_channels": 1, "depth": 2, "base_channels": 4}
    #: The paper's network sees about 90 voxels per axis (its 132-voxel input tile gives 44 valid
    #: output voxels): a 96^3 window gives its centre voxels their whole context, and a 32-voxel
    #: overlap lets Gaussian blending draw seams from window centres. 96 is a multiple of
    #: 2**depth for depth <= 5. Memory: about 2 GB of float32 activations per window at the
    #: defaults (617 MiB measured at 64^3 on CPU; activations grow with the voxel count).
    default_tile: ClassVar[tuple[int, ...] | None] = (96, 96, 96)
    default_overlap: ClassVar[tuple[int, ...] | None] = (32, 32, 32)
    params = (
        Param("in_channels", int, 3, help="input bands (3 in the paper; 1 for a single MRI or CT sequence)"),
        Param("num_classes", int, 3, help="output classes (3 in the paper); 1 means a single sigmoid foreground map"),
        Param("depth", int, 3, help="max-pooling steps; 3 gives the paper's 4 levels; input D, H, W padded to "
                                    "2**depth"),
        Param("base_channels", int, 32, help="channels of the first conv, doubled by the second and at each level "
                                             "below (32 in the paper: 32/64, 64/128, 128/256, 256/512)"),
        Param("intensity_scale", float, 1.0,
              help="fixed factor applied after the dtype rule (integers / dtype max, floats as they are); "
                   "e.g. 0.00025 for float MRI up to ~4000; never computed per window"),
        _CLASS_NAMES,
    )
    network = unet3d.UNet3d
    check_config = staticmethod(unet3d.validate_config)
    plugin_only = ("class_names", "intensity_scale")

    def validate(self) -> None:
        super().validate()
        scale = self.params["intensity_scale"]
        if not (math.isfinite(scale) and scale > 0):
            raise ParamError(f"parameter 'intensity_scale' must be positive and finite, got {scale!r}")

    def preprocess(self, sample: Sample) -> np.ndarray:
        """``(D, H, W, C)`` -> ``(C, D, H, W)`` float32: the dtype rule, then ``intensity_scale``."""
        if np.ndim(sample.data) != 4:
            raise InputError(f"unet3d takes volumes (D, H, W, bands); got an array of shape {np.shape(sample.data)}")
        out = super().preprocess(sample)
        scale = float(self.params["intensity_scale"])
        if scale != 1.0:
            out *= np.float32(scale)
        return out

    def postprocess(self, reduced: Mapping[str, np.ndarray], sample_meta: Mapping[str, Any]) -> SemanticPrediction:
        """Crop the padded ``(D, H, W)`` maps back to the sample's depth, height and width."""
        d, h, w = (int(sample_meta[k]) for k in ("depth", "height", "width"))
        labels, conf = reduced["labels"], reduced.get("confidence")
        return SemanticPrediction(
            labels=labels[..., :d, :h, :w],
            confidence=None if conf is None else conf[..., :d, :h, :w].astype(np.float32),
        )

    def encode_target(self, mask: np.ndarray) -> np.ndarray:
        """A label volume ``(D, H, W)`` (or ``(D, H, W, 1)``) -> int64 ``(D, H, W)``.

        Float label files are common (MSD's hippocampus_003 label is float32): they are
        accepted when every value is a whole number.
        """
        target = np.asarray(mask)
        if target.ndim == 4 and target.shape[-1] == 1:
            target = target[..., 0]
        if target.ndim != 3:
            raise InputError(f"unet3d takes label volumes (D, H, W); got shape {target.shape}")
        if target.dtype.kind == "f" and not np.array_equal(target, np.round(target)):
            raise InputError("label volume holds non-integer values")
        # The base class reads a 3D array as (H, W, C); its range check serves any rank.
        return self.check_target_values(target.astype(np.int64))
