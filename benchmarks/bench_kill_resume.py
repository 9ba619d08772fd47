"""Work lost to a kill: SIGKILL `raysegment infer` halfway through, `--resume`, count what it ran again.

For each shard size: one full run, polled for when its manifest appears (t0, the listing is
done) and when every row is on disk (t1), then a fresh run whose driver (and embedded Ray, as
one process group) is SIGKILLed at t0 + (t1 - t0) / 2, then ``--resume``. The
resume's summary says how many items it ran; about half of them had not been reached by the
kill, the rest are work the kill lost. Also printed: the rows that were durable on disk at the
kill (committed parts plus staged fragments, counted from file names alone).

Run with the code to compare first on ``PYTHONPATH`` (e.g. a ``git worktree`` of an older commit)::

    .venv/bin/python benchmarks/bench_kill_resume.py --items 1200 --shard-sizes 20,256,1000
    PYTHONPATH=/tmp/before .venv/bin/python benchmarks/bench_kill_resume.py ...   # the baseline
"""

from __future__ import annotations

import argparse
import io
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

FIRST_ROW: float | None = None  # when the last run() saw its first durable row
BASE_CHANNELS = 4  # --base-channels
PARAMS = ["--model", "unet", "--param", "depth=2", "--param", "in_channels=1"]  # + base_channels


def finished_rows(out: Path, shard_size: int) -> int:
    """Rows on disk: committed parts (whole shards) plus staged fragments (rows in their names).

    A listing that meets a shard's staging folder as its commit removes it is taken again."""
    while True:
        try:
            return _finished_rows(out, shard_size)
        except FileNotFoundError:
            continue


def _finished_rows(out: Path, shard_size: int) -> int:
    parts = list(out.glob("part-*.parquet"))
    rows = len(parts) * shard_size
    done = {p.stem.split("-")[1] for p in parts}
    for frag in out.glob("_staging/shard-*/frag-*.parquet"):
        if frag.parent.name.split("-")[1] not in done:
            rows += int(frag.name.split("-")[1])
    return rows


def run(items: Path, out: Path, shard_size: int, total: int, resume: bool = False,
        kill_after: float | None = None) -> tuple[float, float, int]:
    """One CLI run: (t0: manifest written, t1: every row on disk, rows written by the run) or,
    killed after ``kill_after`` s, (t0, kill time, rows on disk at the kill)."""
    cmd = [sys.executable, "-m", "raysegment.cli", "infer", str(items), str(out), *PARAMS, "--param",
           f"base_channels={BASE_CHANNELS}", "--batch-size", "8",
           "--shard-size", str(shard_size), "--stall-timeout", "0"] + (["--resume"] if resume else [])
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    t0 = t1 = None
    global FIRST_ROW
    FIRST_ROW = None
    while proc.poll() is None:  # polling the output folder, not timing the model
        now = time.perf_counter() - start
        if t0 is None and (out / "_raysegment.json").exists():
            t0 = now
        rows = finished_rows(out, shard_size)
        if FIRST_ROW is None and rows > 0:
            FIRST_ROW = now
        if t1 is None and rows >= total:
            t1 = now
        if kill_after is not None and now >= kill_after:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return t0 or now, now, finished_rows(out, shard_size)
        time.sleep(0.05)
    if kill_after is not None:
        raise SystemExit("the run finished before the kill")
    text = proc.stdout.read()
    match = re.search(r"rows written (\d+)", text)
    if not match:
        raise SystemExit(f"run failed:\n{text[-2000:]}")
    return t0 or 0.0, t1 or time.perf_counter() - start, int(match.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1200)
    parser.add_argument("--shard-sizes", default="20,256,1000")
    parser.add_argument("--kill-at", type=float, default=0.5)
    parser.add_argument("--size", type=int, default=64, help="item side in pixels (default 64)")
    parser.add_argument("--base-channels", type=int, default=4,
                        help="U-Net width (default 4: Ray's per-task cost dominates; 16 at 128 px: the forward does)")
    args = parser.parse_args()
    global BASE_CHANNELS
    BASE_CHANNELS = args.base_channels
    import raysegment

    print(f"raysegment from {Path(raysegment.__file__).parent}; {args.items} items of {args.size}x{args.size}, "
          f"U-Net base_channels={args.base_channels}; "
          f"killed {args.kill_at:.0%} of the way from the listing to the last row of a full run")
    with tempfile.TemporaryDirectory() as tmp:
        items = Path(tmp) / "items"
        items.mkdir()
        rng = np.random.default_rng(0)
        for i in range(args.items):
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 255, (args.size, args.size), dtype=np.uint8)).save(buf, format="PNG")
            (items / f"{i:05d}.png").write_bytes(buf.getvalue())
        print(f"{'shard size':>10} {'listed at s':>11} {'first row s':>11} {'all on disk s':>13} {'killed at s':>11} "
              f"{'on disk at kill':>15} {'resume ran':>10}")
        for size in [int(v) for v in args.shard_sizes.split(",")]:
            t0, t1, _ = run(items, Path(tmp) / f"full-{size}", size, args.items)
            first = FIRST_ROW or t1
            out = Path(tmp) / f"out-{size}"
            _, killed, on_disk = run(items, out, size, args.items, kill_after=t0 + (t1 - t0) * args.kill_at)
            _, _, ran = run(items, out, size, args.items, resume=True)
            print(f"{size:>10} {t0:>11.1f} {first:>11.1f} {t1:>13.1f} {killed:>11.1f} {on_disk:>15} {ran:>10}",
                  flush=True)

if __name__ == "__main__":
    main()
