"""The window samplers: deterministic per seed, positive fraction held, validation disjoint."""

from __future__ import annotations

import numpy as np
import pytest

from raysegment.io.regions import boxes_overlap, parse_region
from raysegment.train.sampler import RandomWindows, SceneWindows, cell_size, grid_windows, positive_cells_in


def _box(row):
    return tuple((s, s + n) for s, n in zip(row.start, row.size))


def _rare_scene(shape=(300, 400), blob=((200, 210), (50, 60))):
    """A scene whose only foreground is one 10 x 10 blob (0.08 % of the pixels)."""
    fg = np.zeros(shape, dtype=bool)
    fg[tuple(slice(s, e) for s, e in blob)] = True
    return fg


def test_windows_are_deterministic_per_seed_and_differ_between_epochs_and_seeds():
    sampler = RandomWindows((SceneWindows((300, 400)), SceneWindows((500, 200))), (64, 64))
    a = sampler.epoch_rows(seed=7, epoch=3, count=50)
    assert a == sampler.epoch_rows(seed=7, epoch=3, count=50)
    assert a != sampler.epoch_rows(seed=7, epoch=4, count=50)
    assert a != sampler.epoch_rows(seed=8, epoch=3, count=50)
    # a window depends on (seed, epoch, index) only: the rank split sees the same windows
    assert [sampler.draw(7, 3, i) for i in range(1, 50, 2)] == a[1::2]
    for row in a:
        shape = sampler.scenes[row.scene].shape
        assert row.size == (64, 64) and all(0 <= s and s + n <= m for s, n, m in zip(row.start, row.size, shape))
    assert {row.scene for row in a} == {0, 1}


def test_positive_fraction_holds_within_tolerance():
    fg = _rare_scene()
    cell = cell_size((64, 64))
    cells = positive_cells_in(fg, (0, 0), cell)
    n = 2000
    for fraction in (0.0, 0.3, 0.7):
        sampler = RandomWindows((SceneWindows(fg.shape, positive=cells),), (64, 64), positive_fraction=fraction)
        rows = sampler.epoch_rows(seed=1, epoch=0, count=n)
        hit = np.mean([fg[tuple(slice(s, e) for s, e in _box(r))].any() for r in rows])
        # positive draws always hold the blob; random ones do with p ~ (64+9)^2 / (237*337) ~ 6.7 %
        expected = fraction + (1 - fraction) * 0.067
        assert abs(hit - expected) < 0.04, (fraction, hit, expected)


def test_positive_cells_of_blocks_merge_to_the_cells_of_the_whole():
    fg = _rare_scene(blob=((30, 70), (90, 130)))
    fg[250:251, 399] = True
    cell = (16, 16)
    whole = positive_cells_in(fg, (0, 0), cell)
    parts = np.unique(np.concatenate([positive_cells_in(fg[r:r + 64], (r, 0), cell) for r in range(0, 300, 64)]), axis=0)
    assert np.array_equal(whole, parts)
    assert [15, 24] in whole.tolist()


def test_validation_region_is_disjoint_from_every_training_window():
    shape = (900, 900)
    held = parse_region("east:0.3").pixel_boxes(shape)
    fg = np.zeros(shape, dtype=bool)
    fg[::50, ::50] = True  # positives everywhere, also beside and inside the hold-out
    cells = positive_cells_in(fg, (0, 0), cell_size((256, 256)))
    sampler = RandomWindows((SceneWindows(shape, exclude=tuple(held), positive=cells),), (256, 256),
                            positive_fraction=0.5)
    train = [_box(r) for e in range(3) for r in sampler.epoch_rows(seed=0, epoch=e, count=200)]
    val = grid_windows(shape, (256, 256), held)
    assert not any(boxes_overlap(t, _box(v)) for t in train for v in val)
    # training reaches right up to the boundary, and validation covers the region exactly once
    assert max(b[1][1] for b in train) == 630
    cover = np.zeros(shape, dtype=np.int32)
    for v in val:
        cover[tuple(slice(s, e) for s, e in _box(v))] += 1
    assert cover[:, 630:].min() == 1 and cover[:, 630:].max() == 1 and cover[:, :630].max() == 0


def test_grid_covers_a_volume_once_and_indexes_on():
    rows = grid_windows((35, 50, 37), (16, 32, 32), start_index=10, scene=2)
    cover = np.zeros((35, 50, 37), dtype=np.int32)
    for r in rows:
        cover[tuple(slice(s, e) for s, e in _box(r))] += 1
    assert cover.min() == 1 and cover.max() == 1
    assert [r.index for r in rows] == list(range(10, 10 + len(rows))) and {r.scene for r in rows} == {2}


def test_scene_smaller_than_the_window_is_read_whole():
    sampler = RandomWindows((SceneWindows((20, 500)),), (64, 64))
    row = sampler.draw(0, 0, 0)
    assert row.size == (20, 64) and row.start[0] == 0


def test_no_room_outside_the_hold_out_is_one_line():
    shape = (100, 100)
    sampler = RandomWindows((SceneWindows(shape, exclude=tuple(parse_region("east:0.5").pixel_boxes(shape))),),
                            (64, 64))
    with pytest.raises(ValueError, match="no 64x64 training window fits outside the validation region"):
        sampler.draw(0, 0, 0)
    with pytest.raises(ValueError, match="positive-fraction"):
        RandomWindows((SceneWindows(shape),), (8, 8), positive_fraction=1.5)
