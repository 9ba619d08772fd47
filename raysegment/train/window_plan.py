"""The driver's side of windowed training: which scenes train, which validate, and where.

``raysegment train --window N`` turns large scenes into a training set without
anyone cutting tiles. On the driver, before Ray Train starts:

1. scenes are listed and paired with their labels (:func:`~raysegment.train.scene_data.list_scenes`);
2. the hold-out is chosen: ``--val-region`` (a box, a side fraction, a vector file)
   keeps part of *every* scene for validation; without it whole scenes are held out
   (``--val-images``, or the seeded ``--val-fraction`` split: the volumes case);
3. one Ray task per scene surveys it (:func:`~raysegment.train.scene_data.survey_scene`);
   the survey's rows are the training-data report, as for image pairs;
4. the result is a :class:`WindowPlan` (the seeded sampler and the window loader,
   shipped to every worker, which draws its epoch's share itself) and the
   validation grid, whose windows lie inside the hold-out and so never meet a
   training window.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from raysegment.io.decoders import DecodeLimits
from raysegment.io.regions import Region, box_pixels, parse_region
from raysegment.plugin.spec import ModelSpec
from raysegment.train.data import DataCheck, report_table, split_pairs
from raysegment.train.sampler import RandomWindows, SceneWindows, cell_size, grid_windows
from raysegment.train.scene_data import Scene, list_scenes, scenes_as_pairs, survey_scene

__all__ = ["SceneSplit", "WindowPlan", "WindowedData", "split_scenes", "plan_windowed_training"]


@dataclasses.dataclass(frozen=True)
class WindowPlan:
    """What each worker needs to draw and read its windows of an epoch."""

    sampler: RandomWindows
    scene_ids: tuple[int, ...]  # sampler scene -> index into ``load_kwargs["scenes"]``
    count: int  # windows per epoch over all workers (a multiple of the worker count)
    load_kwargs: Mapping[str, Any]  # ``fn_kwargs`` of :func:`~raysegment.train.scene_data.load_windows`

    def epoch_rows(self, seed: int, epoch: int, rank: int, world: int) -> list[dict[str, Any]]:
        """This rank's windows of ``epoch``: ``[rank::world]`` of the one seeded list."""
        rows = []
        for row in self.sampler.epoch_rows(seed, epoch, self.count)[rank::world]:
            item = row.as_row()
            item["scene"] = self.scene_ids[row.scene]
            rows.append(item)
        return rows


@dataclasses.dataclass
class WindowedData:
    """The plan, the validation windows and what the survey counted."""

    plan: WindowPlan
    val_rows: list[dict[str, Any]]
    check: DataCheck
    scenes_ok: int
    scenes_bad: int
    report: Any  # the training-data report (a pyarrow Table)


def _window(value: Any, ndim: int) -> tuple[int, ...]:
    sizes = (int(value),) * ndim if isinstance(value, int) else tuple(int(v) for v in value)
    if len(sizes) == 1:
        sizes *= ndim
    if len(sizes) != ndim or min(sizes) < 1:
        raise ValueError(f"--window needs {ndim} sizes >= 1 for this model, got {value!r}")
    return sizes


@dataclasses.dataclass(frozen=True)
class SceneSplit:
    """Training scenes, held-out scenes, and the region every training scene keeps back."""

    train: tuple[Scene, ...]
    val: tuple[Scene, ...]
    region: Region | None
    unpaired: tuple[tuple[str, str], ...]


def split_scenes(cfg: Any) -> SceneSplit:
    """Steps 1 and 2 of the module docstring, on the driver before Ray starts; ``cfg`` is a ``TrainConfig``."""
    region = parse_region(cfg.val_region) if cfg.val_region else None
    scenes, unpaired = list_scenes(cfg.images, cfg.masks, pair=cfg.pair, storage_options=cfg.storage_options)
    if cfg.val_images:
        if region is not None:
            raise ValueError("--val-region and --val-images both choose the validation data; pass one")
        val_scenes, more = list_scenes(cfg.val_images, cfg.val_masks, pair=cfg.pair,
                                       storage_options=cfg.storage_options)
        return SceneSplit(tuple(scenes), tuple(val_scenes), None, (*unpaired, *more))
    if region is not None:
        return SceneSplit(tuple(scenes), (), region, tuple(unpaired))
    if len(scenes) == 1:
        raise ValueError("one scene and no hold-out: pass --val-region (e.g. east:0.3) or --val-images")
    train_pairs, val_pairs = split_pairs(scenes_as_pairs(scenes), cfg.val_fraction, cfg.seed)
    if not val_pairs:
        raise ValueError("validation set is empty: raise --val-fraction, or pass --val-region or --val-images")
    by_pair = {(s.image, s.label): s for s in scenes}
    return SceneSplit(tuple(by_pair[(p.image, p.mask)] for p in train_pairs),
                      tuple(by_pair[(p.image, p.mask)] for p in val_pairs), None, tuple(unpaired))


