"""The classic plugins keep the raysegment plugin contract: one test per conformance check and model."""

from __future__ import annotations

from typing import Any, ClassVar

from raysegment.testing import ModelConformance


class TestFCN32sConformance(ModelConformance):
    model_name = "fcn32s"
    # dropout stays at the paper's 0.5: it must be off in eval mode (the determinism check)
    params: ClassVar[dict[str, Any]] = {"in_channels": 2, "num_classes": 3, "width_divisor": 16}


class TestFCN16sConformance(ModelConformance):
    model_name = "fcn16s"
    params: ClassVar[dict[str, Any]] = {"in_channels": 1, "num_classes": 2, "width_divisor": 16}


class TestFCN8sConformance(ModelConformance):
    model_name = "fcn8s"
    params: ClassVar[dict[str, Any]] = {"in_channels": 3, "num_classes": 4, "width_divisor": 16,
                                        "learn_upsampling": False}


class TestSegNetConformance(ModelConformance):
    model_name = "segnet"
    params: ClassVar[dict[str, Any]] = {"in_channels": 1, "num_classes": 2, "width_divisor": 16}
