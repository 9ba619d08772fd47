"""Each classic model fits four ISBI-2012 EM slices (membrane vs cell) from scratch.

SegNet (batch-normalised, full-resolution decoder) passes the kit's default bar at 64 px.

The FCNs need more: their logits are bilinear upsamplings of stride-8/16/32 score maps, so a
1-2 px membrane at 64 px cannot be drawn, and their zero-initialised scoring layers (the paper's)
start at exactly ln 2, the best uninformed loss, where the kit measures its ratio from. Measured on
this set at 256 px: predicting the class prior alone gives 0.752x ln 2, and even free per-cell
logits under the fixed 32x bilinear upsampling (an oracle for FCN-32s) reach only 0.700x. So the FCN
tests run at 256 px with dropout off and ask for < 0.73x after 60 Adam steps: clearly below the
prior, i.e. the network learned spatial structure (measured: 0.712x, 0.710x, 0.708x for
FCN-32s/16s/8s; 0.707x, 0.696x, 0.678x after 100 steps). A VGG16 without batch norm trained from
scratch is slow; the paper always starts from ImageNet weights.
"""

from __future__ import annotations

from typing import Any, ClassVar

import pytest

from raysegment.testing import ModelLearns

_FCN_PARAMS: dict[str, Any] = {"in_channels": 1, "num_classes": 2, "width_divisor": 16, "dropout": 0.0}


class _FCNLearns(ModelLearns):
    pytestmark: ClassVar[list[Any]] = [pytest.mark.slow]  # ~12-15 s each on an idle core
    params: ClassVar[dict[str, Any]] = _FCN_PARAMS
    size = 256
    steps = 60
    max_ratio = 0.73


class TestFCN32sLearns(_FCNLearns):
    model_name = "fcn32s"


class TestFCN16sLearns(_FCNLearns):
    model_name = "fcn16s"


class TestFCN8sLearns(_FCNLearns):
    model_name = "fcn8s"


class TestSegNetLearns(ModelLearns):
    model_name = "segnet"
    params: ClassVar[dict[str, Any]] = {"in_channels": 1, "num_classes": 2, "width_divisor": 16}
    lr = 3e-3  # measured: 0.59x after 30 steps (0.71x at the default 1e-3)
