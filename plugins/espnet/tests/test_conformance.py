"""Every ESPNet plugin keeps the raysegment plugin contract: one test per conformance check."""

from __future__ import annotations

from typing import Any, ClassVar

from raysegment.testing import ModelConformance

# Small but complete: every level, reinforcement and decoder present; one ESP module per level.
SMALL: dict[str, Any] = {"in_channels": 2, "num_classes": 3, "p": 1, "q": 1}


class TestESPNetConformance(ModelConformance):
    model_name = "espnet"
    params: ClassVar[dict[str, Any]] = {**SMALL, "num_classes": 5}  # decoder ESP keeps all 5 branches


class TestESPNetCConformance(ModelConformance):
    model_name = "espnet_c"
    params: ClassVar[dict[str, Any]] = SMALL


class TestESPNetBConformance(ModelConformance):
    model_name = "espnet_b"
    params: ClassVar[dict[str, Any]] = SMALL


class TestESPNetAConformance(ModelConformance):
    model_name = "espnet_a"
    params: ClassVar[dict[str, Any]] = SMALL
