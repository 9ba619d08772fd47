"""Blend the logits of a :class:`~raysegment.tiling.plan.TilePlan`'s windows back into one scene.

Each window's logits (K, *window.size) are weighted by
:func:`~raysegment.tiling.plan.blend_weights` and summed with the windows that
overlap it; the merged value of a pixel is ``sum(w * logits) / sum(w)`` over the
windows that contain it. Where every window agrees with one global logit array
the merge returns that array unchanged, whatever the weights.

Two mergers, same methods (``aggregate``, ``skip``, ``finalize``):

* :class:`ArrayMerger` holds the whole scene, (K + 1) x scene pixels: for small
  scenes and as the reference in tests;
* :class:`StripMerger` holds only a band of rows along the first spatial axis
  and hands back each band (a :class:`Strip`) as soon as no window left can touch
  it, so a 50k x 50k scene is written strip by strip.

Windows may arrive in any order (a Ray stream is not ordered) and each exactly
once. A window the caller chose not to run (all nodata, say) is declared with
``skip(window)``: it counts as arrived and contributes nothing. Pixels no
arrived window covers get ``fill_value`` and ``covered == False``.
``finalize()`` refuses to finish while a window has neither arrived nor been
skipped, so a lost window is an error, not a silent hole.

A merger is plain state in one process: one per scene, fed by one consumer.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from numpy.typing import DTypeLike

from raysegment.tiling.plan import TilePlan, Window, blend_weights

__all__ = ["ArrayMerger", "Strip", "StripMerger"]


@dataclasses.dataclass(frozen=True, eq=False)
class Strip:
    """Finished rows ``[start, stop)`` of the first spatial axis, all other axes whole."""

    start: int
    stop: int
    values: np.ndarray  # (K, stop - start, *rest) blended logits; fill_value where not covered
    covered: np.ndarray  # (stop - start, *rest) bool: some arrived window contains the pixel


def _blend(sums: np.ndarray, weights: np.ndarray, fill_value: float) -> tuple[np.ndarray, np.ndarray]:
    """``sums / weights`` where any weight arrived, ``fill_value`` elsewhere; new arrays."""
    covered = weights > 0
    values = np.full(sums.shape, fill_value, dtype=sums.dtype)
    np.divide(sums, weights, out=values, where=covered)
    return values, covered


class _Merger:
    """Checks shared by both mergers: window identity, logits shape, completeness."""

    def __init__(
        self,
        plan: TilePlan,
        channels: int,
        mode: str = "gaussian",
        dtype: DTypeLike = np.float32,
        fill_value: float = 0.0,
        sigma_scale: float = 0.125,
        margin: int | tuple[int, ...] = 0,
    ) -> None:
        if channels < 1:
            raise ValueError(f"channels must be positive, got {channels}")
        self.dtype = np.dtype(dtype)
        if not np.issubdtype(self.dtype, np.floating):
            raise ValueError(f"dtype must be a float type, got {self.dtype}")
        blend_weights((1,) * plan.ndim, plan.overlap, mode, sigma_scale)  # reject a bad mode now
        self.plan = plan
        self.channels = channels
        self.mode = mode
        self.sigma_scale = sigma_scale
        self.fill_value = fill_value
        self.margin = (int(margin),) * plan.ndim if isinstance(margin, int) else tuple(int(m) for m in margin)
        if len(self.margin) != plan.ndim or any(m < 0 or 2 * m > o for m, o in zip(self.margin, plan.overlap)):
            raise ValueError(f"margin {margin} must be in [0, overlap/2] on every axis (overlap {plan.overlap})")
        self._arrived = np.zeros(len(plan), dtype=bool)
        self._finished = False

    def _accept(
        self, window: Window, logits: np.ndarray | None = None, mask: np.ndarray | None = None
    ) -> np.ndarray | None:
        """Validate an arrival; return the window's blend weights (zero outside ``mask``) when it has logits."""
        if self._finished:
            raise RuntimeError("merger is already finalized")
        if not 0 <= window.index < len(self.plan) or self.plan.windows[window.index] != window:
            raise ValueError(f"window {window} is not part of this merger's plan")
        if self._arrived[window.index]:
            raise ValueError(f"window {window.index} arrived twice")
        if logits is None:
            return None
        expected = (self.channels, *window.size)
        if logits.shape != expected:
            raise ValueError(f"window {window.index} logits have shape {logits.shape}, expected {expected}")
        weights = blend_weights(window.size, self.plan.overlap, self.mode, self.sigma_scale)
        if any(self.margin):
            weights = weights * self._trim(window)
        if mask is None:
            return weights
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != window.size:
            raise ValueError(f"window {window.index} mask has shape {mask.shape}, expected {window.size}")
        return weights * mask

    def _trim(self, window: Window) -> np.ndarray:
        """0 within ``margin`` of each border the window shares with another window, else 1.

        A model's prediction near a window border lacks context (and, with padding,
        sees made-up pixels). Dropping it there (the U-Net paper's overlap-tile
        strategy) leaves only predictions at least ``margin`` inside some window; a
        model whose receptive field reaches less than ``margin`` then gives exactly
        its untiled result. The scene's own edges are kept: they are edges untiled too.
        """
        out = np.ones(window.size, dtype=np.float32)
        for axis, (start, stop, m) in enumerate(zip(window.start, window.stop, self.margin)):
            index = [slice(None)] * len(window.size)
            if start > 0 and m:
                index[axis] = slice(0, m)
                out[tuple(index)] = 0
            if stop < self.plan.shape[axis] and m:
                index[axis] = slice(window.size[axis] - m, None)
                out[tuple(index)] = 0
        return out

    @property
    def arrived(self) -> int:
        """Windows aggregated or skipped so far."""
        return int(self._arrived.sum())

    def _finish(self) -> None:
        if self._finished:
            raise RuntimeError("merger is already finalized")
        missing = np.flatnonzero(~self._arrived)
        if missing.size:
            first = ", ".join(str(i) for i in missing[:5])
            raise ValueError(
                f"{missing.size} of {len(self.plan)} windows never arrived (first: {first}); aggregate or skip each"
            )
        self._finished = True


