"""The window plan and the blend weights, on scenes small enough to check by hand."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from raysegment.tiling.plan import GAUSSIAN_FLOOR, TilePlan, Window, blend_weights, plan_windows, validate_tiling

# (shape, tile, overlap): odd sizes, exact fits, scenes smaller than a tile, overlap 0 and 1, 3D.
PLANS = [
    ((37, 53), 16, 5),
    ((32, 32), 8, 0),
    ((9, 7), 16, 4),
    ((32, 32), 32, 8),
    ((20, 23), 6, 1),
    ((5, 300), 256, 32),
    ((11, 13, 17), (5, 6, 7), (2, 1, 3)),
    ((4, 30, 9), 8, 3),
]


def test_hand_worked_plan() -> None:
    # Axis 0: 10 rows, tile 4, stride 3 -> starts 0, 3 and 6 (the last one shifted back from 9).
    # Axis 1: 7 columns -> starts 0 and 3 (= 7 - 4, which here is also one stride).
    plan = TilePlan.for_shape((10, 7), tile=4, overlap=1)
    assert plan.tile == (4, 4) and plan.overlap == (1, 1) and plan.stride == (3, 3)
    assert plan.axis_starts(0) == (0, 3, 6) and plan.axis_starts(1) == (0, 3)
    assert [w.start for w in plan.windows] == [(0, 0), (0, 3), (3, 0), (3, 3), (6, 0), (6, 3)]
    assert [w.index for w in plan.windows] == list(range(6))
    assert all(w.size == (4, 4) for w in plan.windows)
    assert plan.grid == (3, 2) and len(plan) == 6


def test_last_window_is_shifted_back_not_padded() -> None:
    plan = plan_windows((11, 8), tile=4, overlap=0)
    assert plan.axis_starts(0) == (0, 4, 7)  # 8 + 4 would pass the edge at 11
    assert plan.axis_starts(1) == (0, 4)  # an exact fit adds no extra window
    assert max(w.stop[0] for w in plan.windows) == 11


def test_window_helpers() -> None:
    w = Window(index=3, start=(2, 5, 0), size=(4, 6, 3))
    assert w.stop == (6, 11, 3)
    assert w.slices() == (slice(2, 6), slice(5, 11), slice(0, 3))
    scene = np.arange(8 * 12 * 3).reshape(8, 12, 3)
    assert scene[w.slices()].shape == w.size


@pytest.mark.parametrize(("shape", "tile", "overlap"), PLANS)
def test_windows_cover_the_scene_inside_its_bounds(shape, tile, overlap) -> None:
    plan = TilePlan.for_shape(shape, tile, overlap)
    count = np.zeros(shape, dtype=np.int32)
    for w in plan.windows:
        assert all(0 <= s and e <= n for s, e, n in zip(w.start, w.stop, shape))
        # Full tile size unless the scene is smaller than the tile on that axis.
        assert w.size == tuple(min(n, t) for n, t in zip(shape, plan.tile))
        count[w.slices()] += 1
    assert count.min() >= 1
    for axis in range(plan.ndim):
        starts = np.array(plan.axis_starts(axis))
        gaps = np.diff(starts)
        assert starts[0] == 0 and np.all(gaps > 0) and np.all(gaps <= plan.stride[axis])
        assert starts[-1] + min(shape[axis], plan.tile[axis]) == shape[axis]


@pytest.mark.parametrize(("shape", "tile", "overlap"), PLANS)
def test_raster_order_last_axis_fastest(shape, tile, overlap) -> None:
    plan = TilePlan.for_shape(shape, tile, overlap)
    starts = [w.start for w in plan.windows]
    assert starts == sorted(starts) and len(set(starts)) == len(starts)
    assert len(plan) == math.prod(plan.grid)


def test_scene_smaller_than_tile_gets_one_window_of_its_size() -> None:
    plan = TilePlan.for_shape((5, 300), 256, 32)
    assert [w.start for w in plan.windows] == [(0, 0), (0, 44)]
    assert all(w.size == (5, 256) for w in plan.windows)
    (only,) = TilePlan.for_shape((32, 32), 32, 8).windows
    assert only.start == (0, 0) and only.size == (32, 32)


def test_int_and_tuple_arguments_agree() -> None:
    a = TilePlan.for_shape((40, 50, 60), 16, 4)
    b = plan_windows([40, 50, 60], (16, 16, 16), [4, 4, 4])
    assert a == b and a.windows == b.windows
    assert TilePlan((40, 50, 60), (16,) * 3, (4,) * 3).windows == a.windows
    assert hash(a) == hash(b)


@pytest.mark.parametrize(
    ("shape", "tile", "overlap", "message"),
    [
        ((100,), 16, 4, "2D (H, W) or 3D"),
        ((2, 3, 4, 5), 2, 0, "2D (H, W) or 3D"),
        ((64, 64), (16, 16, 16), 4, "tile has 3 axes but the scene has 2"),
        ((64, 64), 16, (4, 4, 4), "overlap has 3 axes but the scene has 2"),
        ((64, 0), 16, 4, "scene shape must be positive"),
        ((64, 64), 0, 0, "tile must be positive"),
        ((64, 64), 16, 16, "overlap must be in [0, tile)"),
        ((64, 64), 16, -1, "overlap must be in [0, tile)"),
        ((64, 64), 16.5, 4, "tile must be an integer"),
    ],
)
def test_plan_rejects_bad_arguments(shape, tile, overlap, message) -> None:
    with pytest.raises(ValueError, match=re.escape(message)) as err:
        TilePlan.for_shape(shape, tile, overlap)
    assert "\n" not in str(err.value)


def test_validate_tiling_accepts_sound_options() -> None:
    validate_tiling(256, 32)
    validate_tiling(64, 32)  # exactly twice is allowed
    validate_tiling((32, 256, 256), (8, 32, 32))
    validate_tiling((128, 128), 16)


@pytest.mark.parametrize(
    ("tile", "overlap", "message"),
    [
        (256, 200, "--tile 256 must be at least twice --overlap 200"),
        (256, 0, "--overlap 0 must be positive"),
        (256, -4, "--overlap -4 must be positive"),
        (0, 4, "--tile 0 must be positive"),
        ((256, 64), (32, 40), "--tile 64 must be at least twice --overlap 40"),
        ((256, 256), (32, 32, 32), "--tile has 2 values but --overlap has 3"),
    ],
)
def test_validate_tiling_rejects_in_one_line(tile, overlap, message) -> None:
    with pytest.raises(ValueError) as err:
        validate_tiling(tile, overlap)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_gaussian_weights_match_the_formula() -> None:
    w = blend_weights((9, 16), (2, 2), "gaussian", sigma_scale=0.125)
    assert w.shape == (9, 16) and w.dtype == np.float32
    expected = []
    for n in (9, 16):
        x = np.arange(n) - (n - 1) / 2
        g = np.exp(-(x**2) / (2 * (0.125 * n) ** 2))
        expected.append(g / g.max())
    ref = np.maximum(np.outer(*expected), GAUSSIAN_FLOOR)
    np.testing.assert_allclose(w, ref, rtol=1e-6)
    assert w.max() == pytest.approx(1.0) and w[4, 7] == w[4, 8] == w.max()  # even axis: two centre columns
    np.testing.assert_array_equal(w, w[::-1, ::-1])
    assert w.min() == pytest.approx(GAUSSIAN_FLOOR)  # corners are clipped, not zero


def test_gaussian_3d_is_separable_and_wider_sigma_is_flatter() -> None:
    w = blend_weights((7, 9, 11), (1, 1, 1), "gaussian", sigma_scale=1.0)  # no clipping at this sigma
    assert w.shape == (7, 9, 11) and w.min() > GAUSSIAN_FLOOR
    c = (3, 4, 5)
    along = [w[:, c[1], c[2]], w[c[0], :, c[2]], w[c[0], c[1], :]]
    np.testing.assert_allclose(w, np.einsum("i,j,k->ijk", *along), rtol=1e-6)
    narrow = blend_weights((7, 9, 11), (1, 1, 1), "gaussian", sigma_scale=0.125)
    assert narrow[0, 0, 0] < w[0, 0, 0]


def test_linear_weights_ramp_over_the_overlap() -> None:
    w = blend_weights((6, 10), (2, 2), "linear")
    ramp = np.array([1 / 3, 2 / 3, 1, 1, 1, 1, 1, 1, 2 / 3, 1 / 3], dtype=np.float32)
    np.testing.assert_allclose(w[2], ramp, rtol=1e-6)  # an interior row: ramp along the columns only
    np.testing.assert_allclose(w[0], ramp / 3, rtol=1e-6)  # border row: both ramps multiply
    assert w.dtype == np.float32 and w.min() > 0
    # A window shorter than two overlaps ramps from both ends and stays positive.
    np.testing.assert_allclose(blend_weights((3, 1), (4, 0), "linear")[:, 0], [0.2, 0.4, 0.2], rtol=1e-6)
    # No overlap: no ramp.
    np.testing.assert_array_equal(blend_weights((4, 5), (0, 0), "linear"), np.ones((4, 5)))


def test_constant_weights_and_cache() -> None:
    w = blend_weights((4, 5, 6), (1, 1, 1), "constant")
    np.testing.assert_array_equal(w, np.ones((4, 5, 6), dtype=np.float32))
    again = blend_weights([4, 5, 6], [1, 1, 1], "constant")
    assert again is w  # cached: one array per distinct window
    with pytest.raises(ValueError):
        w[0, 0, 0] = 2.0  # shared through the cache, so read-only


@pytest.mark.parametrize(
    ("size", "overlap", "kwargs", "message"),
    [
        ((8, 8), (2, 2), {"mode": "cosine"}, "blend mode must be one of"),
        ((8, 8), (2,), {}, "overlap has 1 axes but size has 2"),
        ((8, 0), (2, 2), {}, "size must be positive"),
        ((8, 8), (2, 2), {"sigma_scale": 0.0}, "sigma_scale must be positive"),
    ],
)
def test_blend_weights_rejects_bad_arguments(size, overlap, kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        blend_weights(size, overlap, **kwargs)
