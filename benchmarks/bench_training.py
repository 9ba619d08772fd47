#!/usr/bin/env python
"""Benchmark: training throughput (images/s) of run_training on 1 and 2 Ray Train workers vs a plain loop.

Same model (``unet``, batch norm), loss (cross-entropy), crop size, batch size and ISBI 2012 EM
training slices (0-24 train, 25-29 validation, manifests from ``scripts/em_manifests.py``), trained
``--epochs`` epochs each way: ``ray-train`` is ``raysegment.train.training.run_training`` with N workers;
``plain`` is one process with a hand-written PyTorch loop over images decoded once and held in
memory. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import ray
import ray.data
import torch
import torch.nn.functional as F
from sampling import Sampler, wait_for_idle_ray

from raysegment.io.payload import unpack
from raysegment.plugin.padding import pad_to_multiple
from raysegment.plugin.registry import get_registry
from raysegment.plugin.spec import ModelSpec, resolve_model
from raysegment.train.augment import AugmentConfig, augment, rng_for
from raysegment.train.data import list_pairs, load_pairs, parse_value_map
from raysegment.train.training import TrainConfig, run_training

ROOT = Path(__file__).resolve().parents[1]
MODEL = "unet"
MASK_VALUES = "0:1,255:0"
LOSS = "ce"
SEED = 0
LR = 1e-3
MIB = 1024.0 * 1024.0


@dataclasses.dataclass
class Result:
    mode: str
    workers: int  # 0 for the plain loop
    threads: int  # torch intra-op threads per training process
    epochs: list[dict[str, Any]]  # per epoch: images, seconds, images_per_s
    wall: float  # whole call: setup, every epoch, (Ray) validation, checkpoints
    workers_mib: float = 0.0  # peak summed RSS of all "ray::" processes
    worker_max_mib: float = 0.0  # peak RSS of the largest one
    ray_cores: float = 0.0  # CPU-seconds of "ray::" processes / wall: average cores they kept busy
    load: tuple[float, float] = (0.0, 0.0)  # 1-minute load average before and after

    @property
    def steady(self) -> list[float]:
        """Images/s of the epochs after the first (the first pays for warm-up)."""
        rates = [e["images_per_s"] for e in self.epochs]
        return rates[1:] if len(rates) > 1 else rates

    @property
    def rate(self) -> float:
        return statistics.median(self.steady)

    @property
    def images(self) -> int:
        return int(self.epochs[-1]["images"])


class RaySampler(Sampler):
    """Peak RSS and CPU time of the "ray::" processes (Ray's task and actor workers)."""

    def __init__(self, interval: float = 0.5) -> None:
        super().__init__(interval)
        self.total = self.largest = 0
        self.cpu_first: dict[int, float] = {}
        self.cpu_last: dict[int, float] = {}

    def _sample(self) -> None:
        total = 0
        for proc in self.ray_workers():
            try:
                with proc.oneshot():
                    rss, times = proc.memory_info().rss, proc.cpu_times()
            except (self.psutil.NoSuchProcess, self.psutil.AccessDenied, self.psutil.ZombieProcess):
                continue
            total += rss
            self.largest = max(self.largest, rss)
            cpu = times.user + times.system
            self.cpu_first.setdefault(proc.pid, cpu)  # idle pooled workers count from when first seen
            self.cpu_last[proc.pid] = cpu
        self.total = max(self.total, total)

    def cpu_seconds(self) -> float:
        return sum(self.cpu_last[p] - self.cpu_first[p] for p in self.cpu_last)


def params(args: argparse.Namespace) -> dict[str, str]:
    return {"base_channels": str(args.base_channels), "batch_norm": "true", "class_names": "cell,membrane"}


def write_manifests(out: str, data: str | None) -> tuple[str, str]:
    """train.csv / val.csv from scripts/em_manifests.py itself, so the split is the README's."""
    cmd = [sys.executable, str(ROOT / "scripts" / "em_manifests.py"), "--out", out]
    if data:
        cmd += ["--data", data]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit((done.stderr or done.stdout).strip() or f"{cmd} failed")
    return os.path.join(out, "train.csv"), os.path.join(out, "val.csv")


def run_ray(workers: int, train_csv: str, val_csv: str, args: argparse.Namespace, storage: str) -> Result:
    """One ``run_training`` call; per-epoch figures are those it records in its history."""
    wait_for_idle_ray()
    cfg = TrainConfig(images=train_csv, val_images=val_csv, model=MODEL, params=params(args), epochs=args.epochs,
                      batch_size=args.batch_size, workers=workers, lr=LR, loss=LOSS, augment=args.augment,
                      mask_values=MASK_VALUES, storage=storage, name=f"workers-{workers}", seed=SEED)
    load0 = os.getloadavg()[0]
    with RaySampler() as sampler:
        t0 = time.perf_counter()
        summary = run_training(cfg)
        wall = time.perf_counter() - t0
    epochs = [{"images": h["train_images"], "seconds": h["seconds"], "images_per_s": h["images_per_s"]}
              for h in summary.history]
    threads = 1  # Ray sets OMP_NUM_THREADS = max(1, floor(worker CPUs)); workers here get <= 1 CPU
    return Result("ray-train", workers, threads, epochs, wall, sampler.total / MIB, sampler.largest / MIB,
                  sampler.cpu_seconds() / wall, (load0, os.getloadavg()[0]))


def decode_pairs(train_csv: str, spec: ModelSpec) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """(index, image (H, W, C) float32, target (H, W) int64) for every training pair, decoded once.

    Uses the pipeline's own ``load_pairs`` (decode, mask value map, ``encode_target``, ``preprocess``)
    in this process, so both modes train on identical arrays.
    """
    pairs, _ = list_pairs(train_csv)
    batch = {"index": np.arange(len(pairs)), "image_uri": np.array([p.image for p in pairs], dtype=object),
             "mask_uri": np.array([p.mask for p in pairs], dtype=object)}
    out = load_pairs(batch, spec=spec, value_map=parse_value_map(MASK_VALUES))
    items = []
    for index, status, error, payload in zip(out["index"], out["status"], out["error"], out["payload"]):
        if status != "ok":
            raise SystemExit(f"pair {index} failed to load: {error}")
        arrays = unpack(payload)
        items.append((int(index), np.ascontiguousarray(arrays["image"].transpose(1, 2, 0)), arrays["target"]))
    return items


def run_plain(train_csv: str, args: argparse.Namespace, threads: int) -> Result:
    """A plain single-process PyTorch loop: same model, crops, batch size, optimizer and loss.

    Each epoch crops every in-memory image once (same ``augment`` and per-item seeds as the
    workers), in the same order, ``--batch-size`` at a time; forward, cross-entropy, backward, Adam.
    """
    wait_for_idle_ray()
    torch.set_num_threads(threads)
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    spec = resolve_model(MODEL, params(args))
    plugin = get_registry().create(MODEL, spec.params)
    torch.manual_seed(SEED)
    module = plugin.build().train()
    optimizer = torch.optim.Adam(module.parameters(), lr=LR)
    config = AugmentConfig.parse(args.augment)
    divisor = int(getattr(plugin, "size_divisor", 1) or 1)
    items = decode_pairs(train_csv, spec)
    epochs = []
    for epoch in range(args.epochs):
        start, n = time.perf_counter(), 0
        for b in range(0, len(items), args.batch_size):
            images, targets = [], []
            for index, image, target in items[b : b + args.batch_size]:
                image, target, _ = augment(image, target, rng_for(SEED, epoch, index), config)
                images.append(pad_to_multiple(np.ascontiguousarray(image.transpose(2, 0, 1)), divisor))
                pad = [(0, images[-1].shape[-2] - target.shape[0]), (0, images[-1].shape[-1] - target.shape[1])]
                targets.append(np.pad(target, pad, constant_values=plugin.ignore_index))
            x = torch.from_numpy(np.stack(images).astype(np.float32))
            y = torch.from_numpy(np.stack(targets).astype(np.int64))
            loss = F.cross_entropy(module(x), y, ignore_index=plugin.ignore_index)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            n += x.shape[0]
        seconds = time.perf_counter() - start
        epochs.append({"images": n, "seconds": seconds, "images_per_s": n / seconds})
        print(f"  plain epoch {epoch + 1}/{args.epochs}: loss {loss.item():.4f}  {n / seconds:.2f} img/s", flush=True)
    return Result("plain", 0, threads, epochs, time.perf_counter() - t0, load=(load0, os.getloadavg()[0]))


def report_line(r: Result) -> None:
    rates = ", ".join(f"{e['images_per_s']:.2f}" for e in r.epochs)
    who = f"plain loop, {r.threads} thread(s)" if r.mode == "plain" else f"ray-train, {r.workers} worker(s)"
    print(f"  {who}: per-epoch images/s [{rates}]; wall {r.wall:.1f}s; "
          f"load average (1 min) {r.load[0]:.2f} -> {r.load[1]:.2f}", flush=True)


def print_table(results: list[Result]) -> None:
    plain = next((r for r in results if r.mode == "plain"), None)
    print(f"\n{'mode':<10}{'workers':>8}{'threads':>8}{'img/epoch':>10}{'images/s':>10}{'vs plain':>10}{'vs 1 worker':>12}"
          f"{'train s':>9}{'wall s':>8}{'ray:: cores':>12}{'worker RSS MiB sum/max':>24}")
    one = next((r for r in results if r.mode == "ray-train" and r.workers == 1), None)
    for r in results:
        vs_plain = f"{r.rate / plain.rate:.2f}x" if plain else "-"
        vs_one = f"{r.rate / one.rate:.2f}x" if one and r.mode == "ray-train" else "-"
        workers = "-" if r.mode == "plain" else str(r.workers)
        cores = f"{r.ray_cores:.2f}" if r.mode == "ray-train" else "-"
        mem = f"{r.workers_mib:.0f} / {r.worker_max_mib:.0f}" if r.mode == "ray-train" else "-"
        train_s = sum(e["seconds"] for e in r.epochs)
        print(f"{r.mode:<10}{workers:>8}{r.threads:>8}{r.images:>10}{r.rate:>10.2f}{vs_plain:>10}{vs_one:>12}"
              f"{train_s:>9.1f}{r.wall:>8.1f}{cores:>12}{mem:>24}")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--epochs", type=int, default=3, help="epochs per run; the first counts as warm-up (default 3)")
    p.add_argument("--workers", default="1,2", help="comma-separated Ray Train worker counts (default 1,2)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--base-channels", type=int, default=16, help="U-Net width of the first level (default 16)")
    p.add_argument("--augment", default="crop=256", help="augment spec for both modes (default crop=256)")
    p.add_argument("--data", default=None, help="ISBI EM train folder (default: em_manifests.py's, ../shared/data/...)")
    p.add_argument("--plain-threads", default=None,
                   help="comma-separated torch thread counts for plain-loop rows; the first is the 'vs plain' "
                        "reference (default: all CPUs, then 1 = what each Ray Train CPU worker gets; '' = no plain loop)")
    p.add_argument("--ray-logs", action="store_true", help="show Ray workers' own output (epoch lines, Ray Train chatter)")
    p.add_argument("--quick", action="store_true", help="smoke run: 2 epochs, base_channels 8")
    args = p.parse_args(argv)
    if args.quick:
        args.epochs, args.base_channels = 2, 8
    cpus = os.cpu_count() or 1
    if args.plain_threads is None:
        args.plain_threads = f"{cpus},1" if cpus > 1 else "1"
    try:
        args.workers = [int(w) for w in args.workers.split(",") if w.strip()]
        args.plain_threads = [int(t) for t in args.plain_threads.split(",") if t.strip()]
    except ValueError:
        p.error("--workers and --plain-threads expect comma-separated integers")
    if args.epochs < 1 or args.batch_size < 1 or args.base_channels < 1 or min(args.workers + args.plain_threads, default=0) < 1:
        p.error("--epochs, --batch-size, --base-channels, --workers and --plain-threads must be positive")
    if args.epochs < 2:
        print("note: with one epoch there is no steady epoch; images/s includes warm-up", flush=True)
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    cpus = os.cpu_count() or 1
    torch.set_num_threads(cpus)
    logging.getLogger("raysegment").setLevel(logging.ERROR)  # the "random weights" warning, every run
    warnings.filterwarnings("ignore", message=".*exclude_resources.*")  # Ray Data's own deprecation notice, per run
    load_start = os.getloadavg()
    ray.init(num_cpus=cpus, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=args.ray_logs)
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    print(f"machine: {platform.machine()} {platform.system()}, {cpus} CPU(s); torch {torch.__version__} "
          f"(driver {torch.get_num_threads()} threads); ray {ray.__version__}; python {platform.python_version()}")
    print(f"model: {MODEL} base_channels={args.base_channels} batch_norm; loss {LOSS}; augment {args.augment}; "
          f"batch size {args.batch_size}; {args.epochs} epoch(s); Adam lr {LR}")
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in load_start)}", flush=True)

    results: list[Result] = []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-train-") as scratch:
        train_csv, val_csv = write_manifests(os.path.join(scratch, "em"), args.data)
        print(f"data: {train_csv} ({len(list_pairs(train_csv)[0])} pairs), {val_csv} ({len(list_pairs(val_csv)[0])} pairs)")
        for threads in args.plain_threads:
            print(f"plain loop, {threads} thread(s)", flush=True)
            results.append(run_plain(train_csv, args, threads))
            report_line(results[-1])
        torch.set_num_threads(cpus)
        for workers in args.workers:
            print(f"ray-train, {workers} worker(s)", flush=True)
            try:
                results.append(run_ray(workers, train_csv, val_csv, args, os.path.join(scratch, "runs")))
            except ValueError as exc:  # e.g. more CPU workers than _worker_resources allows
                print(f"  skipped: {exc}", flush=True)
                continue
            report_line(results[-1])
    if not results:
        raise SystemExit("nothing ran")
    print_table(results)
    steady = f"median of epochs 2..{args.epochs} (epoch 1 is warm-up)" if args.epochs > 1 else "epoch 1 (warm-up included)"
    print(f"\nimages/s: {steady}, each = images of the epoch / its seconds; ray-train uses the epoch's own timer "
          "(rank 0, training loop only). vs plain: over the first plain row; vs 1 worker: over ray-train with 1 worker.")
    print("train s: sum of epoch seconds; wall s: the whole call (ray-train: data check pass, trainer start, "
          "validation, checkpoints). ray:: cores: CPU-seconds of ray:: processes / wall s.")
    print("threads: torch threads per training process; Ray sets OMP_NUM_THREADS = max(1, floor(CPUs)) in a worker, "
          "and run_training gives each CPU worker at most 1 CPU.")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux
    print(f"driver peak RSS over the whole script (getrusage): {peak:.0f} MiB")
    print(f"total {time.perf_counter() - t0:.0f}s; load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    ray.shutdown()


if __name__ == "__main__":
    main()
