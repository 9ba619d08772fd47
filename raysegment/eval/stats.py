"""Per-band statistics of a dataset, on Ray, in bounded memory: what ``--normalize`` needs.

``raysegment stats INPUT`` (and ``raysegment train`` when its normalisation needs them) lists
the items, and each Ray task reads a few, one at a time and each by strips of at most
:data:`~raysegment.io.scenes.base.STRIP_PIXELS` pixels where the format can be read by range
(GeoTIFF/COG, TIFF, NIfTI: a scene larger than memory never lives whole), into a :class:`BandStats`: per band
the count, min, max, mean and variance (merged exactly with Chan et al.'s parallel formula, in
float64) and a KLL quantile sketch (Apache DataSketches), whose size does not grow with the
data. The driver merges the tasks' partial statistics, so memory is a few sketches whatever
the dataset's size. Percentiles are approximate: the value reported for percentile ``p`` has a
rank within ``percentile_rank_error`` (about 1.3 % at the default ``k = 200``) of ``p``.

An item that cannot be decoded is counted and named (the first few), never fatal.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Sequence
from typing import Any

import numpy as np

from raysegment.errors import InputSpecError, describe_error
from raysegment.io.decoders import DecodeLimits
from raysegment.io.scenes.base import open_scene, strip_windows
from raysegment.io.sources import list_inputs
from raysegment.plugin.types import Modality
from raysegment.progress import progress
from raysegment.runtime import ensure_ray
from raysegment.uri import redact

__all__ = ["BandStats", "compute_stats", "PERCENTILE_GRID"]

#: Percentiles stored in the JSON: 0, 0.5, ..., 100 (interpolated between by ``--normalize``).
PERCENTILE_GRID = tuple(np.linspace(0.0, 100.0, 201).tolist())
SKETCH_K = 200
ITEMS_PER_TASK = 8
EXAMPLES = 5


class BandStats:
    """Running statistics of every band of the items seen; partial ones merge exactly (moments)."""

    def __init__(self, k: int = SKETCH_K) -> None:
        self.k = k
        self.bands: int | None = None
        self.count = np.zeros(0, dtype=np.int64)
        self.mean = np.zeros(0)
        self.m2 = np.zeros(0)  # sum of squared deviations from the mean
        self.min = np.zeros(0)
        self.max = np.zeros(0)
        self.sketches: list[Any] = []
        self.dtypes: set[str] = set()

    def _start(self, bands: int) -> None:
        from datasketches import kll_doubles_sketch

        self.bands = bands
        self.count = np.zeros(bands, dtype=np.int64)
        self.mean, self.m2 = np.zeros(bands), np.zeros(bands)
        self.min, self.max = np.full(bands, np.inf), np.full(bands, -np.inf)
        self.sketches = [kll_doubles_sketch(self.k) for _ in range(bands)]

    def update(self, data: np.ndarray) -> BandStats:
        """Add one channels-last item ((H, W), (H, W, C) or (D, H, W, C)); NaNs are left out."""
        values = data.reshape(-1, 1) if data.ndim == 2 else data.reshape(-1, data.shape[-1])
        if self.bands is None:
            self._start(values.shape[1])
        if values.shape[1] != self.bands:
            raise ValueError(f"item has {values.shape[1]} band(s) but earlier items have {self.bands}")
        self.dtypes.add(str(data.dtype))
        for b in range(values.shape[1]):
            column = values[:, b].astype(np.float64)
            column = column[np.isfinite(column)]
            if column.size:
                self._add(b, column.size, float(column.mean()), float(((column - column.mean()) ** 2).sum()),
                          float(column.min()), float(column.max()))
                self.sketches[b].update(column)
        return self

    def _add(self, b: int, n: int, mean: float, m2: float, lo: float, hi: float) -> None:
        total = self.count[b] + n
        delta = mean - self.mean[b]
        self.mean[b] += delta * n / total
        self.m2[b] += m2 + delta**2 * self.count[b] * n / total
        self.count[b] = total
        self.min[b], self.max[b] = min(self.min[b], lo), max(self.max[b], hi)

    def merge(self, other: BandStats) -> BandStats:
        """Add another partial's items into this one (in place); returns self."""
        if other.bands is None:
            return self
        if self.bands is None:
            self._start(other.bands)
        if other.bands != self.bands:
            raise ValueError(f"cannot merge statistics of {other.bands} band(s) into {self.bands}")
        for b in range(other.bands):
            if other.count[b]:
                self._add(b, int(other.count[b]), float(other.mean[b]), float(other.m2[b]), float(other.min[b]),
                          float(other.max[b]))
                self.sketches[b].merge(other.sketches[b])
        self.dtypes |= other.dtypes
        return self

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["sketches"] = [s.serialize() for s in self.sketches]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        from datasketches import kll_doubles_sketch

        state = dict(state)
        state["sketches"] = [kll_doubles_sketch.deserialize(s) for s in state["sketches"]]
        self.__dict__.update(state)

    @property
    def rank_error(self) -> float:
        """The sketches' normalised rank error (one-sided percentile queries)."""
        return float(self.sketches[0].normalized_rank_error(False)) if self.sketches else 0.0

    def to_json(self) -> list[dict[str, Any]]:
        """One dict per band: count, min, max, mean, std (population) and the percentile grid."""
        out = []
        for b in range(self.bands or 0):
            n = int(self.count[b])
            grid = self.sketches[b].get_quantiles([p / 100 for p in PERCENTILE_GRID]) if n else []
            out.append({"band": b, "count": n, "min": float(self.min[b]) if n else None,
                        "max": float(self.max[b]) if n else None, "mean": float(self.mean[b]) if n else None,
                        "std": float(np.sqrt(self.m2[b] / n)) if n else None,
                        "percentiles": [float(v) for v in grid]})
        return out


