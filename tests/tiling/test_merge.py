"""Blending window logits back: exact on consistent logits, strips equal to the whole array, bounded rows."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from raysegment.tiling.merge import ArrayMerger, Strip, StripMerger
from raysegment.tiling.plan import TilePlan, Window, blend_weights

K = 3
# (shape, tile, overlap): odd sizes, scenes smaller than a tile, tile == scene, overlap 0 and 1, 3D.
PLANS = [
    ((37, 53), 16, 5),
    ((9, 7), 16, 4),
    ((32, 32), 32, 8),
    ((20, 23), 6, 1),
    ((20, 20), 5, 0),
    ((11, 13, 17), (5, 6, 7), (2, 1, 3)),
    ((4, 30, 9), 8, 3),
]
MODES = ["gaussian", "linear", "constant"]


def _crop(scene: np.ndarray, window: Window) -> np.ndarray:
    return scene[(slice(None), *window.slices())]


def _order(plan: TilePlan, shuffled: bool, seed: int = 0) -> list[Window]:
    windows = list(plan.windows)
    if shuffled:
        np.random.default_rng(seed).shuffle(windows)
    return windows


def _feed_strips(merger: StripMerger, windows: list[Window], logits_of) -> list[Strip]:
    strips: list[Strip] = []
    for w in windows:
        strips += merger.aggregate(w, logits_of(w))
    return strips + merger.finalize()


def _concat(strips: list[Strip]) -> tuple[np.ndarray, np.ndarray]:
    return np.concatenate([s.values for s in strips], axis=1), np.concatenate([s.covered for s in strips])


@pytest.mark.parametrize("shuffled", [False, True], ids=["raster", "shuffled"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("shape", "tile", "overlap"), PLANS)
def test_consistent_windows_merge_back_to_the_scene(shape, tile, overlap, mode, shuffled) -> None:
    plan = TilePlan.for_shape(shape, tile, overlap)
    scene = np.random.default_rng(1).normal(0, 3, size=(K, *shape)).astype(np.float32)
    windows = _order(plan, shuffled)

    array = ArrayMerger(plan, K, mode=mode)
    for w in windows:
        assert array.aggregate(w, _crop(scene, w)) is None
    values, covered = array.finalize()
    assert values.shape == scene.shape and values.dtype == np.float32
    assert covered.all()
    np.testing.assert_allclose(values, scene, rtol=0, atol=1e-5)

    strips = _feed_strips(StripMerger(plan, K, mode=mode), windows, lambda w: _crop(scene, w))
    bands = plan.axis_starts(0) + (shape[0],)
    assert [(s.start, s.stop) for s in strips] == list(zip(bands[:-1], bands[1:]))
    merged, merged_covered = _concat(strips)
    # Same arrival order, same additions in the same order: bit-for-bit the whole-array result.
    np.testing.assert_array_equal(merged, values)
    np.testing.assert_array_equal(merged_covered, covered)


def _reference(plan: TilePlan, per_window: dict[int, np.ndarray], mode: str) -> np.ndarray:
    """sum(w * logits) / sum(w) in float64, pixel by pixel over the windows containing it."""
    num = np.zeros((K, *plan.shape))
    den = np.zeros(plan.shape)
    for w in plan.windows:
        weight = blend_weights(w.size, plan.overlap, mode).astype(np.float64)
        num[(slice(None), *w.slices())] += per_window[w.index] * weight
        den[w.slices()] += weight
    return num / den


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("shape", "tile", "overlap"), [PLANS[0], PLANS[3], PLANS[5]])
def test_disagreeing_windows_are_weighted_averages(shape, tile, overlap, mode) -> None:
    # Independent noise per window: seams show, so misplaced weights would too.
    plan = TilePlan.for_shape(shape, tile, overlap)
    rng = np.random.default_rng(2)
    per_window = {w.index: rng.normal(size=(K, *w.size)).astype(np.float32) for w in plan.windows}
    windows = _order(plan, shuffled=True, seed=3)

    array = ArrayMerger(plan, K, mode=mode)
    for w in windows:
        array.aggregate(w, per_window[w.index])
    values, _ = array.finalize()
    np.testing.assert_allclose(values, _reference(plan, per_window, mode), rtol=0, atol=1e-5)

    merged, _ = _concat(_feed_strips(StripMerger(plan, K, mode=mode), windows, lambda w: per_window[w.index]))
    np.testing.assert_array_equal(merged, values)


def test_two_windows_by_hand() -> None:
    # Columns 0..3 and 3..6; linear ramps over 1 pixel weigh each window's border column 1/2.
    plan = TilePlan.for_shape((1, 7), (1, 4), (0, 1))
    a, b = plan.windows
    merger = ArrayMerger(plan, 1, mode="linear")
    merger.aggregate(a, np.full((1, 1, 4), 1.0))
    merger.aggregate(b, np.full((1, 1, 4), 4.0))
    values, _ = merger.finalize()
    np.testing.assert_allclose(values[0, 0], [1, 1, 1, 2.5, 4, 4, 4])


@pytest.mark.parametrize("shuffled", [False, True], ids=["raster", "shuffled"])
@pytest.mark.parametrize("merger_cls", [ArrayMerger, StripMerger])
def test_skipped_windows_leave_uncovered_pixels_filled(merger_cls, shuffled) -> None:
    plan = TilePlan.for_shape((40, 30), 8, 2)
    scene = np.random.default_rng(4).normal(size=(K, 40, 30)).astype(np.float32)
    # Skip a whole row group (band 2: in raster order no arrived window reaches its end) and a few others.
    skipped = {w.index for w in plan.windows if w.start[0] == plan.axis_starts(0)[2]} | {0, 1, 17}
    expected_covered = np.zeros((40, 30), dtype=bool)
    for w in plan.windows:
        if w.index not in skipped:
            expected_covered[w.slices()] = True
    assert not expected_covered.all()

    merger = merger_cls(plan, K, mode="gaussian", fill_value=-7.0)
    strips = []
    for w in _order(plan, shuffled, seed=5):
        out = merger.skip(w) if w.index in skipped else merger.aggregate(w, _crop(scene, w))
        strips += out or []
    if merger_cls is StripMerger:
        strips += merger.finalize()
        values, covered = _concat(strips)
    else:
        values, covered = merger.finalize()
    np.testing.assert_array_equal(covered, expected_covered)
    np.testing.assert_allclose(values[:, covered], scene[:, covered], rtol=0, atol=1e-5)
    assert np.all(values[:, ~covered] == -7.0)


def test_skipped_row_group_before_its_predecessor_arrives() -> None:
    # Row starts 0, 6, 12. Group 1 is skipped first, so group 0's arrival completes bands 0 and 1
    # at once, and band 1 (rows 6..12) reaches past everything buffered (rows 0..8).
    plan = TilePlan.for_shape((20, 8), 8, 2)
    first, skipped, last = plan.windows
    merger = StripMerger(plan, 1, fill_value=-1.0)
    assert merger.skip(skipped) == []
    strips = merger.aggregate(first, np.full((1, 8, 8), 5.0))
    assert [(s.start, s.stop, s.values.shape) for s in strips] == [(0, 6, (1, 6, 8)), (6, 12, (1, 6, 8))]
    band = strips[1]
    assert band.covered[:2].all() and not band.covered[2:].any()  # rows 6, 7 from window 0 only
    np.testing.assert_array_equal(band.values[0, :, 0], [5, 5, -1, -1, -1, -1])
    assert [(s.start, s.stop) for s in merger.aggregate(last, np.full((1, 8, 8), 5.0))] == [(12, 20)]


@pytest.mark.parametrize("seed", range(12))
def test_random_orders_and_skips_strips_equal_the_whole_array(seed) -> None:
    rng = np.random.default_rng(100 + seed)
    plan = TilePlan.for_shape((30, 21), 6, 2)
    row_starts = plan.axis_starts(0)
    skipped_groups = {row_starts[g] for g in np.flatnonzero(rng.random(len(row_starts)) < 0.3)}
    skipped = {w.index for w in plan.windows if w.start[0] in skipped_groups or rng.random() < 0.2}
    per_window = {w.index: rng.normal(size=(2, *w.size)).astype(np.float32) for w in plan.windows}
    array, strip = ArrayMerger(plan, 2, fill_value=np.nan), StripMerger(plan, 2, fill_value=np.nan)
    strips = []
    for w in _order(plan, shuffled=True, seed=seed):
        if w.index in skipped:
            array.skip(w)
            strips += strip.skip(w)
        else:
            array.aggregate(w, per_window[w.index])
            strips += strip.aggregate(w, per_window[w.index])
    strips += strip.finalize()
    values, covered = array.finalize()
    merged, merged_covered = _concat(strips)
    np.testing.assert_array_equal(merged, values)  # NaN where not covered, in both
    np.testing.assert_array_equal(merged_covered, covered)


@pytest.mark.parametrize("merger_cls", [ArrayMerger, StripMerger])
def test_finalize_refuses_missing_windows(merger_cls) -> None:
    plan = TilePlan.for_shape((20, 20), 8, 2)
    merger = merger_cls(plan, 1)
    for w in plan.windows[:-2]:
        merger.aggregate(w, np.zeros((1, *w.size)))
    with pytest.raises(ValueError, match=r"2 of 9 windows never arrived \(first: 7, 8\)"):
        merger.finalize()
    merger.skip(plan.windows[-2])
    merger.aggregate(plan.windows[-1], np.zeros((1, *plan.windows[-1].size)))
    merger.finalize()
    with pytest.raises(RuntimeError, match="already finalized"):
        merger.aggregate(plan.windows[0], np.zeros((1, 8, 8)))


@pytest.mark.parametrize("merger_cls", [ArrayMerger, StripMerger])
def test_rejects_wrong_windows_and_shapes(merger_cls) -> None:
    plan = TilePlan.for_shape((20, 20), 8, 2)
    merger = merger_cls(plan, 2)
    w = plan.windows[4]
    with pytest.raises(ValueError, match=r"logits have shape \(3, 8, 8\), expected \(2, 8, 8\)"):
        merger.aggregate(w, np.zeros((3, 8, 8)))
    foreign = TilePlan.for_shape((20, 20), 8, 3).windows[4]
    with pytest.raises(ValueError, match="not part of this merger's plan"):
        merger.aggregate(foreign, np.zeros((2, 8, 8)))
    merger.aggregate(w, np.zeros((2, 8, 8)))
    with pytest.raises(ValueError, match="window 4 arrived twice"):
        merger.skip(w)
    assert merger.arrived == 1  # the rejected calls changed nothing
    with pytest.raises(ValueError, match="blend mode"):
        merger_cls(plan, 2, mode="cosine")
    with pytest.raises(ValueError, match="channels must be positive"):
        merger_cls(plan, 0)


def test_float64_accumulation() -> None:
    plan = TilePlan.for_shape((12, 12, 12), 6, 2)
    scene = np.random.default_rng(6).normal(size=(2, 12, 12, 12))
    merger = StripMerger(plan, 2, dtype=np.float64)
    values, _ = _concat(_feed_strips(merger, list(plan.windows), lambda w: _crop(scene, w)))
    assert values.dtype == np.float64
    np.testing.assert_allclose(values, scene, rtol=0, atol=1e-12)


TALL = ((5000, 64), 64, 16)  # one window per row group, stride 48: 104 row groups


def test_tall_scene_in_raster_order_holds_at_most_tile_plus_stride_rows() -> None:
    plan = TilePlan.for_shape(*TALL)
    scene = np.random.default_rng(7).normal(size=(2, 5000, 64)).astype(np.float32)
    merger = StripMerger(plan, 2, max_pending_rows=64 + 48)
    merged = []
    for w in plan.windows:
        strips = merger.aggregate(w, _crop(scene, w))
        # Each window completes its row group, so its band comes out at once.
        assert [s.start for s in strips] == [w.start[0]]
        assert merger.buffered_rows <= 64
        merged += strips
    assert merger.finalize() == []
    assert merger.peak_buffered_rows <= 64 + 48
    np.testing.assert_allclose(_concat(merged)[0], scene, rtol=0, atol=1e-5)


def test_tall_scene_memory_is_a_small_fraction_of_the_scene() -> None:
    # numpy reports its buffers to tracemalloc: the merger's own allocations, strips included.
    plan = TilePlan.for_shape(*TALL)
    scene = np.random.default_rng(11).normal(size=(2, 5000, 64)).astype(np.float32)
    whole_scene_bytes = (2 + 1) * 5000 * 64 * 4  # what ArrayMerger's buffers take
    blend_weights((64, 64), (16, 16))  # warm the cache outside the measurement
    tracemalloc.start()
    try:
        merger = StripMerger(plan, 2)
        rows = sum(s.stop - s.start for w in plan.windows for s in merger.aggregate(w, _crop(scene, w)))
        merger.finalize()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert rows == 5000
    assert peak < whole_scene_bytes / 10


def test_wide_rows_in_raster_order_stay_bounded() -> None:
    plan = TilePlan.for_shape((300, 90), 20, 6)
    scene = np.random.default_rng(8).normal(size=(1, 300, 90)).astype(np.float32)
    merger = StripMerger(plan, 1)
    strips = _feed_strips(merger, list(plan.windows), lambda w: _crop(scene, w))
    assert len(strips) == plan.grid[0] and plan.grid[1] > 1
    assert merger.peak_buffered_rows <= 20 + 14
    np.testing.assert_allclose(_concat(strips)[0], scene, rtol=0, atol=1e-5)


def test_a_few_windows_in_flight_add_about_a_stride_each() -> None:
    plan = TilePlan.for_shape(*TALL)
    in_flight = 4
    rng = np.random.default_rng(9)
    windows = list(plan.windows)
    jittered = [windows[j] for i in range(0, len(windows), in_flight) for j in i + rng.permutation(in_flight)]
    scene = np.random.default_rng(10).normal(size=(1, 5000, 64)).astype(np.float32)
    merger = StripMerger(plan, 1)
    strips = _feed_strips(merger, jittered, lambda w: _crop(scene, w))
    assert 64 < merger.peak_buffered_rows <= 64 + (in_flight - 1) * 48
    np.testing.assert_allclose(_concat(strips)[0], scene, rtol=0, atol=1e-5)


def test_reverse_order_holds_everything_unless_capped() -> None:
    plan = TilePlan.for_shape(*TALL)
    reverse = list(reversed(plan.windows))
    zeros = lambda w: np.zeros((1, *w.size), dtype=np.float32)  # noqa: E731

    merger = StripMerger(plan, 1)
    strips = []
    for w in reverse[:-1]:
        strips += merger.aggregate(w, zeros(w))
    assert strips == []  # nothing is final until row group 0 arrives
    strips += merger.aggregate(reverse[-1], zeros(reverse[-1]))
    assert merger.peak_buffered_rows == 5000 and len(strips) == plan.grid[0]

    capped = StripMerger(plan, 1, max_pending_rows=256)
    with pytest.raises(RuntimeError, match="over max_pending_rows=256"):
        for w in reverse:
            capped.aggregate(w, zeros(w))
    assert capped.arrived == 0 and capped.buffered_rows == 0  # the refused window changed nothing
    with pytest.raises(ValueError, match="below one tile"):
        StripMerger(plan, 1, max_pending_rows=32)
