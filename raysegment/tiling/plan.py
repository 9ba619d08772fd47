"""The window plan of tiled sliding-window inference, and each window's blend weights.

A scene too large for one forward pass (a 50k x 50k satellite scene, a 3D volume
larger than a worker's memory) is cut into overlapping windows of a fixed
``tile`` size; :mod:`raysegment.tiling.merge` blends the windows' logits back. The
split follows MONAI's ``Splitter``/``Merger`` division (``monai.inferers``), in
plain NumPy so that it runs in any Ray task.

Planning rules, per spatial axis of length ``n``:

* ``stride = tile - overlap``; windows start at 0 and step by ``stride``;
* the last window is shifted back so that it ends exactly at ``n``: every window
  is full-size and no padding is needed (the last two windows overlap by more
  than ``overlap``);
* a scene smaller than the tile gets one window of size ``n`` on that axis, the
  only case where a window is smaller than the tile.

Windows are numbered in raster order (last axis fastest). That order is what
lets :class:`raysegment.tiling.merge.StripMerger` emit finished rows early: all
windows that share a start on the first axis form one *row group*.

Skipping nodata windows (all-nodata satellite tiles, air around a volume) is the
caller's decision, not the plan's: the plan always covers the whole scene, and
the merger takes ``skip(window)`` for a window that will never arrive.
"""

from __future__ import annotations

import dataclasses
import functools
import operator
from collections.abc import Sequence
from typing import Union

import numpy as np

__all__ = [
    "BLEND_MODES",
    "GAUSSIAN_FLOOR",
    "TilePlan",
    "Window",
    "blend_weights",
    "plan_windows",
    "validate_tiling",
]

#: Weight profiles :func:`blend_weights` knows.
BLEND_MODES = ("gaussian", "linear", "constant")

#: Lower clip of the gaussian weights (MONAI's value): a window's corner pixels keep a
#: small positive weight, so a scene pixel only one window covers is still defined.
GAUSSIAN_FLOOR = 1e-3

SPATIAL_NDIMS = (2, 3)

IntOrSeq = Union[int, Sequence[int]]


def _as_int(value: object, name: str) -> int:
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise ValueError(f"{name} must be an integer, got {value!r}") from None


def _as_tuple(value: IntOrSeq, ndim: int, name: str) -> tuple[int, ...]:
    """An int is used on every axis; a sequence must have one entry per axis."""
    if isinstance(value, Sequence):
        out = tuple(_as_int(v, name) for v in value)
        if len(out) != ndim:
            raise ValueError(f"{name} has {len(out)} axes but the scene has {ndim}")
        return out
    return (_as_int(value, name),) * ndim