class ArrayMerger(_Merger):
    """Accumulates into whole-scene buffers; :meth:`finalize` returns ``(values, covered)``.

    Memory is (K + 1) x scene pixels of ``dtype``: use it where the scene fits.
    """

    def __init__(
        self,
        plan: TilePlan,
        channels: int,
        mode: str = "gaussian",
        dtype: DTypeLike = np.float32,
        fill_value: float = 0.0,
        sigma_scale: float = 0.125,
        margin: int | tuple[int, ...] = 0,
    ) -> None:
        super().__init__(plan, channels, mode, dtype, fill_value, sigma_scale, margin)
        self._sums = np.zeros((channels, *plan.shape), dtype=self.dtype)
        self._weights = np.zeros(plan.shape, dtype=self.dtype)

    def aggregate(self, window: Window, logits: np.ndarray, mask: np.ndarray | None = None) -> None:
        """Add one window's (K, *window.size) logits; pixels outside ``mask`` (nodata) get no weight."""
        logits = np.asarray(logits)
        w = self._accept(window, logits, mask)
        region = window.slices()
        self._sums[(slice(None), *region)] += logits * w
        self._weights[region] += w
        self._arrived[window.index] = True

    def skip(self, window: Window) -> None:
        """Declare a window that will not arrive; its pixels stay uncovered unless others cover them."""
        self._accept(window)
        self._arrived[window.index] = True

    def finalize(self) -> tuple[np.ndarray, np.ndarray]:
        """``values`` (K, *shape) and ``covered`` (*shape) bool, once every window arrived or was skipped."""
        self._finish()
        values, covered = _blend(self._sums, self._weights, self.fill_value)
        del self._sums, self._weights
        return values, covered


