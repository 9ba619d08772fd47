"""Each ESPNet plugin fits the tiny EM set (membrane vs cell) in a few dozen Adam steps.

ESPNet-A/B/C classify at stride 8 and up-sample bilinearly, so at 64x64 (an 8x8 class map)
they cannot draw 1-2 px membranes: their loss floors near 0.5 nats, barely below the class
prior's 0.545. They run at 128x128 (a 16x16 map), where they reach ~0.44. ESPNet, whose
decoder returns to full resolution, runs at 64x64; its class-wide (here 2-channel) decoder
starts slowly, hence lr 1e-2 and 60 steps.
"""

from __future__ import annotations

from typing import Any, ClassVar

import pytest

from raysegment.testing import ModelLearns


class TestESPNetLearns(ModelLearns):
    model_name = "espnet"
    params: ClassVar[dict[str, Any]] = {"in_channels": 1, "num_classes": 2, "p": 1, "q": 1}
    steps = 60
    lr = 1e-2


class TestESPNetCLearns(ModelLearns):
    model_name = "espnet_c"
    params: ClassVar[dict[str, Any]] = {"in_channels": 1, "num_classes": 2, "p": 2, "q": 2}
    size = 128
    lr = 3e-3
    steps = 40


class TestESPNetBLearns(ModelLearns):
    pytestmark: ClassVar[list[Any]] = [pytest.mark.slow]  # an ablation variant; 128x128 costs ~15 s
    model_name = "espnet_b"
    params: ClassVar[dict[str, Any]] = {"in_channels": 1, "num_classes": 2, "p": 1, "q": 1}
    size = 128
    lr = 5e-3
    steps = 40


class TestESPNetALearns(ModelLearns):
    pytestmark: ClassVar[list[Any]] = [pytest.mark.slow]  # an ablation variant; 128x128 costs ~15 s
    model_name = "espnet_a"
    params: ClassVar[dict[str, Any]] = {"in_channels": 1, "num_classes": 2, "p": 1, "q": 1}
    size = 128
    lr = 5e-3
    steps = 40
