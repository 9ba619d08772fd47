"""The U-Net per-pixel loss weight map (Ronneberger et al. 2015, eq. 2).

    w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))^2 / (2 sigma^2))

``w_c`` balances class frequencies; ``d1``/``d2`` are the distances to the
nearest and second-nearest cell. The second term puts a ridge of high weight on
the thin background that separates touching cells, so the network learns those
borders instead of merging the cells. It runs on the CPU data stage, once per
label mask, and feeds ``unet_weighted`` in :mod:`raysegment.criteria.losses`.

Cells are the 4-connected components of the ``cell_label`` class
(``scipy.ndimage.label`` with a cross structuring element): two cells that touch
only at a corner stay apart, and the background pixels between cells are the
separation borders. Distances are exact Euclidean distance transforms, one per
cell, each computed only in the cell's bounding box grown by the radius beyond
which the border term is below ``BORDER_TOLERANCE``; the term is set to 0 there.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import ndimage

__all__ = ["BORDER_TOLERANCE", "class_balance_map", "nearest_two_distances", "unet_weight_map"]

#: Border-term values below this are dropped (set to 0), which bounds the work per cell.
BORDER_TOLERANCE = 1e-3

_CROSS = ndimage.generate_binary_structure(2, 1)


def class_balance_map(
    mask: np.ndarray,
    class_weights: Mapping[int, float] | Sequence[float] | None = None,
    ignore_index: int = 255,
) -> np.ndarray:
    """Per-pixel class weight ``w_c`` (H, W) float32; ``ignore_index`` pixels get 0.

    Without ``class_weights``: inverse class frequency in this mask, scaled so
    the most frequent class gets 1 (rarer classes get > 1; the loss scale stays
    that of plain cross-entropy on the majority class). A sequence is indexed by
    class id; a mapping must name every class that occurs in the mask.
    """
    valid = mask != ignore_index
    classes, counts = np.unique(mask[valid], return_counts=True)
    if class_weights is None:
        table = dict(zip(classes.tolist(), (counts.max() / counts).tolist()))
    else:
        lookup = class_weights if isinstance(class_weights, Mapping) else dict(enumerate(class_weights))
        missing = [c for c in classes.tolist() if c not in lookup]
        if missing:
            raise ValueError(f"class_weights has no weight for class id(s) {missing}")
        table = {c: float(lookup[c]) for c in classes.tolist()}
    out = np.zeros(mask.shape, dtype=np.float32)
    for cls, weight in table.items():
        out[mask == cls] = weight
    return out


def nearest_two_distances(cells: np.ndarray, max_distance: float = math.inf) -> tuple[np.ndarray, np.ndarray]:
    """Distances (float64, (H, W)) of each pixel to its nearest and second-nearest cell.

    ``cells`` is a boolean mask; cells are its 4-connected components. A cell's
    distances are computed only within ``max_distance`` (+1 px) of its bounding
    box, so a value is exact where it is <= ``max_distance`` and may be inf
    (or too large) beyond. With fewer than two cells ``d2`` is inf everywhere.
    """
    labels, n = ndimage.label(cells, structure=_CROSS)
    d1 = np.full(cells.shape, np.inf)
    d2 = np.full(cells.shape, np.inf)
    margin = int(math.ceil(max_distance)) + 1 if math.isfinite(max_distance) else max(cells.shape)
    for index, box in enumerate(ndimage.find_objects(labels), start=1):
        grown = tuple(slice(max(s.start - margin, 0), s.stop + margin) for s in box)
        d = ndimage.distance_transform_edt(labels[grown] != index)
        near, second = d1[grown], d2[grown]  # views: updated in place
        np.minimum(second, np.maximum(near, d), out=second)
        np.minimum(near, d, out=near)
    return d1, d2


def unet_weight_map(
    mask: np.ndarray,
    *,
    cell_label: int = 1,
    w0: float = 10.0,
    sigma: float = 5.0,
    class_weights: Mapping[int, float] | Sequence[float] | None = None,
    ignore_index: int = 255,
) -> np.ndarray:
    """U-Net weight map (H, W) float32 for a class-index mask (H, W).

    ``cell_label`` is the class id of the cells (e.g. 0 for ISBI EM labels
    mapped to cell = 0, membrane = 1). The border term is added on background
    (every valid non-cell class) pixels only, as in the paper; cells keep
    ``w_c``. With fewer than two cells ``d2`` is inf and there is no border
    term. ``ignore_index`` pixels get weight 0. ``w0`` and ``sigma`` are in
    pixels at the mask's resolution (the paper: 10 and ~5).
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"expected an (H, W) class-index mask, got shape {mask.shape}")
    if not (sigma > 0 and math.isfinite(sigma)) or not (w0 >= 0 and math.isfinite(w0)):
        raise ValueError(f"need sigma > 0 and w0 >= 0, got sigma={sigma}, w0={w0}")
    if cell_label == ignore_index:
        raise ValueError(f"cell_label {cell_label} equals ignore_index")
    weights = class_balance_map(mask, class_weights, ignore_index)
    if w0 == 0:
        return weights
    cells = mask == cell_label
    # Beyond this d1 + d2 the border term is below BORDER_TOLERANCE (and d2 alone is beyond it).
    radius = sigma * math.sqrt(2.0 * math.log(max(w0 / BORDER_TOLERANCE, 1.0)))
    d1, d2 = nearest_two_distances(cells, radius)
    total = d1 + d2
    border = ~cells & (mask != ignore_index) & (total <= radius)
    weights[border] += (w0 * np.exp(-(total[border] ** 2) / (2.0 * sigma**2))).astype(np.float32)
    return weights
