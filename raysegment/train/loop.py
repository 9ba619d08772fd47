"""The per-worker training loop that Ray Train runs (one process per GPU, or CPU workers).

Kept apart from the driver code in :mod:`raysegment.train.training` because it runs
inside Ray Train workers: it sees only its dataset shard, synchronises through
DDP and ``all_reduce``, and persists through ``ray.train.report``.
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import time
from typing import Any

import numpy as np
import torch
from ray.data.collate_fn import NumpyBatchCollateFn

from raysegment.criteria.losses import build_loss
from raysegment.io.payload import unpack
from raysegment.plugin.checkpoint import load_checkpoint, load_weights, save_checkpoint
from raysegment.plugin.contract import with_aux_losses
from raysegment.plugin.padding import pad_to_shape, padded_shape
from raysegment.progress import progress_line
from raysegment.tasks.spec import MetricAccumulator, task_spec
from raysegment.train.augment import AugmentConfig, augment, augment_volume, rng_for
from raysegment.train.worker_config import WorkerConfig

__all__ = ["Collate", "flat_report", "merged_across_workers", "training_loss", "train_loop_per_worker"]

STATE = "train_state.pt"
MODEL = "model.pt"
#: A rank keeps its validation batches in memory across epochs up to this many bytes.
VALIDATION_CACHE_BYTES = 512 * 2**20


class Collate(NumpyBatchCollateFn):
    """Numpy rows -> padded tensors, augmenting on the CPU with per-item seeds.

    Each item's augmentation depends only on (seed, epoch, item index), so a
    run is reproducible whatever the number of workers and across resumes.
    Images (C, H, W) and volumes (C, D, H, W) alike: the items of a batch are
    padded to the batch's largest size, rounded up to the model's ``size_divisor``
    (reflect in the input, ``ignore_index`` in the target, 0 in the weight), so
    volumes of a dataset whose sizes differ by a few voxels batch without a crop.
    """

    def __init__(self, config: AugmentConfig, seed: int, epoch: int, divisor: int, ignore_index: int):
        self.config, self.seed, self.epoch = config, seed, epoch
        self.divisor, self.ignore_index = divisor, ignore_index

    def _augmented(self, arrays: dict[str, np.ndarray], index: int) -> tuple[np.ndarray, ...]:
        rng = rng_for(self.seed, self.epoch, index)
        image = np.moveaxis(arrays["image"], 0, -1)  # channels last for the augmentations
        if image.ndim == 4:
            image, target, weight = augment_volume(image, arrays["target"], rng, self.config)
        else:
            image, target, weight = augment(np.ascontiguousarray(image), arrays["target"], rng, self.config,
                                            weight=arrays.get("weight"))
        return np.ascontiguousarray(np.moveaxis(image, -1, 0)), target, weight

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        items = [self._augmented(unpack(payload), int(index)) for index, payload in zip(batch["index"], batch["payload"])]
        spatial = padded_shape(tuple(max(sizes) for sizes in zip(*(t.shape for _, t, _ in items))), self.divisor)
        images, targets, weights = [], [], []
        for image, target, weight in items:
            pad = [(0, want - have) for have, want in zip(target.shape, spatial)]
            images.append(pad_to_shape(image, spatial))
            targets.append(np.pad(target, pad, constant_values=self.ignore_index))
            weights.append(np.pad(weight, pad) if weight is not None else None)
        out = {"image": torch.from_numpy(np.stack(images).astype(np.float32)),
               "target": torch.from_numpy(np.stack(targets).astype(np.int64)),
               "index": torch.from_numpy(np.asarray(batch["index"], dtype=np.int64))}
        if all(w is not None for w in weights):
            out["weight"] = torch.from_numpy(np.stack(weights).astype(np.float32))
        return out


def _all_reduce(tensor: torch.Tensor) -> torch.Tensor:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(tensor)
    return tensor


def _restore(module: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return {"epoch": -1, "best": -math.inf, "history": []}
    with checkpoint.as_directory() as folder:
        load_weights(module, load_checkpoint(os.path.join(folder, MODEL)).state_dict)
        state = torch.load(os.path.join(folder, STATE), map_location="cpu", weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    return {"epoch": int(state["epoch"]), "best": float(state["best"]), "history": json.loads(state["history"])}


def _say(line: str) -> None:
    """One line to the worker's stdout, which Ray forwards to the driver's terminal.

    Not ``print``: Ray Train patches it to go to its logger *and*, where stdout is
    wrapped, to the stream too, so every line reached the terminal twice.
    """
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _validation_rows(cfg: WorkerConfig, rank: int, world: int) -> Any:
    """This rank's share of the validation pairs, every pair exactly once across ranks.

    Built here rather than split by Ray Train, whose equal split drops the
    remainder: validation must score every pair.
    """
    from raysegment.train.data import load_pairs
    from raysegment.train.scene_data import load_windows

    rows = list(cfg.val_rows[rank::world])
    if not rows:
        return None
    return _loaded(rows, load_pairs if cfg.windows is None else load_windows, cfg.load_kwargs)


def _epoch_windows(cfg: WorkerConfig, epoch: int, rank: int, world: int) -> Any:
    """``--window``: this rank's windows of ``epoch``, drawn from the seeded plan and read by range."""
    from raysegment.train.scene_data import load_windows

    return _loaded(cfg.windows.epoch_rows(int(cfg.seed), epoch, rank, world), load_windows, cfg.windows.load_kwargs)


