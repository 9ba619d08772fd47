"""Each classic model fits four ISBI-2012 EM slices (membrane vs cell) from scratch.

SegNet (batch-normalised, full-resolution decoder) passes the kit's 0.7x first-step bar at 64 px.

The FCNs need more: their logits are bilinear upsamplings of stride-8/16/32 score maps, so a
1-2 px membrane at 64 px cannot be drawn, and their zero-initialised scoring layers (the paper's)
start at exactly ln 2, the best uninformed loss, where the kit measures its ratio from. Measured on
this set at 256 px: predicting the class prior alone gives 0.752x ln 2, and even free per-cell
logits under the fixed 32x bilinear upsampling (an oracle for FCN-32s) reach only 0.700x. So the FCN
tests run at 256 px with dropout off and ask for < 0.73x after 60 Adam steps: clearly below the
prior, i.e. the network learned spatial structure (measured: 0.712x, 0.710x, 0.708x for
FCN-32s/16s/8s; 0.707x, 0.696x, 0.678x after 100 steps). A VGG16 without batch norm trained from
scratch is slow; the paper always starts from ImageNet weights.

Each row states its steps, learning rate and bars (measured at those values): the kit's defaults
are made for small models, and its class-prior bar is off here (the FCNs' 0.73x is the bar above).
"""

from __future__ import annotations

from typing import Any

import pytest

from raysegment.testing import ModelLearns

_FCN_PARAMS: dict[str, Any] = {"in_channels": 1, "num_classes": 2, "width_divisor": 16, "dropout": 0.0}
# ~12-15 s each on an idle core
_FCN: dict[str, Any] = {"slow": True, "size": 256, "steps": 60, "lr": 1e-3, "max_ratio": 0.73, "max_prior_ratio": None}

CASES = [
    ModelLearns.case("fcn32s", _FCN_PARAMS, **_FCN),
    ModelLearns.case("fcn16s", _FCN_PARAMS, **_FCN),
    ModelLearns.case("fcn8s", _FCN_PARAMS, **_FCN),
    # measured: 0.59x after 30 steps (0.71x at lr 1e-3)
    ModelLearns.case("segnet", {"in_channels": 1, "num_classes": 2, "width_divisor": 16}, steps=30, lr=3e-3,
                     max_prior_ratio=None),
]


@pytest.mark.parametrize(("model", "params", "settings"), CASES)
def test_learns(model: str, params: dict[str, Any], settings: dict[str, Any]) -> None:
    ModelLearns.check(model, params, **settings)
