"""The U-Net-family plugins keep the raysegment plugin contract (one test per conformance check) and learn.

``unet3d`` is a volume model: the kit checks it on (D, H, W, C) samples, and it learns on two real
hippocampus MRI volumes.
"""

from __future__ import annotations

from typing import Any, ClassVar

from raysegment.testing import ModelConformance, ModelLearns
from raysegment_unet import DenseUNet, ResUNet, UNet3D


class TestUNetConformance(ModelConformance):
    model_name = "unet"
    # Small but complete: batch norm and dropout must both behave in eval mode.
    params: ClassVar[dict[str, Any]] = {"depth": 2, "base_channels": 4, "batch_norm": True, "dropout": 0.2}


class TestResUNetConformance(ModelConformance):
    model_name = "resunet"
    # The paper's single-class (sigmoid) mode with its 3 bands.
    params: ClassVar[dict[str, Any]] = dict(ResUNet.smoke_params)


class TestResUNetMultiClassConformance(ModelConformance):
    model_name = "resunet"
    params: ClassVar[dict[str, Any]] = {**ResUNet.smoke_params, "in_channels": 5, "num_classes": 3}


class TestDenseUNetConformance(ModelConformance):
    model_name = "denseunet"
    params: ClassVar[dict[str, Any]] = dict(DenseUNet.smoke_params)


class TestUNet3DConformance(ModelConformance):
    model_name = "unet3d"
    params: ClassVar[dict[str, Any]] = dict(UNet3D.smoke_params)


class TestUNet3DSigmoidConformance(ModelConformance):
    model_name = "unet3d"
    # One sigmoid map, two bands, a fixed intensity scale.
    params: ClassVar[dict[str, Any]] = {**UNet3D.smoke_params, "in_channels": 2, "num_classes": 1,
                                        "intensity_scale": 0.5}


class TestUNetLearns(ModelLearns):
    model_name = "unet"
    # Without BN the plain U-Net needs more than 30 Adam steps to leave the class-prior plateau.
    params: ClassVar[dict[str, Any]] = {"depth": 2, "base_channels": 8, "batch_norm": True}
    lr: ClassVar[float] = 3e-3


class TestResUNetLearns(ModelLearns):
    model_name = "resunet"
    params: ClassVar[dict[str, Any]] = dict(ResUNet.smoke_params)  # 1 sigmoid class, 3 bands
    lr: ClassVar[float] = 3e-3


class TestDenseUNetLearns(ModelLearns):
    model_name = "denseunet"
    params: ClassVar[dict[str, Any]] = dict(DenseUNet.smoke_params)
    lr: ClassVar[float] = 3e-3


class TestUNet3DLearns(ModelLearns):
    model_name = "unet3d"
    dataset: ClassVar[str] = "hippocampus"  # two float32 MRI volumes, 3 classes, centre 32^3 crops
    size: ClassVar[int] = 32
    params: ClassVar[dict[str, Any]] = {**UNet3D.smoke_params, "intensity_scale": 0.00025}
    lr: ClassVar[float] = 1e-2
    # ~90% background: the class frequencies alone give a loss of ~0.36; require clearly better.
    max_prior_ratio: ClassVar[float | None] = 0.6