def _loaded(rows: list[Any], load: Any, kwargs: Any) -> Any:
    """A Ray dataset of ``rows`` (pairs or windows) read by ``load`` in batches of four."""
    import ray.data

    return ray.data.from_items(rows).map_batches(load, batch_size=4, batch_format="numpy", fn_kwargs=dict(kwargs))


def merged_across_workers(acc: MetricAccumulator) -> MetricAccumulator:
    """Every rank's accumulator, combined by the metric's own ``merge``: exact for any task's metric.

    Outside a process group (one worker) the accumulator is returned as it is.
    """
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return acc
    parts: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(parts, acc)
    total = parts[0]
    for part in parts[1:]:
        total.merge(part)
    return total


class ValidationBatches:
    """This rank's validation batches: read from the dataset in the first epoch, then kept in
    memory while they fit in ``limit`` bytes, so later epochs do not read and decode them again.

    Validation is never augmented, so every epoch sees the same batches. A share larger than
    the limit is streamed from the dataset every epoch instead (memory stays bounded).
    """

    def __init__(self, shard: Any, collate: Collate, batch_size: int, limit: int = VALIDATION_CACHE_BYTES):
        self.shard, self.collate, self.batch_size, self.limit = shard, collate, batch_size, limit
        self.kept: list[dict[str, torch.Tensor]] | None = None

    def __iter__(self) -> Any:
        if self.kept is not None:
            yield from self.kept
            return
        if self.shard is None:
            self.kept = []
            return
        kept: list[dict[str, torch.Tensor]] | None = []
        size = 0
        for batch in self.shard.iter_torch_batches(batch_size=self.batch_size, collate_fn=self.collate):
            if kept is not None:
                size += sum(t.numel() * t.element_size() for t in batch.values())
                if size <= self.limit:
                    kept.append(batch)
                else:
                    kept = None  # over the limit: stream every epoch, keep nothing
            yield batch
        self.kept = kept


def _evaluate(model: torch.nn.Module, plugin: Any, batches: ValidationBatches, device: torch.device) -> MetricAccumulator:
    acc = task_spec(plugin.task).require("metric", "validation")(max(plugin.num_classes, 2), plugin.ignore_index)
    model.eval()
    with torch.no_grad():
        for batch in batches:
            labels = plugin.reduce(plugin.forward(model, batch["image"].to(device)))["labels"].cpu().numpy()
            acc.update(labels.astype(np.int64), batch["target"].numpy())
    return merged_across_workers(acc)


