"""Streamed COCO RLE equals pycocotools' encoding of the whole mask, however it is cut."""

from __future__ import annotations

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from raysegment.masks.rle_stream import RunLengthBuilder


def _whole(mask: np.ndarray) -> bytes:
    return mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))["counts"]


@pytest.mark.parametrize("seed", range(25))
def test_column_strips_of_any_width_give_the_whole_mask_rle(seed: int) -> None:
    rng = np.random.default_rng(seed)
    h, w = (int(v) for v in rng.integers(1, 40, 2))
    mask = rng.random((h, w)) < rng.random()
    builder = RunLengthBuilder(h, w)
    x = 0
    while x < w:
        step = int(rng.integers(1, w - x + 1))
        builder.append(mask[:, x : x + step].T.ravel())  # column-major order
        x += step
    assert builder.encode()["counts"] == _whole(mask)
    assert builder.area == int(mask.sum())


def test_zero_runs_and_a_mask_starting_with_ones() -> None:
    mask = np.zeros((4, 6), dtype=bool)
    mask[:, 0] = True  # first run is ones: COCO counts start with a 0-length zero run
    mask[2:, 5] = True
    builder = RunLengthBuilder(4, 6)
    builder.append(mask[:, :1].T.ravel())
    builder.append_zeros(16)
    builder.append(mask[:, 5:].T.ravel())
    assert int(builder.counts()[0]) == 0
    assert builder.encode()["counts"] == _whole(mask)
    assert mask_utils.area(builder.encode()) == 6


def test_incomplete_and_overrunning_masks_are_refused() -> None:
    builder = RunLengthBuilder(2, 2)
    builder.append(np.array([True, False, True]))
    with pytest.raises(ValueError, match="incomplete"):
        builder.counts()
    with pytest.raises(ValueError, match="overruns"):
        builder.append(np.array([True, True]))
