#!/usr/bin/env python
"""Benchmark: the raysegment pipeline vs a plain PyTorch loop vs the bare model forward.

Same model, batch size and images three ways (``pipeline``: ``run_inference`` on Ray Data;
``plain``: one process doing read/decode/forward/reduce/postprocess/RLE; ``bare``: the
module's forward alone on pre-decoded batches) at two dataset sizes. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import functools
import logging
import os
import platform
import resource
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import ray
import ray.data
import torch
from sampling import Sampler, wait_for_idle_ray
from torch import nn

from raysegment.infer.pipeline import InferenceConfig, run_inference
from raysegment.io.decoders import decode, supported_extensions
from raysegment.masks.rle import segments_from_prediction
from raysegment.plugin.contract import Modality, SegmentationModel
from raysegment.plugin.registry import get_registry
from raysegment.uri import read_bytes

MODEL = "unet"
MODES = ("pipeline", "plain", "bare")
MIB = 1024.0 * 1024.0
DEFAULT_IMAGES = Path(__file__).resolve().parents[2] / "shared/data/isbi2012_em_membrane/test/image"


@dataclasses.dataclass
class Result:
    """One timed run of one mode; worker figures are 0 outside the pipeline."""

    mode: str
    items: int
    seconds: float
    driver_mib: float
    workers_mib: float  # peak of the summed RSS of all "ray::" processes
    worker_max_mib: float  # peak RSS of the largest single "ray::" process

    @property
    def rate(self) -> float:
        return self.items / self.seconds


class PeakRss(Sampler):
    """Peak RSS of the driver and (optionally) of Ray worker processes."""

    def __init__(self, workers: bool, interval: float = 0.25) -> None:
        super().__init__(interval)
        self.with_workers = workers
        self.driver = self.workers = self.worker_max = 0

    def _sample(self) -> None:
        self.driver = max(self.driver, self.me.memory_info().rss)
        if not self.with_workers:
            return
        total = 0
        for proc in self.ray_workers():
            try:
                rss = proc.memory_info().rss
            except (self.psutil.NoSuchProcess, self.psutil.AccessDenied, self.psutil.ZombieProcess):
                continue
            total += rss
            self.worker_max = max(self.worker_max, rss)
        self.workers = max(self.workers, total)


def measure(mode: str, items: int, fn: Callable[[], float | None]) -> Result:
    """Time ``fn`` (or take the seconds it returns) while sampling memory."""
    wait_for_idle_ray()
    with PeakRss(workers=mode == "pipeline") as peak:
        t0 = time.perf_counter()
        reported = fn()
        seconds = reported if reported is not None else time.perf_counter() - t0
    result = Result(mode, items, seconds, peak.driver / MIB, peak.workers / MIB, peak.worker_max / MIB)
    print(f"  {mode:<9}{items:>5} items {seconds:8.2f}s {result.rate:7.2f} items/s", flush=True)
    return result


def write_manifest(images: Sequence[str], n: int, folder: str) -> str:
    """A CSV manifest whose ``uri`` column repeats ``images`` up to ``n`` rows."""
    path = os.path.join(folder, f"manifest-{n}.csv")
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([["uri"]] + [[images[i % len(images)]] for i in range(n)])
    return path


def run_pipeline(manifest: str, n: int, args: argparse.Namespace, scratch: str) -> float:
    """One ``run_inference`` into a fresh output root; returns its pipeline seconds."""
    out = tempfile.mkdtemp(prefix="out-", dir=scratch)
    params = {"base_channels": str(args.base_channels)}
    config = InferenceConfig(manifest, out, model=MODEL, params=params, batch_size=args.batch_size,
                             shard_size=args.shard_size, threads=args.threads)
    summary = run_inference(config)
    shutil.rmtree(out, ignore_errors=True)
    if summary.rows_written != n or summary.failed:
        raise RuntimeError(f"pipeline wrote {summary.rows_written}/{n} rows, {summary.failed} failed")
    return summary.pipeline_seconds


def _pad(image: np.ndarray, divisor: int) -> np.ndarray:
    """Pad (C, H, W) at the bottom/right to a multiple of ``divisor``, as the predictor does."""
    extra = [(0, (-s) % divisor) for s in image.shape[-2:]]
    if not any(p for _, p in extra):
        return image
    return np.pad(image, [(0, 0)] * (image.ndim - 2) + extra, mode="reflect")


def load_batch(uris: Sequence[str], plugin: SegmentationModel) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    """Read, decode, preprocess and stack one batch; returns the tensor and per-item meta."""
    images, metas = [], []
    for uri in uris:
        sample = decode(uri, read_bytes(uri), plugin.modality)
        images.append(_pad(plugin.preprocess(sample), int(plugin.size_divisor or 1)))
        metas.append(sample.meta)
    return torch.from_numpy(np.stack(images)), metas


def plain_loop(uris: Sequence[str], plugin: SegmentationModel, module: nn.Module, batch_size: int) -> None:
    """The whole job in one process: decode, forward + reduce, postprocess, RLE encode."""
    names = plugin.class_names()
    for start in range(0, len(uris), batch_size):
        x, metas = load_batch(uris[start : start + batch_size], plugin)
        with torch.inference_mode():
            reduced = plugin.reduce(plugin.forward(module, x))
        arrays = {k: v.cpu().numpy() for k, v in reduced.items()}
        for i, meta in enumerate(metas):
            segments_from_prediction(plugin.postprocess({k: v[i] for k, v in arrays.items()}, meta), names)


def predecode(uris: Sequence[str], plugin: SegmentationModel, batch_size: int) -> list[torch.Tensor]:
    """Batches for ``uris``; identical batches share one tensor, so memory does not grow with n."""
    cache: dict[tuple[str, ...], torch.Tensor] = {}
    keys = [tuple(uris[s : s + batch_size]) for s in range(0, len(uris), batch_size)]
    return [cache[k] if k in cache else cache.setdefault(k, load_batch(k, plugin)[0]) for k in keys]


def bare_forward(batches: Sequence[torch.Tensor], module: nn.Module) -> None:
    """The module's forward alone: no I/O, decode, reduce or encode."""
    with torch.inference_mode():
        for x in batches:
            module(x)


