"""Distributed training as a Python API; the CLI's ``train`` is a thin wrapper.

The driver checks everything it can before Ray starts (model, loss, augment
spec, data listing, storage), then runs one Ray Data pass that checks every
pair and writes the training-data report, then hands streaming datasets to a
Ray Train ``TorchTrainer``. Checkpoints and the run's files live under
``STORAGE/NAME``; rerunning the same command with ``resume=True`` continues
from the last checkpoint (Ray Train restores runs by storage path and name).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from raysegment.criteria.losses import build_loss
from raysegment.eval.stats import compute_stats
from raysegment.io.decoders import DecodeLimits
from raysegment.plugin.contract import Modality
from raysegment.plugin.normalization import Normalization, StatsNeeded, needs_stats
from raysegment.plugin.spec import ModelSpec, resolve_model
from raysegment.runtime import ensure_ray
from raysegment.tasks.spec import task_spec
from raysegment.train.augment import AugmentConfig
from raysegment.train.data import (
    DataCheck,
    TrainPair,
    WeightMapOptions,
    fill_to_workers,
    list_pairs,
    load_pairs,
    parse_value_map,
    report_bytes,
    split_pairs,
)
from raysegment.train.run_folder import RunFolder
from raysegment.train.window_plan import plan_windowed_training, split_scenes
from raysegment.train.worker_config import WorkerConfig
from raysegment.uri import redact

__all__ = ["DataCheck", "TrainConfig", "TrainSummary", "TrainingDataError", "balanced_weights", "run_training"]

log = logging.getLogger("raysegment")

REPORT = "data_report.parquet"
STATS = "stats.json"  # the statistics a percentile / zscore normalisation was resolved from
BEST = "best.pt"


class TrainingDataError(ValueError):
    """Bad training pairs with ``bad_data="fail"``, or nothing left to train on."""


@dataclasses.dataclass
class TrainConfig:
    images: str
    masks: str | None = None  # None: ``images`` is a manifest with image_uri, mask_uri
    pair: str = "{stem}"
    val_images: str | None = None
    val_masks: str | None = None
    val_fraction: float = 0.2
    model: str | None = None
    params: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    init_checkpoint: str | None = None
    epochs: int = 10
    batch_size: int = 4
    workers: int = 2
    use_gpu: bool = False
    lr: float = 1e-3
    weight_decay: float = 0.0
    loss: str | None = None  # None: the plugin's loss (``plugin.loss``, its task's default)
    class_weights: Sequence[float] | str | None = None  # "balanced": from the training masks' class pixels
    augment: str = "flip,rot90"
    mask_values: str = ""
    #: ``--select``: the checkpoint metric (``miou``, ``fg_miou``, ``iou:<class>``, ``dice:<class>``);
    #: None: the foreground IoU for two classes, else mIoU
    select: str | None = None
    #: ``--normalize`` (``dtype``, ``minmax:LO:HI``, ``percentile[:2:98]``, ``zscore``); None: the init
    #: checkpoint's, else ``dtype``. Stored in every checkpoint; ``infer`` applies it.
    normalize: str | None = None
    stats: str | None = None  # statistics JSON (``raysegment stats``); None: computed on the training images
    weight_map: WeightMapOptions | None = None  # made automatically when the loss needs one
    #: ``--window``: train on windows sampled from whole scenes (``images``) with label rasters or vector
    #: labels (``masks``); an int or one size per axis. None: train on whole images.
    window: int | Sequence[int] | None = None
    windows_per_epoch: int | None = None  # None: about one pass over the training pixels
    positive_fraction: float = 0.0  # share of windows placed over a foreground cell
    val_region: str | None = None  # ``--val-region``: the part of every scene held out (see io/regions.py)
    label_field: str | None = None  # vector labels: the integer column to burn (None: burn 1)
    storage: str = "runs"
    name: str = "train"
    resume: bool = False
    seed: int = 0
    bad_data: str = "skip"  # skip | fail
    max_failures: int = 2
    address: str | None = None
    storage_options: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class TrainSummary:
    run: str
    epochs: int
    best_val_miou: float  # the mIoU of the best checkpoint
    best_checkpoint: str
    pairs_ok: int
    pairs_bad: int
    seconds: float
    history: list[dict[str, Any]]
    select: str = "val_miou"  # the report field that picked it
    best_score: float = 0.0  # its value there

    def format(self) -> str:
        picked = "" if self.select == "val_miou" else f" ({self.select} {self.best_score:.4f})"
        return (f"trained {self.epochs} epoch(s) in {self.seconds:.0f}s; best val mIoU {self.best_val_miou:.4f}{picked}\n"
                f"best checkpoint: {self.best_checkpoint}\nrun: {self.run}  "
                f"(pairs ok {self.pairs_ok}, skipped {self.pairs_bad}; report {REPORT})")


def _pair_rows(pairs: Sequence[TrainPair], start: int = 0) -> list[dict[str, Any]]:
    return [{"index": start + i, "image_uri": p.image, "mask_uri": p.mask} for i, p in enumerate(pairs)]


def _check_data(rows: list[dict[str, Any]], spec: ModelSpec, cfg: TrainConfig, value_map: dict[int, int],
                run: RunFolder, unpaired: list[tuple[str, str]], train_count: int) -> DataCheck:
    """One Ray Data pass over every pair: the report rows, the good pairs and their label counts."""
    import ray.data

    ds = ray.data.from_items(rows).map_batches(
        load_pairs, batch_size=8, batch_format="numpy",
        fn_kwargs={"spec": spec, "value_map": value_map, "storage_options": cfg.storage_options,
                   "keep_arrays": False})
    columns = ["index", "image_uri", "mask_uri", "status", "error", "height", "width", "ignored"]
    out: dict[str, list[Any]] = {c: [] for c in columns}
    check = DataCheck(set(), np.zeros(max(spec.plugin().num_classes, 2), dtype=np.int64), 0)
    for batch in ds.iter_batches(batch_format="numpy", batch_size=256):
        for i in range(len(batch["index"])):
            ok = batch["status"][i] == "ok"
            for c in columns:
                value = batch[c][i]
                out[c].append(value.item() if hasattr(value, "item") else value)
            out["error"][-1] = None if ok else out["error"][-1]
            if ok:
                check.good.add(int(batch["index"][i]))
                check.ignored += int(batch["ignored"][i])
                if int(batch["index"][i]) < train_count:
                    check.class_pixels += batch["class_pixels"][i]
    for uri, reason in unpaired:
        for c, v in zip(columns, [-1, uri, None, "error", reason, 0, 0, 0]):
            out[c].append(v)
    run.write(REPORT, report_bytes(pa.table(out)))
    return check


def balanced_weights(class_pixels: np.ndarray) -> tuple[float, ...]:
    """``total / (K * pixels of class c)`` (scikit-learn's "balanced"); a class with no pixel gets 0."""
    counts = np.asarray(class_pixels, dtype=np.float64)
    present = counts > 0
    weights = np.zeros_like(counts)
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return tuple(float(w) for w in weights)


def _ordered_ingest() -> Any:
    """Ray Train's default ingest, but order-preserving: with the seeded split, weights and
    augmentations, a rerun feeds each worker the same items in the same order."""
    from ray.train import DataConfig

    options = DataConfig.default_ingest_options()
    options.preserve_order = True
    return DataConfig(execution_options=options)


def _threads(resources: Mapping[str, float]) -> int | None:
    """Torch threads for a CPU worker: its whole CPU share (Ray would pin it to one)."""
    return None if resources.get("GPU") else max(1, int(resources["CPU"]))


def _worker_resources(cfg: TrainConfig, cluster: Mapping[str, float]) -> dict[str, float]:
    """Leave at least one CPU to the Ray Data stage that decodes and augments.

    Ray Train keeps its workers' CPUs away from Ray Data; with every CPU
    given to workers the data stage would never run.
    """
    if cfg.use_gpu:
        return {"CPU": 1.0, "GPU": 1.0}
    cpus = float(cluster.get("CPU", 1.0))
    per = (cpus - 1.0) / cfg.workers
    if per < 0.1:
        raise ValueError(f"{cfg.workers} CPU worker(s) leave no CPU for the data stage on {cpus:g} CPU(s); use fewer --workers")
    return {"CPU": round(per, 3)}


def _read_stats(url: str, storage_options: Mapping[str, Any] | None) -> dict[str, Any]:
    """The JSON of ``raysegment stats``; a missing or malformed file is one line."""
    import fsspec

    try:
        with fsspec.open(url, "rb", **dict(storage_options or {})) as f:
            stats = json.loads(f.read())
    except FileNotFoundError:
        raise ValueError(f"--stats file not found: {redact(url)}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"--stats {redact(url)} is not statistics JSON: {exc}") from None
    if not isinstance(stats, dict) or not isinstance(stats.get("bands"), list):
        raise ValueError(f"--stats {redact(url)} holds no 'bands' list: not the output of raysegment stats")
    return stats


def run_training(cfg: TrainConfig) -> TrainSummary:
    """Train (or resume) a model on Ray Train; returns where the best checkpoint is."""
    start = time.perf_counter()
    if cfg.bad_data not in ("skip", "fail"):
        raise ValueError(f"--bad-data must be skip or fail, got {cfg.bad_data!r}")
    if cfg.epochs < 1 or cfg.batch_size < 1 or cfg.workers < 1:
        raise ValueError("--epochs, --batch-size and --workers must be >= 1")
    spec = resolve_model(cfg.model, cfg.params, cfg.init_checkpoint, cfg.storage_options, warn_random=False)
    plugin = spec.plugin()
    task = task_spec(plugin.task)
    for capability in ("target", "metric", "validation_report", "select"):
        task.require(capability, "training")  # one line before any data is listed
    score = task.select(cfg.select, spec.label_names)
    stats = _read_stats(cfg.stats, cfg.storage_options) if cfg.stats else None
    if cfg.normalize is not None:
        try:
            spec = dataclasses.replace(spec, normalization=Normalization.resolve(cfg.normalize, stats))
        except StatsNeeded:
            pass  # a valid mode whose statistics are computed on the training images once Ray is up
    # No --loss and no class weights: the plugin's own loss (its task's default unless it overrides it).
    if isinstance(cfg.class_weights, str) and cfg.class_weights != "balanced":
        raise ValueError(f"--class-weights must be numbers or 'balanced', got {cfg.class_weights!r}")
    loss = None if cfg.loss is None and cfg.class_weights is None else build_loss(
        cfg.loss or "ce", num_classes=plugin.num_classes, ignore_index=plugin.ignore_index,
        class_weights=None if cfg.class_weights == "balanced" else cfg.class_weights)
    AugmentConfig.parse(cfg.augment).check_rank(3 if plugin.modality is Modality.VOLUME else 2)
    value_map = parse_value_map(cfg.mask_values)
    if cfg.window is not None:
        split = split_scenes(cfg)
        train_images = [scene.image for scene in split.train]
    else:
        if cfg.val_region or cfg.label_field or cfg.positive_fraction:
            raise ValueError("--val-region, --label-field and --positive-fraction need --window (training from scenes)")
        pairs, unpaired = list_pairs(cfg.images, cfg.masks, pair=cfg.pair, storage_options=cfg.storage_options)
        if cfg.val_images:
            train_pairs = pairs
            val_pairs, more = list_pairs(cfg.val_images, cfg.val_masks, pair=cfg.pair,
                                         storage_options=cfg.storage_options)
            unpaired += more
        else:
            train_pairs, val_pairs = split_pairs(pairs, cfg.val_fraction, cfg.seed)
        if not val_pairs:
            raise ValueError("validation set is empty: raise --val-fraction or pass --val-images")
        train_images = [p.image for p in train_pairs]
    weights = cfg.weight_map or (WeightMapOptions() if loss is not None and loss.needs_weight_map else None)
    if weights is not None and plugin.modality is Modality.VOLUME:
        raise ValueError("the U-Net border weight map (loss 'wce') is 2D only; pick another --loss for volumes")
    if weights is not None and cfg.window is not None:
        raise ValueError("the U-Net border weight map (loss 'wce') needs whole masks; pick another --loss with --window")
    run = RunFolder(cfg.storage, cfg.name, cfg.storage_options)
    run.check(cfg.resume)  # takes the folder's lease: one run per --storage/--name, released below
    try:
        started = ensure_ray(cfg.address)
    except BaseException:
        run.release()
        raise
    import ray
    import ray.data
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from raysegment.train.loop import train_loop_per_worker

    try:
        if cfg.normalize is not None and stats is None and needs_stats(cfg.normalize):
            stats = compute_stats(train_images, modality=plugin.modality,
                                  storage_options=cfg.storage_options)  # training images only (with --val-region
            # the whole scenes: statistics of unlabelled pixels, not their labels)
            run.write(STATS, json.dumps(stats, indent=1).encode())
            spec = dataclasses.replace(spec, normalization=Normalization.resolve(cfg.normalize, stats))
        if spec.normalization.mode != "dtype":
            log.warning("normalisation: %s", spec.normalization.source)
        if cfg.window is not None:
            windowed = plan_windowed_training(cfg, spec, value_map, split,
                                              lambda table: run.write(REPORT, report_bytes(table)))
            check, bad, windows = windowed.check, windowed.scenes_bad, windowed.plan
            val_rows, load_kwargs, bound = windowed.val_rows, dict(windows.load_kwargs), windows.count
            log.warning("windows: %d per epoch from %d scene(s), %d validation window(s)",
                        windows.count, len(windows.scene_ids), len(val_rows))
        else:
            train_rows, val_rows = _pair_rows(train_pairs), _pair_rows(val_pairs, len(train_pairs))
            check = _check_data(train_rows + val_rows, spec, cfg, value_map, run, unpaired, len(train_pairs))
            bad = len(train_rows) + len(val_rows) - len(check.good) + len(unpaired)
            windows = None
        good = check.good
        if check.ignored and not value_map:
            log.warning("%s mask pixel(s) have value %d = the model's ignore_index and are left out of the loss and "
                        "the metrics; if they are a class (a 0/%d mask), pass --mask-values, e.g. 0:0,%d:1",
                        f"{check.ignored:,}", plugin.ignore_index, plugin.ignore_index, plugin.ignore_index)
        class_weights = balanced_weights(check.class_pixels) if cfg.class_weights == "balanced" else cfg.class_weights
        if cfg.class_weights == "balanced":
            log.warning("balanced class weights: %s", ", ".join(f"{n} {w:.3g}" for n, w in
                                                                 zip(spec.label_names, class_weights)))
        if bad and cfg.bad_data == "fail":
            what = "scene" if windows is not None else "pair"
            raise TrainingDataError(f"{bad} bad training {what}(s); see {redact(run.url)}/{REPORT}")
        datasets = {}
        if windows is None:
            train_rows = [r for r in train_rows if r["index"] in good]
            val_rows = [r for r in val_rows if r["index"] in good]
            if not train_rows or not val_rows:
                raise TrainingDataError(f"no usable training or validation pairs left; see {redact(run.url)}/{REPORT}")
            load_kwargs = {"spec": spec, "value_map": value_map, "weights": weights, "limits": DecodeLimits(),
                           "storage_options": cfg.storage_options}
            datasets["train"] = ray.data.from_items(fill_to_workers(train_rows, cfg.workers)).map_batches(
                load_pairs, batch_size=4, batch_format="numpy", fn_kwargs=load_kwargs)
            load_kwargs = {**load_kwargs, "weights": None}  # validation scores plain pairs (a new dict: Ray reads
            # the training fn_kwargs when the dataset runs)
            bound = max(r["index"] for r in train_rows) + 1
        resources = _worker_resources(cfg, ray.cluster_resources())

        path, filesystem = run.arrow_filesystem()
        trainer = TorchTrainer(
            train_loop_per_worker,
            train_loop_config=WorkerConfig(
                spec=spec, seed=cfg.seed, lr=cfg.lr, weight_decay=cfg.weight_decay, epochs=cfg.epochs,
                batch_size=cfg.batch_size, augment=cfg.augment, label_names=tuple(spec.label_names),
                val_rows=tuple(val_rows), load_kwargs=load_kwargs, windows=windows,
                train_index_bound=bound, score=score, loss=cfg.loss,
                class_weights=tuple(class_weights) if class_weights else None,
                init_checkpoint=cfg.init_checkpoint, storage_options=cfg.storage_options, run=run,
                threads=_threads(resources),
            ).as_loop_config(),
            scaling_config=ScalingConfig(num_workers=cfg.workers, use_gpu=cfg.use_gpu,
                                         resources_per_worker=resources),
            run_config=RunConfig(
                name=cfg.name, storage_path=path, storage_filesystem=filesystem,
                failure_config=FailureConfig(max_failures=cfg.max_failures),
                checkpoint_config=CheckpointConfig(num_to_keep=2, checkpoint_score_attribute=score,
                                                   checkpoint_score_order="max"),
            ),
            datasets=datasets,  # validation (and windows): each rank builds its exact share (train_loop)
            dataset_config=_ordered_ingest(),
        )
        result = trainer.fit()
        scored = [(m.get(score, -1.0), m, c) for c, m in result.best_checkpoints]
        best_score, best_metrics, best_ckpt = max(scored, key=lambda t: t[0])
        with best_ckpt.as_directory() as folder:
            with open(f"{folder}/model.pt", "rb") as f:
                run.write(BEST, f.read())
        with result.checkpoint.as_directory() as folder:
            history = json.loads(torch.load(f"{folder}/train_state.pt", map_location="cpu", weights_only=True)["history"])
        run.write_history(history)
    finally:
        if started:
            ray.shutdown()
        run.release()
    return TrainSummary(run=redact(run.url), epochs=len(history), best_val_miou=float(best_metrics.get("val_miou", 0.0)),
                        best_checkpoint=f"{redact(run.url)}/{BEST}", pairs_ok=len(good),
                        pairs_bad=bad, seconds=time.perf_counter() - start, history=history, select=score,
                        best_score=float(best_score))
