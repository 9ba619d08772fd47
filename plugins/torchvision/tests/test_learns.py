"""Each model fits the tiny EM set (membrane vs cell) as far as its output grid allows.

``ModelLearns`` asks for the mean loss of the last 5 of 30 Adam steps to fall below 0.7x the
first. These models cannot get there at 64 px: their logits are a bilinear upsampling of a grid
at 1/8 (ResNets, LR-ASPP's low branch, the aux heads) or 1/16 (DeepLabV3-MobileNet) of the input,
and the best loss ANY logit map on an 8x8 grid reaches on the four 64 px slices is 0.498, about
the class-prior entropy (23% membrane), while they start at 0.63-0.99. So the check here is what
``ModelLearns`` checks for a full-resolution model, measured against the reachable floor instead
of 0: the loss must close at least 60% of the gap between its first value and the best loss
reachable on the model's output grid (out + 0.5 x aux with the aux head). For a U-Net (floor 0)
that would be stricter than 0.7x. LR-ASPP runs at 128 px, where that floor (0.436, 16x16 grid) is
clearly below the class prior (0.534), so it shows membranes being fitted, not only the prior.
The ResNet models cost 1.5-2 s per step on one core: slow.
"""

from __future__ import annotations

import functools
from typing import Any, ClassVar

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from raysegment.testing import ModelLearns, create_model, learning_curve, tiny_em_set

#: fraction of the gap between the first loss and the reachable floor that training must close
MIN_GAP_CLOSED = 0.6


@functools.lru_cache(maxsize=None)
def grid_floor(size: int, grid: int) -> float:
    """The lowest cross-entropy on the EM set of any logits that are bilinear upsamplings of a grid x grid map."""
    _, targets = tiny_em_set(size=size)
    target = torch.from_numpy(targets)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        logits = torch.zeros(len(targets), 2, grid, grid, requires_grad=True)
        optim = torch.optim.Adam([logits], lr=0.1)
        for _ in range(300):  # convex in the logits: Adam gets within ~1e-3 of the optimum
            optim.zero_grad()
            loss = F.cross_entropy(F.interpolate(logits, size=(size, size), mode="bilinear", align_corners=False),
                                   target)
            loss.backward()
            optim.step()
    return float(loss.detach())


class GridFloorLearns(ModelLearns):
    """``ModelLearns`` with the reachable floor of the model's output grid in place of 0 (see the module doc)."""

    #: stride of the coarsest logit grid the "out" loss sees
    grid_stride: ClassVar[int] = 8

    def test_learns(self) -> None:
        try:
            images, targets = tiny_em_set(size=self.size)
        except FileNotFoundError as exc:
            pytest.skip(f"{exc} (../shared/data is checked out beside the repo in CI)")
        model = create_model(str(self.model_name), dict(self.params))
        losses = learning_curve(model, images, targets, steps=self.steps, lr=self.lr)
        assert all(np.isfinite(losses)), f"non-finite loss: {losses}"
        floor = grid_floor(self.size, self.size // self.grid_stride)
        if model.params.get("aux_loss"):
            floor += 0.5 * grid_floor(self.size, self.size // 8)  # the aux heads sit at stride 8
        first, tail = losses[0], float(np.mean(losses[-5:]))
        closed = (first - tail) / (first - floor)
        print(f"{self.model_name}: loss {first:.4f} -> {tail:.4f}, floor {floor:.4f}, closed {closed:.0%}")
        assert closed >= MIN_GAP_CLOSED, (
            f"{self.model_name} did not learn: loss {first:.4f} -> {tail:.4f} (mean of last 5) in {self.steps} "
            f"Adam steps, lr {self.lr}; the floor of its output grid is {floor:.4f}, so it closed {closed:.0%} "
            f"of the gap, need {MIN_GAP_CLOSED:.0%}"
        )


def test_grid_floor_is_about_the_class_prior_at_64px() -> None:
    try:
        _, targets = tiny_em_set(size=64)
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    p = targets.mean()
    prior = float(-(p * np.log(p) + (1 - p) * np.log(1 - p)))
    assert abs(grid_floor(64, 8) - prior) < 0.05
    assert grid_floor(128, 16) < prior - 0.08  # at 128 px a stride-8 grid can resolve membranes


class TestLRASPPLearns(GridFloorLearns):
    model_name = "lraspp_mobilenet_v3_large"
    params: ClassVar[dict[str, Any]] = {"in_channels": 1, "num_classes": 2}
    size = 128


class TestDeepLabV3MobileNetLearns(GridFloorLearns):
    model_name = "deeplabv3_mobilenet_v3_large"
    params: ClassVar[dict[str, Any]] = {"in_channels": 1, "num_classes": 2, "aux_loss": True}
    grid_stride = 16


class TestFCNResNet50Learns(GridFloorLearns):
    pytestmark = [pytest.mark.slow]
    model_name = "fcn_resnet50"
    params: ClassVar[dict[str, Any]] = {"in_channels": 1, "num_classes": 2, "aux_loss": True}


class TestFCNResNet101Learns(GridFloorLearns):
    pytestmark = [pytest.mark.slow]
    model_name = "fcn_resnet101"
    params: ClassVar[dict[str, Any]] = {"in_channels": 1, "num_classes": 2}


class TestDeepLabV3ResNet50Learns(GridFloorLearns):
    pytestmark = [pytest.mark.slow]
    model_name = "deeplabv3_resnet50"
    params: ClassVar[dict[str, Any]] = {"in_channels": 1, "num_classes": 2, "aux_loss": True}


class TestDeepLabV3ResNet101Learns(GridFloorLearns):
    pytestmark = [pytest.mark.slow]
    model_name = "deeplabv3_resnet101"
    params: ClassVar[dict[str, Any]] = {"in_channels": 1, "num_classes": 2}