def _axis_starts(n: int, tile: int, stride: int, align: int = 1) -> tuple[int, ...]:
    """Window starts along one axis; the last one is shifted back to end at ``n``.

    With ``align`` > 1 every start is a multiple of it (the stride is rounded down to
    one), so a strided model sees the same pooling grid in every window as on the
    whole scene; the last window then starts at the multiple just before ``n - tile``
    and runs to ``n``, up to ``align - 1`` pixels longer than the tile.
    """
    if n <= tile:
        return (0,)
    stride = max(align, stride // align * align)
    last = (n - tile) // align * align
    return (*(s for s in range(0, n - tile, stride) if s < last), last)


def _axis_sizes(n: int, starts: tuple[int, ...], tile: int) -> tuple[int, ...]:
    """Each window's extent along one axis: the tile, except the last runs to ``n``."""
    return (*(min(tile, n - s) for s in starts[:-1]), n - starts[-1])


@dataclasses.dataclass(frozen=True)
class Window:
    """One window of a :class:`TilePlan`: where it starts and its extent in the scene."""

    index: int  # position in the plan's raster order
    start: tuple[int, ...]  # per spatial axis
    size: tuple[int, ...]  # the tile; the scene's extent where it is smaller; the last window may run longer (align)

    @property
    def stop(self) -> tuple[int, ...]:
        return tuple(s + n for s, n in zip(self.start, self.size))

    def slices(self) -> tuple[slice, ...]:
        """Index a spatial array (or ``array[(slice(None), *w.slices())]`` a channels-first one)."""
        return tuple(slice(s, s + n) for s, n in zip(self.start, self.size))


@dataclasses.dataclass(frozen=True)
class TilePlan:
    """All windows of one scene, in raster order (last axis fastest).

    ``shape`` is the scene's spatial shape, (H, W) or (D, H, W); ``tile`` and
    ``overlap`` have one entry per axis. ``windows`` is derived from the three, so a
    plan cannot be built inconsistent; :meth:`for_shape` also takes plain ints.
    ``overlap`` may be 0 here (abutting windows); :func:`validate_tiling` is the
    stricter check for user-facing options.
    """

    shape: tuple[int, ...]
    tile: tuple[int, ...]
    overlap: tuple[int, ...]
    align: tuple[int, ...] = ()  # window starts are multiples of it per axis; () means 1
    windows: tuple[Window, ...] = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        ndim = len(self.shape)
        if not self.align:
            object.__setattr__(self, "align", (1,) * ndim)
        if len(self.align) != ndim or any(a < 1 for a in self.align):
            raise ValueError(f"align must be one positive integer per axis, got {self.align}")
        if ndim not in SPATIAL_NDIMS:
            raise ValueError(f"scene shape must be 2D (H, W) or 3D (D, H, W), got {self.shape}")
        for name in ("tile", "overlap"):
            if len(getattr(self, name)) != ndim:
                raise ValueError(f"{name} has {len(getattr(self, name))} axes but the scene has {ndim}")
        for n, t, o in zip(self.shape, self.tile, self.overlap):
            if n < 1:
                raise ValueError(f"scene shape must be positive on every axis, got {self.shape}")
            if t < 1:
                raise ValueError(f"tile must be positive on every axis, got {self.tile}")
            if not 0 <= o < t:
                raise ValueError(f"overlap must be in [0, tile) on every axis, got {self.overlap} for tile {self.tile}")
        starts = [self.axis_starts(a) for a in range(ndim)]
        sizes = [dict(zip(st, _axis_sizes(n, st, t))) for st, n, t in zip(starts, self.shape, self.tile)]
        grid = np.stack(np.meshgrid(*starts, indexing="ij"), axis=-1).reshape(-1, ndim)  # C order
        windows = tuple(
            Window(i, tuple(int(v) for v in s), tuple(sizes[a][int(v)] for a, v in enumerate(s)))
            for i, s in enumerate(grid)
        )
        object.__setattr__(self, "windows", windows)

    @classmethod
    def for_shape(cls, shape: Sequence[int], tile: IntOrSeq, overlap: IntOrSeq, align: IntOrSeq = 1) -> TilePlan:
        """Plan a scene; an int ``tile``, ``overlap`` or ``align`` applies to every axis."""
        spatial = tuple(_as_int(n, "shape") for n in shape)
        ndim = len(spatial)
        return cls(spatial, _as_tuple(tile, ndim, "tile"), _as_tuple(overlap, ndim, "overlap"),
                   _as_tuple(align, ndim, "align"))

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def stride(self) -> tuple[int, ...]:
        return tuple(t - o for t, o in zip(self.tile, self.overlap))

    def axis_starts(self, axis: int) -> tuple[int, ...]:
        """Distinct window starts along ``axis``, increasing."""
        return _axis_starts(self.shape[axis], self.tile[axis], self.stride[axis], self.align[axis])

    @property
    def grid(self) -> tuple[int, ...]:
        """Number of windows along each axis."""
        return tuple(len(self.axis_starts(a)) for a in range(self.ndim))

    def __len__(self) -> int:
        return len(self.windows)


def plan_windows(shape: Sequence[int], tile: IntOrSeq, overlap: IntOrSeq, align: IntOrSeq = 1) -> TilePlan:
    """Same as :meth:`TilePlan.for_shape`."""
    return TilePlan.for_shape(shape, tile, overlap, align)


def validate_tiling(tile: IntOrSeq, overlap: IntOrSeq) -> None:
    """Reject ``--tile``/``--overlap`` values that make poor tilings, in one line.

    Stricter than :class:`TilePlan`: ``overlap`` must be positive (windows that only
    abut leave seams where each model sees no context), and ``tile`` at least twice
    ``overlap`` (beyond that a pixel lies in three windows per axis: work for little
    gain, and the linear ramps of opposite borders would cross).
    """
    if isinstance(tile, Sequence) and isinstance(overlap, Sequence) and len(tile) != len(overlap):
        raise ValueError(f"--tile has {len(tile)} values but --overlap has {len(overlap)}")
    ndim = len(tile) if isinstance(tile, Sequence) else len(overlap) if isinstance(overlap, Sequence) else 1
    tiles = _as_tuple(tile, ndim, "--tile")
    overlaps = _as_tuple(overlap, ndim, "--overlap")
    for t, o in zip(tiles, overlaps):
        if t <= 0:
            raise ValueError(f"--tile {t} must be positive")
        if o <= 0:
            raise ValueError(f"--overlap {o} must be positive: windows need overlap to blend their seams")
        if t < 2 * o:
            raise ValueError(f"--tile {t} must be at least twice --overlap {o}")


def _profile(n: int, overlap: int, mode: str, sigma_scale: float) -> np.ndarray:
    """The 1D weight profile of one axis, float64."""
    if mode == "constant":
        return np.ones(n)
    if mode == "linear":
        i = np.arange(n, dtype=np.float64)
        # 1/(o+1), 2/(o+1), ..., 1 over the first ``overlap`` pixels, mirrored at the far end.
        return np.minimum(1.0, np.minimum(i + 1, n - i) / (overlap + 1))
    x = np.arange(n, dtype=np.float64) - (n - 1) / 2.0
    g = np.exp(-(x**2) / (2.0 * (sigma_scale * n) ** 2))
    return g / g.max()


@functools.lru_cache(maxsize=32)
def _cached_weights(size: tuple[int, ...], overlap: tuple[int, ...], mode: str, sigma_scale: float) -> np.ndarray:
    w = np.ones((), dtype=np.float64)
    for n, o in zip(size, overlap):
        w = np.multiply.outer(w, _profile(n, o, mode, sigma_scale))
    if mode == "gaussian":
        w = np.maximum(w, GAUSSIAN_FLOOR)
    out = w.astype(np.float32)
    out.flags.writeable = False  # shared by every caller through the cache
    return out


def blend_weights(
    size: Sequence[int],
    overlap: Sequence[int],
    mode: str = "gaussian",
    sigma_scale: float = 0.125,
) -> np.ndarray:
    """Float32 weight map of shape ``size`` for one window; every entry is > 0.

    Window centres are far from any window border, so their predictions have the
    most context; the weights make them count more where windows overlap.
    Separable (a product of 1D profiles per axis):

    * ``"gaussian"``: as MONAI, sigma = ``sigma_scale * size`` per axis, centred,
      normalised to max 1 and clipped below at :data:`GAUSSIAN_FLOOR`; ignores ``overlap``;
    * ``"linear"``: ramps from ``1/(overlap+1)`` up to 1 over ``overlap`` pixels at
      each border, 1 inside;
    * ``"constant"``: all ones (a plain average).

    The result is cached and read-only: copy it before changing it.
    """
    size_t = tuple(_as_int(n, "size") for n in size)
    overlap_t = tuple(_as_int(o, "overlap") for o in overlap)
    if len(size_t) != len(overlap_t):
        raise ValueError(f"overlap has {len(overlap_t)} axes but size has {len(size_t)}")
    if any(n < 1 for n in size_t) or any(o < 0 for o in overlap_t):
        raise ValueError(f"size must be positive and overlap non-negative, got {size_t} and {overlap_t}")
    if mode not in BLEND_MODES:
        raise ValueError(f"blend mode must be one of {list(BLEND_MODES)}, got {mode!r}")
    if not sigma_scale > 0:
        raise ValueError(f"sigma_scale must be positive, got {sigma_scale}")
    if mode != "linear":  # the other profiles ignore overlap: share one cache entry
        overlap_t = (0,) * len(size_t)
    return _cached_weights(size_t, overlap_t, mode, float(sigma_scale) if mode == "gaussian" else 0.0)
