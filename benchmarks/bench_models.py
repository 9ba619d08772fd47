"""CPU inference throughput and peak memory of every registered model, at 512x512.

Each model runs in its own subprocess, so its peak RSS is its own. In that
process, two ways on the same random batch:

- ``bare``: ``module(x)`` under ``torch.inference_mode``: the most the model can do;
- ``hooks``: the plugin's own path as the predictor runs it: ``preprocess`` on a
  uint8 image, ``forward`` + ``reduce``, ``postprocess``; the ratio hooks/bare
  is what the plugin contract costs.

Results go to ``benchmarks/results/models_cpu.json``, which
``scripts/gen_models_doc.py`` puts into ``docs/models.md``.

    python benchmarks/bench_models.py                 # every model, defaults (paper configurations)
    python benchmarks/bench_models.py deeplabv3 unet  # some models
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "models_cpu.json"


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _timed(fn, min_seconds: float, min_reps: int) -> float:
    """Seconds per call: calls repeat until both ``min_reps`` and ``min_seconds`` are reached."""
    reps, start = 0, time.perf_counter()
    while reps < min_reps or time.perf_counter() - start < min_seconds:
        fn()
        reps += 1
    return (time.perf_counter() - start) / reps


def measure_one(name: str, size: int, batch: int, min_seconds: float) -> dict:
    import numpy as np
    import torch

    from raysegment.plugin.contract import Sample
    from raysegment.plugin.registry import get_registry

    torch.set_num_threads(os.cpu_count() or 1)
    before = _rss_mib()
    model = get_registry().create(name)
    module = model.build().eval()
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (size, size, model.in_channels), dtype=np.uint8) for _ in range(batch)]
    meta = {"height": size, "width": size}
    x = torch.from_numpy(np.stack([model.preprocess(Sample(data=im, meta=meta)) for im in images]))

    def bare() -> None:
        with torch.inference_mode():
            module(x)

    def hooks() -> None:
        xb = torch.from_numpy(np.stack([model.preprocess(Sample(data=im, meta=meta)) for im in images]))
        with torch.inference_mode():
            reduced = model.reduce(model.forward(module, xb))
        for i in range(batch):
            model.postprocess({k: v[i].cpu().numpy() for k, v in reduced.items()}, meta)

    bare()  # warm-up: allocator and kernel selection
    t_bare = _timed(bare, min_seconds, 2)
    t_hooks = _timed(hooks, min_seconds, 2)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "model": name, "size": size, "batch": batch,
        "bare_img_s": batch / t_bare, "hooks_img_s": batch / t_hooks, "hooks_vs_bare": t_bare / t_hooks,
        "peak_rss_mib": peak, "rss_before_build_mib": before,
        "parameters": sum(p.numel() for p in module.parameters()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="*", help="registry names (default: every registered model)")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--min-seconds", type=float, default=3.0, help="time each mode at least this long")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--no-save", action="store_true", help="print only; do not update the results file")
    args = ap.parse_args()
    if args.one:
        print(json.dumps(measure_one(args.one, args.size, args.batch, args.min_seconds)))
        return

    import torch

    from raysegment.plugin.contract import Modality
    from raysegment.plugin.registry import get_registry

    registry = get_registry()
    # 2D images only: volume models (unet3d) run as 3D sliding windows, see bench_tiled.py.
    names = args.models or sorted(n for n, i in registry.plugins.items() if i.cls.modality is not Modality.VOLUME)
    machine = (f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
               f"Python {platform.python_version()}")
    print(f"machine: {machine}; {args.size}x{args.size}, batch {args.batch}, {torch.get_num_threads()} threads")
    print(f"{'model':<30} {'bare img/s':>10} {'hooks img/s':>11} {'hooks/bare':>10} {'peak RSS MiB':>12}")
    rows = []
    for name in names:
        cmd = [sys.executable, __file__, "--one", name, "--size", str(args.size), "--batch", str(args.batch),
               "--min-seconds", str(args.min_seconds)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"{name:<30} FAILED: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode}")
            continue
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(f"{name:<30} {row['bare_img_s']:>10.3f} {row['hooks_img_s']:>11.3f} {row['hooks_vs_bare']:>9.2f}x "
              f"{row['peak_rss_mib']:>12.0f}")
    if not args.no_save and rows:
        old = json.loads(RESULTS.read_text()) if RESULTS.exists() else {"rows": []}
        keep = [r for r in old.get("rows", []) if r["model"] not in {r2["model"] for r2 in rows}]
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps({"machine": machine, "command": " ".join(["python", *sys.argv]),
                                       "rows": sorted(keep + rows, key=lambda r: r["model"])}, indent=1) + "\n")
        print(f"saved {RESULTS}")


if __name__ == "__main__":
    main()
