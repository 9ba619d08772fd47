"""The U-Net-family plugins keep the raysegment plugin contract (one test per conformance check) and learn.

``unet3d`` is a volume model: the kit checks it on (D, H, W, C) samples, and it learns on two real
hippocampus MRI volumes.
"""

from __future__ import annotations

from typing import Any, ClassVar

import pytest

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


# Each row states its steps, learning rate and bars, as measured; the 2D rows keep the 0.7x first-step
# bar alone, unet3d adds a class-prior bar of its own.
LEARNS = [
    # Without BN the plain U-Net needs more than 30 Adam steps to leave the class-prior plateau.
    ModelLearns.case("unet", {"depth": 2, "base_channels": 8, "batch_norm": True}, steps=30, lr=3e-3,
                     max_prior_ratio=None),
    ModelLearns.case("resunet", ResUNet.smoke_params, steps=30, lr=3e-3, max_prior_ratio=None),  # 1 sigmoid class
    ModelLearns.case("denseunet", DenseUNet.smoke_params, steps=30, lr=3e-3, max_prior_ratio=None),
    # Two float32 MRI volumes, 3 classes, centre 32^3 crops. ~90% background: the class frequencies
    # alone give a loss of ~0.36; require clearly better.
    ModelLearns.case("unet3d", {**UNet3D.smoke_params, "intensity_scale": 0.00025}, dataset="hippocampus", size=32,
                     steps=30, lr=1e-2, max_prior_ratio=0.6),
]


@pytest.mark.parametrize(("model", "params", "settings"), LEARNS)
def test_learns(model: str, params: dict[str, Any], settings: dict[str, Any]) -> None:
    ModelLearns.check(model, params, **settings)
