#!/usr/bin/env python
"""Benchmark: tiled sliding-window inference: peak memory of every process, and tiled vs untiled throughput.

* ``memory``: one COG scene per size (default 4096² and 16384²) run tiled, each in a fresh
  process with its own local Ray; peak RSS (``VmHWM``), private and object-store memory of
  the driver, the predictor actor, the merger actor and the task workers.
* ``merger``: the one ``SceneMerger``'s own rate on window logits made beforehand (no Ray).
* ``throughput``: the same pixels as 1024² PNGs run untiled, as one scene run tiled (tile
  1024 and 512, overlap 64), and as a bare PyTorch loop over 512² batches.

The U-Net's random weights are pinned by ``--seed`` (a checkpoint every run loads), since the
masks, and so the RLE the merger builds, depend on them. Results go to
``benchmarks/results/tiled_cpu.json``. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results" / "tiled_cpu.json"
MODEL = "unet"
MIB = 1024.0  # /proc and getrusage give KiB on Linux
ROLES = ("driver", "predictor", "merger", "tasks", "other")


# -- peak memory of the local Ray cluster, from /proc -------------------------------------

def _proc_text(pid: int, name: str) -> str:
    try:
        with open(f"/proc/{pid}/{name}", "rb") as f:
            return f.read().decode(errors="replace")
    except OSError:  # gone, or a zombie
        return ""


def _status_kib(pid: int, *keys: str) -> dict[str, int]:
    out = {}
    for line in _proc_text(pid, "status").splitlines():
        key, _, value = line.partition(":")
        if key in keys:
            out[key] = int(value.split()[0])
    return out


def _descendants(root: int) -> list[int]:
    """Every process below ``root`` (raylet, GCS and, under the raylet, the workers)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _proc_text(int(entry), "stat")
            if stat:
                ppid = int(stat.rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        kids = children.get(todo.pop(), [])
        out += kids
        todo += kids
    return out


def role_of(titles: list[str]) -> str:
    """A worker's role from every process title it showed (a pooled worker may run several tasks)."""
    text = " ".join(titles)
    if "Predictor" in text:
        return "predictor"
    if "SceneMerger" in text:
        return "merger"
    if re.search(r"(Agent|Actor|Tracker|Coordinator)\b", text):
        return "other"  # Ray's agents and Ray Data's helper actors (stats, autoscaling, locations)
    return "tasks"  # ray::IDLE, ray::Read..., ray::MapBatches(...), ray::Write


class ProcessPeaks:
    """Samples the memory of this process (the driver) and of every ``ray::`` process below it.

    Per process: ``VmHWM`` (the kernel's peak RSS, exact) and the sampled peaks of ``RssAnon``
    (private memory: Python objects, numpy and torch buffers) and ``RssShmem`` (pages of Ray's
    shared-memory object store the process touched; they count in its RSS but belong to the
    store, which is bounded by its own size). The tree is scanned every ``interval`` s; known
    processes are re-read four times as often, so an actor that exits after its last batch
    loses at most ``interval / 4`` s.
    """

    FIELDS = ("VmHWM", "VmRSS", "RssAnon", "RssShmem")

    def __init__(self, interval: float = 0.2) -> None:
        self.interval = interval
        self.procs: dict[int, dict[str, Any]] = {}
        self.sum_rss_kib = 0  # peak of the summed current RSS of all ray:: processes
        self._t0 = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _read(self, pid: int) -> None:
        title = "driver" if pid == os.getpid() else _proc_text(pid, "cmdline").split("\0", 1)[0].strip()
        if title != "driver" and not title.startswith("ray::"):
            return
        status = _status_kib(pid, *self.FIELDS)
        if not status:
            return
        rec = self.procs.setdefault(pid, {"titles": [], "since": [], "timeline": [], **{f: 0 for f in self.FIELDS}})
        now = round(time.monotonic() - self._t0, 1)
        if title not in rec["titles"]:  # with the time it was first seen: when a task began
            rec["titles"].append(title)
            rec["since"].append(now)
        rec["timeline"].append((now, status.get("RssAnon", 0)))
        for field in ("VmHWM", "RssAnon", "RssShmem"):
            rec[field] = max(rec[field], status.get(field, 0))
        rec["VmRSS"] = status.get("VmRSS", 0)

    def sample(self, scan: bool = True) -> None:
        pids = [os.getpid(), *_descendants(os.getpid())] if scan else list(self.procs)
        for pid in pids:
            self._read(pid)
        if scan:
            live = set(pids) - {os.getpid()}
            self.sum_rss_kib = max(self.sum_rss_kib, sum(r["VmRSS"] for p, r in self.procs.items() if p in live))

    def _loop(self) -> None:
        tick = 0
        while not self._stop.wait(self.interval / 4):
            tick += 1
            self.sample(scan=tick % 4 == 0)

    def __enter__(self) -> ProcessPeaks:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()  # the end of the run, before ray.shutdown

    def report(self) -> dict[str, Any]:
        """Per role the largest process: ``<role>_mib`` (VmHWM), ``<role>_anon_mib``, ``<role>_shmem_mib``."""
        me = self.procs.setdefault(os.getpid(), {"titles": ["driver"], "since": [0.0], "timeline": [],
                                                 **{f: 0 for f in self.FIELDS}})
        me["VmHWM"] = max(me["VmHWM"], resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
        by_role: dict[str, list[dict[str, Any]]] = {r: [] for r in ROLES}
        for pid, rec in sorted(self.procs.items()):
            by_role["driver" if pid == os.getpid() else role_of(rec["titles"])].append({"pid": pid, **rec})
        out: dict[str, Any] = {}
        for role, recs in by_role.items():
            for key, field in (("", "VmHWM"), ("_anon", "RssAnon"), ("_shmem", "RssShmem")):
                out[f"{role}{key}_mib"] = round(max(r[field] for r in recs) / MIB, 1) if recs else None
        out["task_workers"] = len(by_role["tasks"])
        out["ray_sum_rss_mib"] = round(self.sum_rss_kib / MIB, 1)
        out["processes"] = [{"pid": r["pid"], "role": role, "peak_mib": round(r["VmHWM"] / MIB, 1),
                             "anon_mib": round(r["RssAnon"] / MIB, 1), "shmem_mib": round(r["RssShmem"] / MIB, 1),
                             "titles": [[t, s] for t, s in zip(r["titles"], r["since"])],
                             **({"anon_timeline": _downsample(r["timeline"])} if role != "other" else {})}
                            for role, recs in by_role.items() for r in recs]
        return out


def _downsample(points: list[tuple[float, int]], bins: int = 60) -> list[list[float]]:
    """[[seconds, RssAnon MiB]]: at most ``bins`` points, each the largest value in its time bin."""
    if not points:
        return []
    end = points[-1][0] or 1.0
    best: dict[int, tuple[float, int]] = {}
    for t, v in points:
        b = min(bins - 1, int(t / end * bins))
        if b not in best or v > best[b][1]:
            best[b] = (t, v)
    return [[t, round(v / MIB)] for t, v in (best[b] for b in sorted(best))]


# -- the measurements, each in its own process with its own Ray ----------------------------

def make_checkpoint(folder: Path, params: dict[str, Any], seed: int) -> str:
    """The U-Net with ``torch.manual_seed(seed)``'s random weights, as a checkpoint every run loads."""
    import torch

    from raysegment.plugin.checkpoint import save_checkpoint
    from raysegment.plugin.registry import get_registry

    info = get_registry().get(MODEL)
    plugin = info.create(params)
    torch.manual_seed(seed)
    path = folder / f"{MODEL}-seed{seed}.pt"
    save_checkpoint(str(path), state_dict=plugin.build().state_dict(), plugin=MODEL, plugin_version=info.version,
                    params=plugin.params, class_names=list(plugin.class_names()))
    return str(path)


def _model(job: dict[str, Any]) -> tuple[Any, Any]:
    """(plugin, module) with the run's pinned weights, for the in-process loops."""
    from raysegment.plugin.checkpoint import load_checkpoint, load_weights
    from raysegment.plugin.spec import resolve_model

    plugin = resolve_model(MODEL, job["params"], job["checkpoint"], {}).plugin()
    module = plugin.build()
    load_weights(module, load_checkpoint(job["checkpoint"]).state_dict)
    return plugin, module.eval()


def _start_ray(cpus: int) -> None:
    import ray
    import ray.data

    ray.init(num_cpus=cpus, include_dashboard=False, logging_level=logging.WARNING)
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    if hasattr(ctx, "issue_detectors_config"):
        ctx.issue_detectors_config.detectors = []


def _run(job: dict[str, Any], input_uri: str, out: str, tile: int | None, batch: int) -> dict[str, Any]:
    """One ``run_inference`` and its times."""
    from raysegment.infer.pipeline import InferenceConfig, run_inference

    overlap = job["overlap"] if tile else None
    config = InferenceConfig(input_uri, out, model=MODEL, params=job["params"], checkpoint=job["checkpoint"],
                             batch_size=batch, tile=tile, overlap=overlap, overwrite=True)
    load = os.getloadavg()[0]
    summary = run_inference(config)
    return {"wall_s": round(summary.seconds, 2), "pipeline_s": round(summary.pipeline_seconds, 2),
            "load_1min": [round(load, 2), round(os.getloadavg()[0], 2)]}


def _output_stats(out: str) -> dict[str, Any]:
    """Rows, windows and RLE size of a finished run's output (read after its memory was taken)."""
    import pyarrow.compute as pc

    from raysegment.output.root import read_output

    table = read_output(out, columns=["status", "error", "meta", "segments"])
    bad = [e for st, e in zip(table.column("status").to_pylist(), table.column("error").to_pylist()) if st != "ok"]
    if bad:
        raise RuntimeError(f"{len(bad)} row(s) failed: {bad[0]}")
    metas = [json.loads(m or "{}").get("tiling", {}) for m in table.column("meta").to_pylist()]
    counts = pc.struct_field(pc.list_flatten(table.column("segments")), "counts")
    return {"rows": table.num_rows, "windows": sum(m.get("windows", 0) for m in metas),
            "windows_skipped": sum(m.get("windows_skipped", 0) for m in metas),
            "rle_chars": int(pc.sum(pc.utf8_length(counts)).as_py() or 0),
            "output_bytes": sum(p.stat().st_size for p in Path(out).rglob("*") if p.is_file())}


def _infer(job: dict[str, Any], input_uri: str, out: str, tile: int | None, batch: int) -> dict[str, Any]:
    return {**_run(job, input_uri, out, tile, batch), **_output_stats(out)}


def child_memory(job: dict[str, Any]) -> dict[str, Any]:
    """One scene, tiled, in this fresh process and Ray: the peaks are this size's alone."""
    import ray

    _start_ray(job["cpus"])
    out = os.path.join(job["scratch"], f"out-memory-{job['size']}")
    with ProcessPeaks() as peaks:
        run = _run(job, job["scene"], out, job["tile"], job["batch_size"])
    mem = peaks.report()  # before anything else runs in the driver
    ray.shutdown()
    run.update(_output_stats(out))
    shutil.rmtree(out, ignore_errors=True)
    mpx = job["size"] ** 2 / 1e6
    return {"size": job["size"], "scene_bytes": os.path.getsize(job["scene"]), "scene_mpx": round(mpx, 2),
            "tile": job["tile"], "overlap": job["overlap"], "batch_size": job["batch_size"], **run,
            "mpx_per_s": round(mpx / run["pipeline_s"], 3), **mem}


def _bare_loop(job: dict[str, Any], threads: int) -> dict[str, Any]:
    """The model's forward alone over the scene's pixels, 512² crops in batches, no Ray, no I/O."""
    import numpy as np
    import rasterio
    import torch

    from raysegment.plugin.contract import Sample

    torch.set_num_threads(threads)
    plugin, module = _model(job)
    with rasterio.open(job["scene"]) as src:
        pixels = np.moveaxis(src.read(), 0, -1)
    t, n = 512, job["bare_batch"]
    crops = [pixels[r:r + t, c:c + t] for r in range(0, pixels.shape[0], t) for c in range(0, pixels.shape[1], t)]
    images = [plugin.preprocess(Sample(c, meta={"height": t, "width": t})) for c in crops]
    batches = [torch.from_numpy(np.stack(images[i:i + n])) for i in range(0, len(images), n)]
    windows = len(images)
    del pixels, crops, images
    with torch.inference_mode():
        module(batches[0])  # warm-up: allocator and kernel selection
        load = os.getloadavg()[0]
        t0 = time.perf_counter()
        for x in batches:
            module(x)
        seconds = time.perf_counter() - t0
    return {"pipeline_s": round(seconds, 2), "wall_s": round(seconds, 2), "windows": windows,
            "load_1min": [round(load, 2), round(os.getloadavg()[0], 2)], "threads": threads}


def child_throughput(job: dict[str, Any]) -> dict[str, Any]:
    """Untiled folder, tiled scene (two tile sizes), bare loop: the same pixels, one Ray session."""
    import ray
    from sampling import wait_for_idle_ray

    from raysegment.runtime import cluster_resources, plan_actors

    _start_ray(job["cpus"])
    threads = plan_actors(None, None, cluster_resources()).threads or 1
    scratch, mpx = job["scratch"], job["scene_px"] / 1e6
    warm = os.path.join(scratch, "warm")
    os.makedirs(warm, exist_ok=True)
    for name in sorted(os.listdir(job["images"]))[:2]:
        shutil.copy(os.path.join(job["images"], name), warm)
    t0 = time.perf_counter()
    _infer(job, warm, os.path.join(scratch, "out-warm"), None, 2)  # worker processes, imports
    warm_s = time.perf_counter() - t0
    rows = []
    runs = [("untiled", job["images"], None, job["untiled_batch"])]
    runs += [(f"tiled {t}", job["scene"], t, max(1, job["pixels_per_batch"] // (t * t))) for t in job["tiles"]]
    for mode, uri, tile, batch in runs:
        wait_for_idle_ray()
        out = os.path.join(scratch, "out-" + mode.replace(" ", "-"))
        run = _infer(job, uri, out, tile, batch)
        shutil.rmtree(out, ignore_errors=True)
        side = tile or job["image_size"]
        rows.append({"mode": mode, "tile": tile, "overlap": job["overlap"] if tile else None, "batch_size": batch,
                     **run, "run_mpx": round((run["windows"] or run["rows"]) * side * side / 1e6, 2),
                     "mpx_per_s": round(mpx / run["pipeline_s"], 3)})
        print(f"  {mode:<10} {run['pipeline_s']:7.2f}s {mpx / run['pipeline_s']:6.3f} Mpx/s", flush=True)
    wait_for_idle_ray()
    bare = _bare_loop(job, threads)
    rows.append({"mode": "bare", "tile": 512, "overlap": 0, "batch_size": job["bare_batch"], **bare,
                 "run_mpx": round(bare["windows"] * 512 * 512 / 1e6, 2), "mpx_per_s": round(mpx / bare["pipeline_s"], 3)})
    print(f"  {'bare':<10} {bare['pipeline_s']:7.2f}s {mpx / bare['pipeline_s']:6.3f} Mpx/s", flush=True)
    ray.shutdown()
    for row in rows:
        row["vs_untiled"] = round(row["mpx_per_s"] / rows[0]["mpx_per_s"], 3)
        row["vs_bare"] = round(row["mpx_per_s"] / rows[-1]["mpx_per_s"], 3)
    return {"images": job["n_images"], "image_size": job["image_size"], "scene_size": job["scene_size"],
            "scene_mpx": round(mpx, 2), "predictor_threads": threads, "warm_up_s": round(warm_s, 1), "rows": rows}


def child_merger(job: dict[str, Any]) -> dict[str, Any]:
    """The one SceneMerger actor's own rate: its ``__call__`` on window logits made beforehand.

    Two kinds of logits: ``model`` (the random U-Net's on 8 windows spread over the scene, reused
    in turn: a noisy mask, many RLE runs) and ``smooth`` (derived from the pixels: few runs, like a
    trained model). No Ray: this is the work the single merger does per window, wherever it runs.
    """
    import numpy as np
    import torch

    from raysegment.infer.scene_merger import SceneMerger
    from raysegment.infer.tiled_stages import Tiling, plan_scene_windows, read_windows
    from raysegment.io.decoders import DecodeLimits
    from raysegment.io.payload import pack, unpack
    from raysegment.plugin.spec import resolve_model

    torch.set_num_threads(1)
    spec = resolve_model(MODEL, job["params"], job["checkpoint"], {})
    (plugin, module), limits, n = _model(job), DecodeLimits(), job["batch_size"]
    tiling = Tiling.resolve(plugin, job["tile"], job["overlap"])
    one = {"uri": np.array([job["scene"]], dtype=object), "index": np.array([0]), "shard": np.array([0])}
    rows = plan_scene_windows(one, spec=spec, tiling=tiling, limits=limits)
    batches = [read_windows({k: v[s:s + n] for k, v in rows.items()}, spec=spec, limits=limits)
               for s in range(0, len(rows["uri"]), n)]
    stride = max(1, int(sum((b["status"] == "ok").sum() for b in batches)) // 8)  # 8 windows spread over the scene
    model_logits: list[np.ndarray] = []
    results, k = {}, 0
    for kind in ("model", "smooth"):
        ready = []
        for batch in batches:
            payload = batch["payload"].copy()
            for i in np.flatnonzero(batch["status"] == "ok"):
                image = unpack(payload[i])["image"]
                if kind == "smooth":
                    gray = image.mean(0)
                    logits = np.stack([gray, np.full_like(gray, 0.45)])
                else:
                    if k % stride == 0 and len(model_logits) < 8:
                        with torch.inference_mode():
                            output = plugin.forward(module, torch.from_numpy(image[None]))
                        model_logits.append(plugin.logits(output)[0].float().numpy())
                    logits = model_logits[k % len(model_logits)]
                    k += 1
                payload[i] = pack({"logits": np.ascontiguousarray(logits, dtype=np.float32)})
            ready.append({**batch, "payload": payload})
        merger = SceneMerger(spec)
        t0 = time.perf_counter()
        tables = [merger(batch) for batch in ready]
        seconds = time.perf_counter() - t0
        out = [row for table in tables for row in table.to_pylist()]
        ran = int(sum((b["status"] == "ok").sum() for b in ready))
        results[kind] = {"seconds": round(seconds, 2), "windows": len(rows["uri"]), "windows_run": ran,
                         "windows_per_s": round(ran / seconds, 1), "scene_mpx_per_s": round(job["size"] ** 2 / 1e6 / seconds, 2),
                         "rle_chars": sum(len(seg["counts"] or "") for r in out for seg in r["segments"] or []),
                         "rows": len(out), "status": [r["status"] for r in out]}
        del ready, tables
    return {"size": job["size"], "tile": job["tile"], "overlap": job["overlap"], "batch_size": n, **results}


# -- inputs -----------------------------------------------------------------------------

def make_scene(folder: Path, size: int) -> tuple[Path, float]:
    """The ``size``² COG of ``tests/geo_fixtures.make_cog`` (Landsat upsampled, nodata 0); kept if there."""
    sys.path.insert(0, str(REPO / "tests"))
    from geo_fixtures import make_cog

    path, t0 = folder / f"scene-{size}.tif", time.perf_counter()
    if not path.exists():
        make_cog(path, size)
    return path, time.perf_counter() - t0


def make_same_pixels(folder: Path, grid: int, image: int) -> tuple[Path, Path]:
    """``grid``² PNGs of ``image``² and one tiled GeoTIFF of the same pixels side by side (no nodata,
    so every window runs): Landsat upsampled to ``grid * image`` pixels a side."""
    import numpy as np
    import rasterio
    from PIL import Image

    sys.path.insert(0, str(REPO / "tests"))
    from geo_fixtures import LANDSAT

    size = grid * image
    images, scene = folder / f"images-{grid}x{image}", folder / f"same-pixels-{size}.tif"
    if scene.exists() and images.is_dir() and len(os.listdir(images)) == grid * grid:
        return images, scene
    with rasterio.open(LANDSAT) as src:
        pixels, crs = np.moveaxis(src.read(), 0, -1), src.crs
    rows = (np.arange(size) * pixels.shape[0]) // size
    cols = (np.arange(size) * pixels.shape[1]) // size
    big = pixels[rows][:, cols]
    images.mkdir(parents=True, exist_ok=True)
    for r in range(grid):
        for c in range(grid):
            crop = big[r * image:(r + 1) * image, c * image:(c + 1) * image]
            Image.fromarray(crop).save(images / f"r{r}-c{c}.png", compress_level=1)
    profile = {"driver": "GTiff", "height": size, "width": size, "count": 3, "dtype": "uint8", "crs": crs,
               "transform": rasterio.transform.from_origin(500000.0, 4500000.0, 30.0, 30.0), "tiled": True,
               "blockxsize": 512, "blockysize": 512, "compress": "deflate", "zlevel": 1}
    with rasterio.open(scene, "w", **profile) as dst:
        dst.write(np.moveaxis(big, -1, 0))
    return images, scene


# -- driver of the benchmark ------------------------------------------------------------

IMPORTS = "import torch, ray, ray.data, rasterio, raysegment.infer.pipeline, raysegment_unet"


def import_floor() -> float:
    """Peak RSS (MiB) of a bare interpreter that only imports what the workers import."""
    code = f"{IMPORTS}; import resource; print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return round(int(out.stdout.split()[-1]) / MIB, 1)


def run_child(job: dict[str, Any], scratch: Path, timeout: float) -> dict[str, Any]:
    """Run one measurement in a fresh interpreter; its stderr (Ray's) goes to a log kept on failure."""
    name = f"{job['kind']}-{job.get('size', '')}"
    job = {**job, "scratch": str(scratch), "result": str(scratch / f"{name}.result.json")}
    job_path, log_path = scratch / f"{name}.job.json", scratch / f"{name}.log"
    job_path.write_text(json.dumps(job))
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        try:
            proc = subprocess.run([sys.executable, __file__, "--child", str(job_path)], stderr=log, timeout=timeout)
            code = proc.returncode
        except subprocess.TimeoutExpired:
            code = None
    seconds = round(time.perf_counter() - t0, 1)
    if code == 0 and Path(job["result"]).exists():
        return {**json.loads(Path(job["result"]).read_text()), "child_s": seconds}
    tail = [line for line in log_path.read_text(errors="replace").splitlines() if line.strip()][-15:]
    what = f"timed out after {timeout:.0f}s" if code is None else f"exited with {code}"
    print(f"  {name} {what}; last lines of {log_path}:\n    " + "\n    ".join(tail), flush=True)
    return {"error": what, "log_tail": tail, "child_s": seconds, **{k: job[k] for k in ("size",) if k in job}}


def _mib(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f}"


def print_memory(rows: list[dict[str, Any]]) -> None:
    print(f"\n{'size':>6} {'scene MiB':>9} {'windows':>8} {'skipped':>7} {'seconds':>8} {'wall s':>7} {'Mpx/s':>6}"
          f" {'RLE MiB':>8} {'ray:: RSS sum':>13}")
    ok = [r for r in rows if "error" not in r]
    for r in rows:
        if "error" in r:
            print(f"{r.get('size', '?'):>6} FAILED after {r['child_s']:.0f}s: {r['error']}")
            continue
        print(f"{r['size']:>6} {r['scene_bytes'] / 2**20:>9.1f} {r['windows']:>8} {r['windows_skipped']:>7}"
              f" {r['pipeline_s']:>8.1f} {r['wall_s']:>7.1f} {r['mpx_per_s']:>6.2f} {r['rle_chars'] / 2**20:>8.1f}"
              f" {_mib(r['ray_sum_rss_mib']):>13}")
    print("\npeak memory (MiB) per role: peak RSS (VmHWM) / private (RssAnon) / object store pages (RssShmem)")
    print(f"{'role':<10}" + "".join(f"{str(r['size']) + '²':>22}" for r in ok)
          + ("".join(f"{'growth':>16}") if len(ok) > 1 else ""))
    for role in ROLES:
        cells = [(r[f"{role}_mib"], r[f"{role}_anon_mib"], r[f"{role}_shmem_mib"]) for r in ok]
        if all(c[0] is None for c in cells):
            continue
        text = "".join(f"{' / '.join(_mib(v) for v in c):>22}" for c in cells)
        if len(ok) > 1 and cells[0][0] is not None and cells[-1][0] is not None:
            text += f"{cells[-1][0] - cells[0][0]:>+9.0f} / {cells[-1][1] - cells[0][1]:+.0f}"
        name = f"tasks({ok[-1]['task_workers']})" if role == "tasks" else role
        print(f"{name:<10}{text}")
    if len(ok) >= 2:
        lo, hi = ok[0], ok[-1]
        dt = hi["pipeline_s"] - lo["pipeline_s"]
        if dt > 0:
            print(f"marginal rate {lo['size']}² -> {hi['size']}² (start-up cancels out): "
                  f"{(hi['scene_mpx'] - lo['scene_mpx']) / dt:.2f} Mpx/s")


def print_merger(m: dict[str, Any]) -> None:
    if "error" in m:
        print(f"\nmerger alone FAILED: {m['error']}")
        return
    print(f"\nmerger alone (one process, 1 thread; {m['size']}² scene, tile {m['tile']}, overlap {m['overlap']})")
    print(f"{'logits':<8} {'windows':>7} {'seconds':>8} {'windows/s':>9} {'scene Mpx/s':>11} {'RLE MiB':>8}")
    for kind in ("model", "smooth"):
        r = m[kind]
        print(f"{kind:<8} {r['windows_run']:>7} {r['seconds']:>8.2f} {r['windows_per_s']:>9.1f}"
              f" {r['scene_mpx_per_s']:>11.2f} {r['rle_chars'] / 2**20:>8.1f}")


def print_throughput(tp: dict[str, Any]) -> None:
    if "error" in tp:
        print(f"\nthroughput FAILED: {tp['error']}")
        return
    print(f"\nsame pixels: {tp['images']} PNGs of {tp['image_size']}² = one {tp['scene_size']}² scene "
          f"({tp['scene_mpx']} Mpx); predictor threads {tp['predictor_threads']}")
    print(f"{'mode':<11} {'batch':>5} {'windows':>7} {'run Mpx':>8} {'seconds':>8} {'Mpx/s':>6} {'vs untiled':>10} {'vs bare':>8}")
    for r in tp["rows"]:
        n = r["windows"] or r["rows"]
        print(f"{r['mode']:<11} {r['batch_size']:>5} {n:>7} {r['run_mpx']:>8.1f} {r['pipeline_s']:>8.2f}"
              f" {r['mpx_per_s']:>6.3f} {r['vs_untiled']:>9.2f}x {r['vs_bare']:>7.2f}x")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--sizes", default="4096,16384", help="scene sizes (pixels a side) for the memory runs")
    p.add_argument("--tile", type=int, default=512, help="tile of the memory runs (default 512)")
    p.add_argument("--overlap", type=int, default=64, help="overlap of every tiled run (default 64)")
    p.add_argument("--batch-size", type=int, default=8, help="windows per batch in the memory runs")
    p.add_argument("--depth", type=int, default=2, help="U-Net depth (default 2)")
    p.add_argument("--base-channels", type=int, default=8, help="U-Net width of the first level (default 8)")
    p.add_argument("--seed", type=int, default=0, help="torch seed of the U-Net's random weights (default 0)")
    p.add_argument("--grid", type=int, default=4, help="throughput: grid x grid images (default 4: 16 images)")
    p.add_argument("--image-size", type=int, default=1024, help="throughput: side of each untiled image")
    p.add_argument("--tiles", default="1024,512", help="throughput: tile sizes of the tiled runs")
    p.add_argument("--parts", default="memory,merger,throughput", help="which measurements to run")
    p.add_argument("--cpus", type=int, default=os.cpu_count() or 1, help="num_cpus of each local Ray")
    p.add_argument("--scratch", help="folder for the scenes, kept (and reused) between runs; default: a temp dir")
    p.add_argument("--timeout", type=float, default=1200, help="seconds allowed to each measurement process")
    p.add_argument("--quick", action="store_true", help="smoke run: sizes 2048,4096, a 2x2 grid")
    p.add_argument("--no-save", action="store_true", help=f"print only; do not write {RESULTS.relative_to(REPO)}")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.sizes, args.grid = "2048,4096", 2
    args.sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    args.tiles = [int(s) for s in args.tiles.split(",") if s.strip()]
    args.parts = {s.strip() for s in args.parts.split(",") if s.strip()}
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child:
        job = json.loads(Path(args.child).read_text())
        result = {"memory": child_memory, "throughput": child_throughput, "merger": child_merger}[job["kind"]](job)
        Path(job["result"]).write_text(json.dumps(result))
        return
    import ray
    import torch

    params = {"depth": args.depth, "base_channels": args.base_channels, "in_channels": 3, "num_classes": 2}
    machine = (f"{platform.machine()} {platform.system()}, {os.cpu_count()} CPU(s); torch {torch.__version__}; "
               f"ray {ray.__version__}; python {platform.python_version()}")
    common = {"params": params, "cpus": args.cpus, "overlap": args.overlap, "seed": args.seed}
    print(f"machine: {machine}; OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    print(f"model: {MODEL} {params} (random weights, seed {args.seed}); Ray num_cpus={args.cpus}; load average {os.getloadavg()}",
          flush=True)
    scratch = Path(args.scratch or tempfile.mkdtemp(prefix="bench-tiled-"))
    scratch.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"machine": machine, "command": " ".join(["python", *sys.argv]),
                              "date": time.strftime("%Y-%m-%d %H:%M"), "model": MODEL, "params": params,
                              "seed": args.seed,
                              "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
                              "load_avg_start": [round(v, 2) for v in os.getloadavg()]}
    t_start = time.perf_counter()
    common["checkpoint"] = make_checkpoint(scratch, params, args.seed)
    result["import_floor_mib"] = import_floor()
    print(f"import floor: {result['import_floor_mib']:.0f} MiB ({IMPORTS})", flush=True)
    try:
        if "memory" in args.parts:
            result["memory"] = []
            for size in args.sizes:
                scene, made = make_scene(scratch, size)
                print(f"memory: {size}² scene ({scene.stat().st_size / 2**20:.0f} MiB, made in {made:.0f}s)", flush=True)
                job = {**common, "kind": "memory", "size": size, "scene": str(scene), "tile": args.tile,
                       "batch_size": args.batch_size}
                row = run_child(job, scratch, args.timeout)
                if "error" not in row:
                    print(f"  {row['windows']} windows ({row['windows_skipped']} all nodata) in {row['pipeline_s']:.1f}s, "
                          f"{row['mpx_per_s']:.2f} Mpx/s; predictor {_mib(row['predictor_mib'])} MiB, "
                          f"merger {_mib(row['merger_mib'])} MiB", flush=True)
                result["memory"].append(row)
        if "merger" in args.parts:
            size = args.sizes[0]
            scene, _ = make_scene(scratch, size)
            print(f"merger alone: {size}² scene, window logits made beforehand", flush=True)
            job = {**common, "kind": "merger", "size": size, "scene": str(scene), "tile": args.tile,
                   "batch_size": args.batch_size}
            result["merger"] = run_child(job, scratch, args.timeout)
        if "throughput" in args.parts:
            images, scene = make_same_pixels(scratch, args.grid, args.image_size)
            size = args.grid * args.image_size
            print(f"throughput: {args.grid * args.grid} images of {args.image_size}² vs one {size}² scene", flush=True)
            job = {**common, "kind": "throughput", "images": str(images), "scene": str(scene),
                   "scene_px": size * size, "n_images": args.grid ** 2, "image_size": args.image_size,
                   "scene_size": size, "tiles": args.tiles, "pixels_per_batch": 2 * 1024 * 1024,
                   "untiled_batch": max(1, 2 * 1024 * 1024 // args.image_size ** 2), "bare_batch": 8}
            result["throughput"] = run_child(job, scratch, args.timeout)
    finally:
        if not args.scratch:
            shutil.rmtree(scratch, ignore_errors=True)
    result["load_avg_end"] = [round(v, 2) for v in os.getloadavg()]
    result["total_s"] = round(time.perf_counter() - t_start, 1)
    if "memory" in result:
        print_memory(result["memory"])
    if "merger" in result:
        print_merger(result["merger"])
    if "throughput" in result:
        print_throughput(result["throughput"])
    print(f"\nper role the largest process; tasks(n): n task workers; ray:: RSS sum: peak of the summed RSS of all "
          f"ray:: processes. total {result['total_s']:.0f}s; load average {result['load_avg_start']} -> "
          f"{result['load_avg_end']}")
    if not args.no_save:  # parts not run this time keep their previous results
        old = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
        result["measured"] = {part: result["date"] for part in ("memory", "merger", "throughput") if part in result}
        for part in {"memory", "merger", "throughput"} - set(result):
            if part in old:
                result[part] = old[part]
                result["measured"][part] = old.get("measured", {}).get(part, old.get("date"))
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(result, indent=1) + "\n")
        print(f"saved {RESULTS}")


if __name__ == "__main__":
    main()