class StripMerger(_Merger):
    """Keeps a band of rows along the first axis; returns each band once no window can touch it.

    The windows sharing a start ``r_g`` on the first axis form row group ``g``. Rows
    ``[r_g, r_{g+1})`` (the last band runs to the scene's edge) lie in no window of a
    later group, so once groups ``0..g`` have all arrived that band is final and
    :meth:`aggregate` (or :meth:`skip`) returns it as a :class:`Strip`. Strips come
    out in order, one per row group, whatever the arrival order; concatenated along
    the first axis they are :class:`ArrayMerger`'s result.

    Memory is ``buffered_rows`` x the other axes x (K + 1), where the buffer runs
    from the first row not yet returned to the furthest row an arrived window
    reaches. In raster order that is at most ``tile[0]`` rows (plus a transient copy
    when the buffer moves on); ``n`` windows in flight out of order add up to about
    ``n`` strides; windows in reverse order hold the whole scene. ``max_pending_rows``
    turns that worst case into a ``RuntimeError`` instead of an out-of-memory kill.
    ``peak_buffered_rows`` records the most rows held at once.
    """

    def __init__(
        self,
        plan: TilePlan,
        channels: int,
        mode: str = "gaussian",
        dtype: DTypeLike = np.float32,
        fill_value: float = 0.0,
        sigma_scale: float = 0.125,
        max_pending_rows: int | None = None,
        margin: int | tuple[int, ...] = 0,
    ) -> None:
        super().__init__(plan, channels, mode, dtype, fill_value, sigma_scale, margin)
        if max_pending_rows is not None and max_pending_rows < plan.tile[0]:
            raise ValueError(f"max_pending_rows {max_pending_rows} is below one tile ({plan.tile[0]} rows)")
        self.max_pending_rows = max_pending_rows
        self._row_starts = plan.axis_starts(0)
        self._group_of = {r: g for g, r in enumerate(self._row_starts)}
        self._remaining = [len(plan) // len(self._row_starts)] * len(self._row_starts)
        self._next_band = 0  # first row group whose band has not been returned
        self._base = 0  # scene row of buffer row 0 (the start of band _next_band)
        rest = plan.shape[1:]
        self._sums = np.zeros((channels, 0, *rest), dtype=self.dtype)
        self._weights = np.zeros((0, *rest), dtype=self.dtype)
        self.peak_buffered_rows = 0

    @property
    def buffered_rows(self) -> int:
        return self._weights.shape[0]

    def _grow(self, stop: int, enforce_limit: bool = True) -> None:
        """Extend the buffer to scene row ``stop`` (exclusive) with zeros."""
        rows = stop - self._base
        have = self.buffered_rows
        if rows <= have:
            return
        if enforce_limit and self.max_pending_rows is not None and rows > self.max_pending_rows:
            raise RuntimeError(
                f"merge buffer would hold {rows} rows, over max_pending_rows={self.max_pending_rows}: "
                f"windows arrive too far out of order (rows {self._base}.. still wait for a window)"
            )
        sums = np.zeros((self.channels, rows, *self.plan.shape[1:]), dtype=self.dtype)
        weights = np.zeros((rows, *self.plan.shape[1:]), dtype=self.dtype)
        sums[:, :have] = self._sums
        weights[:have] = self._weights
        self._sums, self._weights = sums, weights
        self.peak_buffered_rows = max(self.peak_buffered_rows, rows)

    def aggregate(self, window: Window, logits: np.ndarray, mask: np.ndarray | None = None) -> list[Strip]:
        """Add one window's (K, *window.size) logits; return the strips this completes (often none).

        Pixels outside ``mask`` (nodata) get no weight: where no window has them they stay uncovered.
        """
        logits = np.asarray(logits)
        w = self._accept(window, logits, mask)
        r0, r1 = window.start[0], window.stop[0]
        self._grow(r1)  # may raise; nothing has changed yet
        rows = slice(r0 - self._base, r1 - self._base)
        rest = window.slices()[1:]
        self._sums[(slice(None), rows, *rest)] += logits * w
        self._weights[(rows, *rest)] += w
        return self._arrive(window)

    def skip(self, window: Window) -> list[Strip]:
        """Declare a window that will not arrive; return the strips this completes."""
        self._accept(window)
        return self._arrive(window)

    def _arrive(self, window: Window) -> list[Strip]:
        self._arrived[window.index] = True
        self._remaining[self._group_of[window.start[0]]] -= 1
        strips: list[Strip] = []
        first = stop = self._base  # buffer row 0 is scene row `first` until the rows are dropped below
        while self._next_band < len(self._row_starts) and self._remaining[self._next_band] == 0:
            g = self._next_band
            start = self._row_starts[g]
            stop = self._row_starts[g + 1] if g + 1 < len(self._row_starts) else self.plan.shape[0]
            self._grow(stop, enforce_limit=False)  # short only where whole row groups were skipped
            lo, hi = start - first, stop - first
            values, covered = _blend(self._sums[:, lo:hi], self._weights[lo:hi], self.fill_value)
            strips.append(Strip(start, stop, values, covered))
            self._next_band += 1
        if strips:  # drop the returned rows; copy so their memory is freed now
            self._base = stop
            self._sums = self._sums[:, stop - first :].copy()
            self._weights = self._weights[stop - first :].copy()
        return strips

    def finalize(self) -> list[Strip]:
        """Check every window arrived or was skipped; return strips not yet returned.

        Strips are returned as soon as they are final, so once every window is in
        this is empty; it is the one place a lost window is caught.
        """
        self._finish()
        assert self._next_band == len(self._row_starts) and self.buffered_rows == 0
        return []
