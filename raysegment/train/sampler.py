"""Where training and validation windows fall in large scenes (TorchGeo's samplers, for Ray workers).

Users train on whole scenes (a 50k x 50k GeoTIFF, a NIfTI volume) without cutting
tiles; each epoch draws fresh windows:

* :class:`RandomWindows`: window ``i`` of epoch ``e`` depends only on ``(seed, e, i)``,
  so a run is reproducible on any number of workers and across resumes (each rank
  takes ``rows[rank::world]`` of the same list). A scene is drawn in proportion to
  its area. With ``positive_fraction`` a window is, with that probability, placed
  over a random *positive cell* (a cell of the coarse grid holding a foreground
  label, found by the data survey), so a class covering 4 % of a scene is seen in
  far more than 4 % of the windows. Windows overlapping the hold-out boxes are
  redrawn: training never reads a validation pixel.
* :func:`grid_windows`: validation covers each hold-out box (or each held-out scene)
  once, with abutting windows clipped inside the box, so every validation pixel is
  scored exactly once and lies outside every training window by construction.

Pure numpy: no Ray, no I/O.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from raysegment.io.regions import Box, boxes_overlap

__all__ = ["SceneWindows", "RandomWindows", "WindowRow", "grid_windows", "cell_size", "positive_cells_in"]

SALT = 0x5EED_3A5E  # keeps window draws apart from the augmentations' streams of the same (seed, epoch, index)
TRIES = 200  # draws per window before the hold-out is declared to leave no room


@dataclasses.dataclass(frozen=True)
class WindowRow:
    """One window to read: which scene, where, and its item index (the augmentation seed)."""

    index: int
    scene: int
    start: tuple[int, ...]
    size: tuple[int, ...]

    def as_row(self) -> dict[str, Any]:
        return {"index": self.index, "scene": self.scene, "start": list(self.start), "size": list(self.size)}


@dataclasses.dataclass(frozen=True)
class SceneWindows:
    """What the sampler knows of one training scene."""

    shape: tuple[int, ...]  # spatial
    exclude: tuple[Box, ...] = ()  # hold-out boxes: no training window may touch them
    positive: np.ndarray | None = None  # (n, ndim) indices of positive cells (cell grid of :func:`cell_size`)


def cell_size(window: Sequence[int]) -> tuple[int, ...]:
    """The positive-cell grid: a quarter window per axis, so a window always contains a whole cell."""
    return tuple(max(1, int(w) // 4) for w in window)


def positive_cells_in(foreground: np.ndarray, origin: Sequence[int], cell: Sequence[int]) -> np.ndarray:
    """Indices ``(n, ndim)`` of the cells holding a True of ``foreground``, a block whose first pixel
    is ``origin`` in the scene (``origin`` a multiple of ``cell``, so blocks merge exactly)."""
    if not foreground.any():
        return np.zeros((0, foreground.ndim), dtype=np.int64)
    hits = np.argwhere(foreground)
    cells = (hits + np.asarray(origin, dtype=np.int64)) // np.asarray(cell, dtype=np.int64)
    return np.unique(cells, axis=0)


def _clip_window(window: Sequence[int], shape: Sequence[int]) -> tuple[int, ...]:
    return tuple(min(int(w), int(n)) for w, n in zip(window, shape))


@dataclasses.dataclass(frozen=True)
class RandomWindows:
    """Seeded random training windows over scenes; see the module docstring."""

    scenes: tuple[SceneWindows, ...]
    window: tuple[int, ...]
    positive_fraction: float = 0.0

    def __post_init__(self) -> None:
        if not self.scenes:
            raise ValueError("no training scene to sample windows from")
        if not 0.0 <= self.positive_fraction <= 1.0:
            raise ValueError(f"--positive-fraction must be in [0, 1], got {self.positive_fraction}")
        for scene in self.scenes:
            if len(scene.shape) != len(self.window):
                raise ValueError(f"a {len(self.window)}D window on a {len(scene.shape)}D scene")

    @property
    def cell(self) -> tuple[int, ...]:
        return cell_size(self.window)

    def _areas(self, positive: bool) -> np.ndarray:
        if positive:
            weights = [0 if s.positive is None else len(s.positive) for s in self.scenes]
        else:
            weights = [math.prod(s.shape) for s in self.scenes]
        total = float(sum(weights))
        return np.asarray(weights, dtype=np.float64) / total if total else np.zeros(len(weights))

    def draw(self, seed: int, epoch: int, index: int) -> WindowRow:
        """Window ``index`` of ``epoch``: the same for the same three numbers, on any machine."""
        rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, int(epoch), int(index), SALT])
        by_area, by_positive = self._areas(False), self._areas(True)
        positive = self.positive_fraction > 0 and by_positive.sum() > 0 and rng.random() < self.positive_fraction
        for _ in range(TRIES):
            s = int(rng.choice(len(self.scenes), p=by_positive if positive else by_area))
            scene = self.scenes[s]
            size = _clip_window(self.window, scene.shape)
            if positive:
                assert scene.positive is not None
                cell = scene.positive[int(rng.integers(len(scene.positive)))]
                start = []
                for c, k, w, n in zip(cell, self.cell, size, scene.shape):
                    lo = max(0, min(int(c) * k + k, n) - w)  # the window holds the whole cell ...
                    hi = min(int(c) * k, n - w)  # ... and stays in the scene
                    start.append(int(rng.integers(lo, max(lo, hi) + 1)))
            else:
                start = [int(rng.integers(0, n - w + 1)) for w, n in zip(size, scene.shape)]
            box = tuple((b, b + w) for b, w in zip(start, size))
            if not any(boxes_overlap(box, ex) for ex in scene.exclude):
                return WindowRow(int(index), s, tuple(start), size)
        raise ValueError(f"no {'x'.join(map(str, self.window))} training window fits outside the validation region "
                         f"after {TRIES} draws; use a smaller --window or a smaller --val-region")

    def epoch_rows(self, seed: int, epoch: int, count: int) -> list[WindowRow]:
        """The ``count`` windows of one epoch, in index order (rank ``r`` of ``w`` takes ``[r::w]``)."""
        return [self.draw(seed, epoch, i) for i in range(int(count))]


def grid_windows(shape: Sequence[int], window: Sequence[int], boxes: Sequence[Box] | None = None,
                 scene: int = 0, start_index: int = 0) -> list[WindowRow]:
    """Abutting windows covering each box exactly once, clipped inside it (the last one per axis is
    shorter where the box is not a multiple of the window); no boxes: the whole scene."""
    shape = tuple(int(n) for n in shape)
    boxes = list(boxes) if boxes is not None else [tuple((0, n) for n in shape)]
    rows: list[WindowRow] = []
    for box in boxes:
        axes = [[(s, min(s + int(w), e)) for s in range(b, e, int(w))] for (b, e), w in zip(box, window)]
        for spans in _product(axes):
            rows.append(WindowRow(start_index + len(rows), scene, tuple(s for s, _ in spans),
                                  tuple(e - s for s, e in spans)))
    return rows


def _product(axes: list[list[tuple[int, int]]]) -> list[tuple[tuple[int, int], ...]]:
    out: list[tuple[tuple[int, int], ...]] = [()]
    for spans in axes:
        out = [(*head, span) for head in out for span in spans]
    return out
