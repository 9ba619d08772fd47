"""The U-Net weight map on toy masks whose distances can be worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from raysegment.criteria.weightmap import BORDER_TOLERANCE, class_balance_map, nearest_two_distances, unet_weight_map

IGNORE = 255
W0, SIGMA = 10.0, 5.0

# Two 10x10 cells (class 1) on background (class 0), rows 10..19, columns 10..19 and 23..32:
# a 3 px gap (columns 20..22), and a 30x43 canvas symmetric about row 14.5 and column 21.
SQUARES = ((10, 19, 10, 19), (10, 19, 23, 32))  # (row0, row1, col0, col1), inclusive


def _two_cells() -> np.ndarray:
    mask = np.zeros((30, 43), dtype=np.uint8)
    for r0, r1, c0, c1 in SQUARES:
        mask[r0 : r1 + 1, c0 : c1 + 1] = 1
    return mask


def _distance_to_square(r: int, c: int, square: tuple[int, int, int, int]) -> float:
    r0, r1, c0, c1 = square
    return math.hypot(max(r0 - r, 0, r - r1), max(c0 - c, 0, c - c1))


def _ridge(d1: float, d2: float) -> float:
    return W0 * math.exp(-((d1 + d2) ** 2) / (2 * SIGMA**2))


MASK = _two_cells()
N_CELL = int(MASK.sum())
W_CELL = (MASK.size - N_CELL) / N_CELL  # background is the most frequent class, weight 1


def test_gap_pixel_by_hand() -> None:
    w = unet_weight_map(MASK)
    # Column 21 is 2 px from either cell; column 20 is 1 px from one and 3 px from the other.
    assert w[15, 21] == pytest.approx(1.0 + _ridge(2, 2), rel=1e-6)
    assert w[15, 20] == pytest.approx(1.0 + _ridge(1, 3), rel=1e-6)
    assert w.dtype == np.float32 and w.shape == MASK.shape


def test_ridge_is_highest_on_the_gap_and_falls_off() -> None:
    w = unet_weight_map(MASK)
    gap = w[10:20, 20:23]
    assert np.allclose(gap, w.max())
    above = w[:10, 21][::-1]  # moving up and away from the gap, rows 9, 8, ..., 0
    assert above[0] < gap.min()
    assert np.all(np.diff(above) <= 0) and above[-1] < above[0]


def test_cells_keep_class_weight_and_far_background_is_one() -> None:
    w = unet_weight_map(MASK)
    assert np.allclose(w[MASK == 1], W_CELL)
    assert w[0, 0] == pytest.approx(1.0, abs=BORDER_TOLERANCE)
    assert w[29, 42] == pytest.approx(1.0, abs=BORDER_TOLERANCE)


def test_symmetric() -> None:
    w = unet_weight_map(MASK)
    assert np.allclose(w, w[:, ::-1]) and np.allclose(w, w[::-1, :])


def test_whole_map_matches_closed_form() -> None:
    """Every pixel against distances to the rectangles, to within the dropped tail of the border term."""
    w = unet_weight_map(MASK)
    expected = np.where(MASK == 1, W_CELL, 1.0)
    for r, c in zip(*np.nonzero(MASK == 0)):
        d1, d2 = sorted(_distance_to_square(r, c, sq) for sq in SQUARES)
        expected[r, c] += _ridge(d1, d2)
    assert np.abs(w - expected).max() <= BORDER_TOLERANCE


def test_nearest_two_distances_by_hand() -> None:
    d1, d2 = nearest_two_distances(MASK == 1)
    assert (d1[15, 21], d2[15, 21]) == (2.0, 2.0)
    assert d1[5, 21] == pytest.approx(math.sqrt(29)) and d2[5, 21] == pytest.approx(math.sqrt(29))
    assert d1[15, 15] == 0.0 and d2[15, 15] == pytest.approx(8.0)  # inside A: 8 px to B's column 23


def test_corner_touching_cells_stay_apart() -> None:
    cells = np.zeros((6, 6), dtype=bool)
    cells[1:3, 1:3] = True
    cells[3:5, 3:5] = True  # touches the first only at a corner
    d1, d2 = nearest_two_distances(cells)
    assert np.isfinite(d2).all() and d2[2, 3] == 1.0 and d1[2, 3] == 1.0


def test_single_cell_has_no_border_term() -> None:
    """With one cell d2 = inf, so exp(-inf) = 0: only the class weights remain."""
    mask = MASK.copy()
    mask[:, 21:] = 0
    w = unet_weight_map(mask)
    assert np.array_equal(w, class_balance_map(mask))
    assert np.isinf(nearest_two_distances(mask == 1)[1]).all()


def test_all_background() -> None:
    w = unet_weight_map(np.zeros((8, 9), dtype=np.uint8))
    assert np.array_equal(w, np.ones((8, 9), dtype=np.float32))


def test_ignore_pixels_get_zero_and_do_not_count() -> None:
    mask = MASK.copy()
    mask[:5] = IGNORE
    mask[20:25, 20:23] = IGNORE  # below the gap
    w = unet_weight_map(mask)
    assert np.all(w[mask == IGNORE] == 0)
    n_bg = int((mask == 0).sum())
    assert np.allclose(w[mask == 1], n_bg / N_CELL)
    assert w[15, 21] == pytest.approx(1.0 + _ridge(2, 2), rel=1e-6)


def test_supplied_class_weights() -> None:
    for weights in ([0.5, 2.0], {0: 0.5, 1: 2.0}):
        w = unet_weight_map(MASK, class_weights=weights)
        assert np.allclose(w[MASK == 1], 2.0)
        assert w[0, 0] == pytest.approx(0.5, abs=BORDER_TOLERANCE)
        assert w[15, 21] == pytest.approx(0.5 + _ridge(2, 2), rel=1e-6)
    with pytest.raises(ValueError, match=r"no weight for class id\(s\) \[1\]"):
        unet_weight_map(MASK, class_weights={0: 1.0})


def test_cell_label_and_parameters() -> None:
    """Cells may be any class id (ISBI: cell = 0, membrane = 1); w0 = 0 leaves w_c alone."""
    inverted = (1 - MASK).astype(np.uint8)
    assert np.array_equal(unet_weight_map(inverted, cell_label=0), unet_weight_map(MASK))
    assert np.array_equal(unet_weight_map(MASK, w0=0.0), class_balance_map(MASK))
    wide = unet_weight_map(MASK, sigma=10.0)
    assert wide[15, 21] == pytest.approx(1.0 + W0 * math.exp(-16 / 200), rel=1e-6)
    with pytest.raises(ValueError, match="sigma"):
        unet_weight_map(MASK, sigma=0.0)
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        unet_weight_map(MASK[None])
    with pytest.raises(ValueError, match="ignore_index"):
        unet_weight_map(MASK, cell_label=IGNORE)
