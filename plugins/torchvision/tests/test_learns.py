"""Each model fits the tiny EM set (membrane vs cell) as far as its output grid allows.

``ModelLearns`` asks for the mean loss of the last 5 Adam steps to fall below 0.7x the first; these
runs take 30 steps at lr 1e-3. These models cannot get there at 64 px: their logits are a bilinear
upsampling of a grid at 1/8 (ResNets, LR-ASPP's low branch, the aux heads) or 1/16
(DeepLabV3-MobileNet) of the input, and the best loss ANY logit map on an 8x8 grid reaches on the
four 64 px slices is 0.498, about the class-prior entropy (23% membrane), while they start at
0.63-0.99. So the check here is what
``ModelLearns`` checks for a full-resolution model, measured against the reachable floor instead
of 0: the loss must close at least 60% of the gap between its first value and the best loss
reachable on the model's output grid (out + 0.5 x aux with the aux head). For a U-Net (floor 0)
that would be stricter than 0.7x. LR-ASPP runs at 128 px, where that floor (0.436, 16x16 grid) is
clearly below the class prior (0.534), so it shows membranes being fitted, not only the prior.
The ResNet models cost 1.5-2 s per step on one core: slow.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from raysegment.testing import create_model, learning_curve, tiny_em_set

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


def assert_closes_gap(model_name: str, params: dict[str, Any], *, size: int = 64, grid_stride: int = 8,
                      steps: int = 30, lr: float = 1e-3) -> None:
    """``ModelLearns``'s run with the reachable floor of the model's output grid in place of 0 (see the module doc).

    ``grid_stride`` is the stride of the coarsest logit grid the "out" loss sees.
    """
    try:
        images, targets = tiny_em_set(size=size)
    except FileNotFoundError as exc:
        pytest.skip(f"{exc} (../shared/data is checked out beside the repo in CI)")
    model = create_model(model_name, params)
    losses = learning_curve(model, images, targets, steps=steps, lr=lr)
    assert all(np.isfinite(losses)), f"non-finite loss: {losses}"
    floor = grid_floor(size, size // grid_stride)
    if model.params.get("aux_loss"):
        floor += 0.5 * grid_floor(size, size // 8)  # the aux heads sit at stride 8
    first, tail = losses[0], float(np.mean(losses[-5:]))
    closed = (first - tail) / (first - floor)
    print(f"{model_name}: loss {first:.4f} -> {tail:.4f}, floor {floor:.4f}, closed {closed:.0%}")
    assert closed >= MIN_GAP_CLOSED, (
        f"{model_name} did not learn: loss {first:.4f} -> {tail:.4f} (mean of last 5) in {steps} "
        f"Adam steps, lr {lr}; the floor of its output grid is {floor:.4f}, so it closed {closed:.0%} "
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


_TWO = {"in_channels": 1, "num_classes": 2}
_AUX = {**_TWO, "aux_loss": True}
SLOW = pytest.mark.slow

CASES = [
    pytest.param("lraspp_mobilenet_v3_large", _TWO, {"size": 128}, id="lraspp_mobilenet_v3_large"),
    pytest.param("deeplabv3_mobilenet_v3_large", _AUX, {"grid_stride": 16}, id="deeplabv3_mobilenet_v3_large"),
    # One ResNet backbone per head, once with the aux head and once without: the -101 builds
    # differ from these only in backbone depth, which the conformance kit runs (30 s each here).
    pytest.param("fcn_resnet50", _AUX, {}, marks=SLOW, id="fcn_resnet50"),
    pytest.param("deeplabv3_resnet50", _TWO, {}, marks=SLOW, id="deeplabv3_resnet50"),
]


@pytest.mark.parametrize(("model", "params", "settings"), CASES)
def test_learns(model: str, params: dict[str, Any], settings: dict[str, Any]) -> None:
    assert_closes_gap(model, params, **settings)