def print_table(results: list[Result]) -> None:
    """Ratios are this mode's items/s over the reference mode's items/s at the same size."""
    by = {(r.mode, r.items): r for r in results}
    print(f"\n{'mode':<9}{'items':>6}{'seconds':>9}{'items/s':>9}{'vs plain':>10}{'vs bare':>9}"
          f"{'driver RSS MiB':>16}{'worker RSS MiB sum/max':>24}")
    for r in results:
        plain, bare = by[("plain", r.items)], by[("bare", r.items)]
        workers = f"{r.workers_mib:.0f} / {r.worker_max_mib:.0f}" if r.workers_mib else "-"
        print(f"{r.mode:<9}{r.items:>6}{r.seconds:>9.2f}{r.rate:>9.2f}{r.rate / plain.rate:>9.2f}x"
              f"{r.rate / bare.rate:>8.2f}x{r.driver_mib:>16.0f}{workers:>24}")


def print_marginal(results: list[Result], sizes: Sequence[int]) -> None:
    """Steady-state rate (n2 - n1) / (t2 - t1): costs paid once per run (actor start-up) cancel out."""
    if len(sizes) < 2:
        return
    lo, hi = sizes[0], sizes[-1]
    by = {(r.mode, r.items): r for r in results}
    dts = {mode: by[(mode, hi)].seconds - by[(mode, lo)].seconds for mode in MODES}
    rates = {mode: (hi - lo) / dt if dt > 0 else float("nan") for mode, dt in dts.items()}
    print(f"\nsteady state: marginal rate between {lo} and {hi} items")
    print(f"{'mode':<9}{'items/s':>9}{'vs plain':>10}{'vs bare':>9}")
    for mode, rate in rates.items():
        print(f"{mode:<9}{rate:>9.2f}{rate / rates['plain']:>9.2f}x{rate / rates['bare']:>8.2f}x")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--sizes", default="48,144", help="comma-separated dataset sizes in items (default 48,144)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--base-channels", type=int, default=16, help="U-Net width of the first level (default 16)")
    p.add_argument("--shard-size", type=int, default=16, help="pipeline items per shard/read block (default 16)")
    p.add_argument("--threads", type=int, default=None, help="torch threads of the pipeline's CPU actor (default: CPUs / actors)")
    p.add_argument("--image-dir", default=str(DEFAULT_IMAGES), help="folder of same-sized images")
    p.add_argument("--quick", action="store_true", help="smoke run: sizes 2,4, batch and shard size 2")
    args = p.parse_args(argv)
    if args.quick:
        args.sizes, args.batch_size, args.shard_size = "2,4", 2, 2
    args.sizes = sorted({int(s) for s in args.sizes.split(",") if s.strip()})
    if not args.sizes or min(args.sizes) < 1 or args.batch_size < 1 or args.shard_size < 1:
        p.error("--sizes, --batch-size and --shard-size must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    exts = tuple(supported_extensions(Modality.IMAGE))
    images = sorted(str(p) for p in Path(args.image_dir).glob("*") if p.suffix.lower() in exts)
    if not images:
        raise SystemExit(f"no images under {args.image_dir}")
    cpus = os.cpu_count() or 1
    torch.set_num_threads(cpus)
    logging.getLogger("raysegment").setLevel(logging.ERROR)  # the "random weights" warning, every run
    ray.init(num_cpus=cpus, include_dashboard=False, logging_level=logging.WARNING)
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    if hasattr(ctx, "issue_detectors_config"):  # "used up to N MiB per worker" advice after each run
        ctx.issue_detectors_config.detectors = []
    plugin = get_registry().create(MODEL, {"base_channels": str(args.base_channels)})
    module = plugin.build().eval()
    print(f"machine: {platform.machine()} {platform.system()}, {cpus} CPU(s); torch {torch.__version__} "
          f"({torch.get_num_threads()} threads); ray {ray.__version__}; python {platform.python_version()}")
    print(f"model: {MODEL} base_channels={args.base_channels}; batch size {args.batch_size}; "
          f"shard size {args.shard_size}; {len(images)} distinct images from {args.image_dir}")

    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="bench-raysegment-") as scratch:
        t0, warm = time.perf_counter(), args.batch_size * 2
        run_pipeline(write_manifest(images, warm, scratch), warm, args, scratch)  # workers, imports
        plain_loop(images[: args.batch_size], plugin, module, args.batch_size)  # torch kernels, pools
        print(f"warm-up: {time.perf_counter() - t0:.1f}s")
        for n in args.sizes:
            uris = [images[i % len(images)] for i in range(n)]
            pipeline = functools.partial(run_pipeline, write_manifest(images, n, scratch), n, args, scratch)
            results.append(measure("pipeline", n, pipeline))
            results.append(measure("plain", n, functools.partial(plain_loop, uris, plugin, module, args.batch_size)))
            batches = predecode(uris, plugin, args.batch_size)
            results.append(measure("bare", n, functools.partial(bare_forward, batches, module)))
            del batches
    print_table(results)
    print_marginal(results, args.sizes)
    print("\npipeline seconds: RunSummary.pipeline_seconds (Ray Data execution incl. actor start-up). "
          "worker RSS: all ray:: processes, idle workers included.")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux
    print(f"driver peak RSS over the whole script (getrusage): {peak:.0f} MiB")
    ray.shutdown()


if __name__ == "__main__":
    main()