def training_loss(plugin: Any, loss: str | None = None, class_weights: Any = None) -> Any:
    """``(output, target, weight) -> loss``: ``plugin.loss`` unless ``--loss`` or class weights were given.

    ``plugin.loss`` defaults to its task's default loss; ``--loss`` terms (``criteria.losses``) replace
    it and are applied to every auxiliary output with the plugin's ``aux_loss_weights``.
    """
    if loss is None and class_weights is None:
        return lambda output, target, weight: plugin.loss(output, target)
    loss_fn = build_loss(loss or "ce", num_classes=plugin.num_classes, ignore_index=plugin.ignore_index,
                         class_weights=class_weights)
    return lambda output, target, weight: with_aux_losses(
        output, lambda logits: loss_fn(logits, target, weight), plugin.aux_loss_weights)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """One worker's epochs: train on its shard, validate exactly, report and checkpoint."""
    import ray.data
    import ray.train
    import ray.train.torch

    cfg = WorkerConfig.from_loop_config(config)
    ray.data.DataContext.get_current().enable_progress_bars = False  # rank 0 prints its own epoch progress
    spec, seed = cfg.spec, int(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))  # Ray pins CPU workers to one thread otherwise
    plugin = spec.plugin()
    torch.manual_seed(seed)
    module = plugin.build()
    if cfg.init_checkpoint:
        load_weights(module, load_checkpoint(cfg.init_checkpoint, cfg.storage_options).state_dict)
    optimizer = torch.optim.Adam(module.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    state = _restore(module, optimizer)
    model = ray.train.torch.prepare_model(module)
    device = ray.train.torch.get_device()
    compute_loss = training_loss(plugin, cfg.loss, cfg.class_weights)
    divisor = int(plugin.size_divisor)
    augment_config = AugmentConfig.parse(cfg.augment)
    context = ray.train.get_context()
    rank = context.get_world_rank()
    world = context.get_world_size()
    train_shard = ray.train.get_dataset_shard("train") if cfg.windows is None else None
    validation = ValidationBatches(_validation_rows(cfg, rank, world),
                                   Collate(AugmentConfig.none(), seed, 0, divisor, plugin.ignore_index), cfg.batch_size)
    history, best = state["history"], state["best"]
    task = task_spec(plugin.task)
    report = task.require("validation_report", "validation")
    for epoch in range(state["epoch"] + 1, int(cfg.epochs)):
        model.train()
        start = time.perf_counter()
        sums = torch.zeros(3, dtype=torch.float64)  # loss * n, n, batches
        seen = torch.zeros(int(cfg.train_index_bound), dtype=torch.int32)  # which training items came by
        collate = Collate(augment_config, seed, epoch, divisor, plugin.ignore_index)
        source = train_shard if cfg.windows is None else _epoch_windows(cfg, epoch, rank, world)
        steps = math.ceil(int(cfg.train_index_bound) / world / int(cfg.batch_size))  # about (pairs: filled)
        marks = {max(1, steps * q // 4) for q in (1, 2, 3)} if steps >= 8 else set()
        for step, batch in enumerate(source.iter_torch_batches(batch_size=cfg.batch_size, collate_fn=collate), 1):
            output = plugin.forward(model, batch["image"].to(device, non_blocking=True))
            weight, target = batch.get("weight"), batch["target"].to(device)
            weight = None if weight is None else weight.to(device)
            loss = compute_loss(output, target, weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            n = batch["image"].shape[0]
            sums += torch.tensor([float(loss.detach()) * n, n, 1], dtype=torch.float64)
            seen[batch["index"]] = 1
            if rank == 0 and step in marks:
                _say(progress_line(f"epoch {epoch + 1}/{cfg.epochs}", step, steps, time.perf_counter() - start, "step"))
        _all_reduce(sums)
        _all_reduce(seen)
        seconds = time.perf_counter() - start
        val = _evaluate(model, plugin, validation, device).metrics(list(cfg.label_names))
        metrics = {
            "epoch": epoch,
            "train_loss": float(sums[0] / max(sums[1], 1)),
            "train_images": int(sums[1]),
            "train_items": int((seen > 0).sum()),  # distinct training items this epoch, over all workers
            "images_per_s": float(sums[1]) / seconds if seconds > 0 else 0.0,
            "seconds": seconds,
            **report(val),  # the task's validation fields (semantic: val_miou, val_iou per class, ...)
        }
        history.append(metrics)
        best = max(best, flat_report(metrics).get(cfg.score, -1.0))
        if rank == 0:
            shown = "  ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k.startswith("val_") and isinstance(v, float))
            _say(f"epoch {epoch + 1}/{cfg.epochs}  loss {metrics['train_loss']:.4f}  {shown}  "
                 f"{metrics['images_per_s']:.2f} img/s")
            with tempfile.TemporaryDirectory() as folder:
                unwrapped = model.module if hasattr(model, "module") else model
                save_checkpoint(os.path.join(folder, MODEL), state_dict=unwrapped.state_dict(), plugin=spec.name,
                                plugin_version=spec.version, params=dict(spec.params),
                                class_names=list(spec.class_names), metrics=metrics,
                                normalization=spec.normalization)
                torch.save({"optimizer": optimizer.state_dict(), "epoch": epoch, "best": best,
                            "history": json.dumps(history)}, os.path.join(folder, STATE))
                if cfg.run is not None:
                    cfg.run.hold()  # a run that lost its folder hands Ray Train no checkpoint to write there
                ray.train.report(flat_report(metrics), checkpoint=ray.train.Checkpoint.from_directory(folder))
            if cfg.run is not None:
                cfg.run.write_history(history)  # progress survives a crash
        else:
            ray.train.report(flat_report(metrics), checkpoint=None)


def flat_report(metrics: dict[str, Any]) -> dict[str, Any]:
    """Ray Train's report: nested fields become ``key/sub`` (a per-class None -1.0, "not defined")."""
    out = {k: v for k, v in metrics.items() if not isinstance(v, dict)}
    for key, values in metrics.items():
        if isinstance(values, dict):
            out.update({f"{key}/{k}": (-1.0 if v is None else v) for k, v in values.items()})
    return out
