"""The U-Net plugin keeps the raysegment plugin contract: one test per conformance check."""

from __future__ import annotations

from typing import Any, ClassVar

from raysegment.testing import ModelConformance


class TestUNetConformance(ModelConformance):
    model_name = "unet"
    # Small but complete: batch norm and dropout must both behave in eval mode.
    params: ClassVar[dict[str, Any]] = {"depth": 2, "base_channels": 4, "batch_norm": True, "dropout": 0.2}
