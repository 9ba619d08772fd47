"""Input normalisation: one rule, applied by the core to every item before the plugin's ``preprocess``.

Why in the core: a plugin's default ``preprocess`` divides integers by their dtype's maximum,
which turns 11- to 14-bit satellite or medical data stored as uint16 nearly black. The fix is
a property of the *data*, not of the model, so it is chosen per run (``raysegment train
--normalize``), stored in the checkpoint, and applied again, exactly, by ``infer``. Plugins keep
their own choices after it (the torchvision adapters' ImageNet mean and std, ``intensity_scale``).

Modes:

* ``dtype``: nothing here; ``preprocess``'s dtype rule, as before (the default);
* ``minmax:LO:HI[,LO:HI...]``: fixed values per band to [0, 1], clipped;
* ``percentile[:P_LO:P_HI]`` (default 2:98): the dataset's per-band percentiles to [0, 1], clipped;
* ``zscore``: ``(x - mean) / std`` per band from the dataset's statistics.

``percentile`` and ``zscore`` need statistics (:mod:`raysegment.eval.stats`, the JSON of
``raysegment stats``); :meth:`Normalization.resolve` turns the mode and the statistics into
plain numbers, so what travels and what the checkpoint stores never needs the statistics again.
Values are float32 after normalisation, so the dtype rule of ``preprocess`` leaves them alone,
and the training augmentations (brightness, gamma, contrast) act on the normalised scale.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from raysegment.plugin.types import InputError, Sample

__all__ = ["MODES", "Normalization", "StatsNeeded", "needs_stats", "percentile_of"]

MODES = ("dtype", "minmax", "percentile", "zscore")
DEFAULT_PERCENTILES = (2.0, 98.0)


class StatsNeeded(ValueError):
    """The mode needs dataset statistics and none were given (the text itself is valid)."""


def needs_stats(text: str | None) -> bool:
    """Whether the ``--normalize`` text needs dataset statistics (``percentile``, ``zscore``)."""
    return (text or "dtype").split(":", 1)[0].strip() in ("percentile", "zscore")


def _floats(text: str, what: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(":"))
    except ValueError:
        raise ValueError(f"--normalize {what} expects numbers, got {text!r}") from None
    if not all(np.isfinite(values)):
        raise ValueError(f"--normalize {what} values must be finite, got {text!r}")
    return values


@dataclasses.dataclass(frozen=True)
class Normalization:
    """A resolved normalisation: the mode and its per-band numbers (one value: every band)."""

    mode: str = "dtype"
    offset: tuple[float, ...] = ()  # subtracted per band: LO (minmax, percentile) or mean (zscore)
    scale: tuple[float, ...] = ()  # divided per band: HI - LO, or std
    clip: bool = False  # clip to [0, 1] after (the min-max stretches)
    source: str = ""  # how the numbers were found, for people: "percentile 2:98 of 120 items"

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"--normalize must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.mode != "dtype":
            if not self.offset or len(self.offset) != len(self.scale):
                raise ValueError(f"{self.mode} normalisation needs one offset and one scale per band")
            bad = [s for s in self.scale if not s > 0]
            if bad:
                raise ValueError(f"{self.mode} normalisation has a band of zero or negative spread ({bad[0]!r}): "
                                 "a constant band cannot be stretched; use minmax with fixed values")

    @property
    def bands(self) -> int | None:
        """How many bands the numbers are for (None: any)."""
        return None if self.mode == "dtype" or len(self.offset) == 1 else len(self.offset)

    @classmethod
    def resolve(cls, text: str | None, stats: Mapping[str, Any] | None = None) -> Normalization:
        """``--normalize`` text (+ the statistics JSON when the mode needs it) -> numbers.

        Mistakes are one-line ``ValueError``s, raised on the driver before any work starts.
        """
        mode, _, rest = (text or "dtype").strip().partition(":")
        if mode not in MODES:
            raise ValueError(f"--normalize must be one of {', '.join(MODES)} (e.g. percentile:2:98), got {text!r}")
        if mode == "dtype":
            if rest:
                raise ValueError(f"--normalize dtype takes no values, got {text!r}")
            return cls()
        if mode == "minmax":
            if not rest:
                raise ValueError("--normalize minmax needs LO:HI per band, e.g. minmax:0:2047 or minmax:0:2047,0:4095")
            pairs = [_floats(part, "minmax") for part in rest.split(",")]
            if any(len(p) != 2 for p in pairs):
                raise ValueError(f"--normalize minmax expects LO:HI pairs, got {rest!r}")
            return cls("minmax", tuple(lo for lo, _ in pairs), tuple(hi - lo for lo, hi in pairs), True,
                       f"minmax {rest}")
        if mode == "zscore" and rest:
            raise ValueError(f"--normalize zscore takes no values, got {text!r}")
        cut = _floats(rest, "percentile") if rest else DEFAULT_PERCENTILES
        if mode == "percentile" and not (len(cut) == 2 and 0 <= cut[0] < cut[1] <= 100):
            raise ValueError(f"--normalize percentile expects P_LO:P_HI with 0 <= P_LO < P_HI <= 100, got {rest!r}")
        if stats is None:
            raise StatsNeeded(f"--normalize {mode} needs dataset statistics: pass --stats FILE "
                              "(from raysegment stats) or let train compute them")
        bands = list(stats.get("bands") or [])
        if not bands or any(b.get("count") == 0 for b in bands):
            raise ValueError("the statistics hold a band with no value (no item could be read?)")
        items = f"{stats.get('items', '?')} items"
        if mode == "zscore":
            return cls("zscore", tuple(float(b["mean"]) for b in bands), tuple(float(b["std"]) for b in bands), False,
                       f"zscore of {items}")
        lows = tuple(percentile_of(b, cut[0]) for b in bands)
        highs = tuple(percentile_of(b, cut[1]) for b in bands)
        return cls("percentile", lows, tuple(h - lo for lo, h in zip(lows, highs)), True,
                   f"percentile {cut[0]:g}:{cut[1]:g} of {items}")

    def apply(self, sample: Sample) -> Sample:
        """The sample with normalised float32 data (the same sample for ``dtype``)."""
        if self.mode == "dtype":
            return sample
        data = sample.data
        if self.bands is not None:
            have = data.shape[-1] if data.ndim in (3, 4) else 1
            if have != self.bands:
                raise InputError(f"input has {have} band(s) but the normalisation ({self.source}) is for {self.bands}")
        offset = np.asarray(self.offset, dtype=np.float32)
        scale = np.asarray(self.scale, dtype=np.float32)
        if data.ndim == 2 and self.bands is not None:  # (H, W) grey image, one band
            offset, scale = offset[0], scale[0]
        out = (data.astype(np.float32) - offset) / scale
        if self.clip:
            np.clip(out, 0.0, 1.0, out=out)
        return dataclasses.replace(sample, data=out)

    def to_json(self) -> dict[str, Any]:
        """Plain JSON, as the checkpoint and the run manifest store it."""
        return {"mode": self.mode, "offset": list(self.offset), "scale": list(self.scale), "clip": self.clip,
                "source": self.source}

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> Normalization:
        """The inverse of :meth:`to_json`; None (an older checkpoint) is the dtype rule."""
        if not data:
            return cls()
        return cls(str(data["mode"]), tuple(float(v) for v in data.get("offset") or ()),
                   tuple(float(v) for v in data.get("scale") or ()), bool(data.get("clip")), str(data.get("source", "")))


def percentile_of(band: Mapping[str, Any], p: float) -> float:
    """Percentile ``p`` of a band of the statistics JSON, interpolated on its stored grid."""
    grid: Sequence[float] = band["percentiles"]  # values at 0, 0.5, ..., 100
    steps = np.linspace(0.0, 100.0, len(grid))
    return float(np.interp(p, steps, np.asarray(grid, dtype=np.float64)))