def _stats_batch(batch: dict[str, np.ndarray], *, modality: Modality, limits: DecodeLimits,
                 storage_options: dict | None) -> dict[str, np.ndarray]:
    """A few items -> one row: their pickled :class:`BandStats`, counts and the first errors."""
    stats, ok, problems = BandStats(), 0, []
    for uri in batch["uri"]:
        try:
            with open_scene(str(uri), storage_options, modality, limits) as scene:
                for strip in strip_windows(scene.info.shape):
                    stats.update(scene.read(strip))
            ok += 1
        except Exception as exc:
            problems.append(f"{redact(str(uri))}: {describe_error(exc)}")
    return {"stats": np.array([pickle.dumps(stats)], dtype=object), "ok": np.array([ok]),
            "failed": np.array([len(problems)]), "problems": np.array([json.dumps(problems[:EXAMPLES])], dtype=object)}


def compute_stats(input: str | Sequence[str], *, modality: Modality | str = Modality.IMAGE,
                  storage_options: dict | None = None, address: str | None = None,
                  limits: DecodeLimits = DecodeLimits()) -> dict[str, Any]:
    """Per-band statistics of every item of ``input`` (a listing spec, or URIs), as plain JSON.

    Reuses an initialised Ray, else starts one (or joins ``address``) and stops it again.
    """
    uris = list_inputs(input, storage_options) if isinstance(input, str) else list(input)
    if not uris:
        raise InputSpecError(f"no input items in {redact(str(input))}")
    modality = Modality(modality)
    import ray
    import ray.data

    started = ensure_ray(address)
    total, ok, failed, problems = BandStats(), 0, 0, []
    try:
        with progress(len(uris), "stats") as bar:  # before the dataset: it copies Ray Data's settings
            ds = ray.data.from_items([{"uri": u} for u in uris],
                                     override_num_blocks=max(1, len(uris) // ITEMS_PER_TASK))
            ds = ds.map_batches(_stats_batch, batch_size=ITEMS_PER_TASK, batch_format="numpy", num_cpus=1,
                                fn_kwargs={"modality": modality, "limits": limits, "storage_options": storage_options})
            for part in ds.iter_batches(batch_format="numpy", batch_size=None):  # per block: a steady bar
                for blob in part["stats"]:
                    total.merge(pickle.loads(blob))  # our own tasks' partials, never outside data
                ok, failed = ok + int(part["ok"].sum()), failed + int(part["failed"].sum())
                bar.update(int(part["ok"].sum() + part["failed"].sum()))
                for text in part["problems"]:
                    problems += json.loads(text)[: EXAMPLES - len(problems)]
    finally:
        if started:
            ray.shutdown()
    if not ok:
        raise ValueError(f"no item of {redact(str(input))} could be read: {problems[0] if problems else 'none listed'}")
    return {"input": redact(input) if isinstance(input, str) else f"{len(uris)} items", "modality": modality.value,
            "items": ok, "failed": failed, "problems": problems, "dtypes": sorted(total.dtypes),
            "percentile_grid": list(PERCENTILE_GRID), "percentile_rank_error": total.rank_error,
            "bands": total.to_json()}