def plan_windowed_training(cfg: Any, spec: ModelSpec, value_map: Mapping[int, int], split: SceneSplit,
                           write_report: Callable[[Any], None]) -> WindowedData:
    """Steps 3 and 4 of the module docstring (Ray must be up); ``spec`` carries the resolved normalisation.

    ``write_report`` gets the report table before any check can stop the run, so the error's
    "see the report" always finds it."""
    import ray

    from raysegment.plugin.contract import Modality

    plugin = spec.plugin()
    window = _window(cfg.window, 3 if plugin.modality is Modality.VOLUME else 2)
    train_scenes, val_scenes, region, unpaired = split.train, split.val, split.region, split.unpaired
    table: list[Scene] = [*train_scenes, *val_scenes]
    cell = cell_size(window)
    survey = ray.remote(num_cpus=1)(survey_scene)
    kwargs = {"spec": spec, "value_map": value_map, "cell": cell, "label_field": cfg.label_field,
              "storage_options": cfg.storage_options, "limits": DecodeLimits()}
    futures = [survey.remote(s, region=region if i < len(train_scenes) else None, **kwargs)
               for i, s in enumerate(table)]
    results = ray.get(futures)
    check = DataCheck(set(), np.zeros(max(plugin.num_classes, 2), dtype=np.int64), 0)
    sampled, ids, val_rows = [], [], []
    for i, result in enumerate(results):
        if result["status"] != "ok":
            continue
        check.good.add(i)
        check.ignored += int(result["ignored"])
        shape = tuple(result["shape"])
        if i < len(train_scenes):
            check.class_pixels += result["class_pixels"]
            sampled.append(SceneWindows(shape, tuple(result["exclude"]),
                                        np.asarray(result["positive"], dtype=np.int64)))
            ids.append(i)
            held = result["exclude"]
        else:
            held = None  # a held-out scene validates whole
        if i >= len(train_scenes) or held:
            val_rows += [dict(r.as_row(), scene=i) for r in grid_windows(shape, window, held, i, 0)]
    rows = [{"index": i, "image_uri": s.image, "mask_uri": s.label, "status": r["status"], "error": r["error"],
             "height": int(r["shape"][-2]) if r["shape"] else 0, "width": int(r["shape"][-1]) if r["shape"] else 0,
             "ignored": int(r["ignored"]), "role": "train" if i < len(train_scenes) else "val",
             "val_pixels": sum(box_pixels(b) for b in r["exclude"])} for i, (s, r) in enumerate(zip(table, results))]
    rows += [{"index": -1, "image_uri": uri, "mask_uri": None, "status": "error", "error": reason, "height": 0,
              "width": 0, "ignored": 0, "role": None, "val_pixels": 0} for uri, reason in unpaired]
    bad = sum(r["status"] != "ok" for r in rows)
    report = report_table(rows)
    write_report(report)
    if not sampled:
        raise ValueError("no usable training scene left; see the training-data report")
    if not val_rows:
        raise ValueError(f"the validation region {cfg.val_region!r} covers no pixel of any usable scene"
                         if region is not None else "no usable validation scene left")
    sampler = RandomWindows(tuple(sampled), window, float(cfg.positive_fraction))
    for r, row in enumerate(val_rows):
        row["index"] = r
    count = cfg.windows_per_epoch or _default_count(sampled, window)
    count = math.ceil(count / cfg.workers) * cfg.workers  # equal shares: DDP ranks must step together
    load = {"spec": spec, "scenes": tuple(table), "value_map": value_map, "label_field": cfg.label_field,
            "storage_options": cfg.storage_options, "limits": DecodeLimits()}
    plan = WindowPlan(sampler, tuple(ids), count, load)
    return WindowedData(plan, val_rows, check, len(check.good), bad, report)


def _default_count(scenes: Sequence[SceneWindows], window: Sequence[int]) -> int:
    """About one pass over the training pixels per epoch (at least 8 windows)."""
    area = sum(math.prod(s.shape) - sum(box_pixels(b) for b in s.exclude) for s in scenes)
    return max(8, math.ceil(area / math.prod(window)))
