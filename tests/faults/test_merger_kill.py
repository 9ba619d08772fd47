"""A tiled run whose merger actor is SIGKILLed mid-run: it finishes, or fails in one line and
``--resume`` finishes it; either way every scene is one row, exactly once.

Which of the two happens depends on what the merger held: Ray restarts it and retries its
batch in flight, but the blend of a scene whose earlier windows it had merged is gone with the
process (merger state is not durable), so that scene gets no row; the sink then finds the
scene's shard short at the end, and the run says so. A kill between scenes costs nothing.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from fault_helpers import DEADLINE_S, assert_exactly_once, predictors
from geo_fixtures import make_tiff

from raysegment.errors import describe_fatal
from raysegment.infer.pipeline import InferenceConfig, run_inference
from raysegment.output.root import SUCCESS
from raysegment.runtime import describe_failure

MERGER_TITLE = "ray::MapWorker(MapBatches(SceneMerger))"


def _scenes(folder: Path, count: int, size: int) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for i in range(count):
        make_tiff(folder / f"scene{i:02d}.tif", rng.integers(0, 255, (size, size), dtype=np.uint8))
    return folder


class _MergerKiller(threading.Thread):
    """SIGKILLs the run's merger once the first scene's part is committed (the merger then holds
    the windows of the next scenes), unless the run has finished."""

    def __init__(self, out: Path, spare: set[int]):
        super().__init__(daemon=True)
        self.out, self.spare = out, spare
        self.killed: tuple[int, int] | None = None  # (pid, parts committed then)
        self.done = threading.Event()

    def run(self) -> None:
        deadline = time.monotonic() + DEADLINE_S
        while self.killed is None and not self.done.is_set() and time.monotonic() < deadline:
            parts = len(list(self.out.glob("part-*.parquet")))
            victims = [pid for pid in predictors(os.getpid(), MERGER_TITLE) if pid not in self.spare]
            if victims and parts and not (self.out / SUCCESS).exists():
                os.kill(victims[0], signal.SIGKILL)
                self.killed = (victims[0], parts)
            self.done.wait(0.05)


@pytest.mark.slow
@pytest.mark.usefixtures("ray_local")
def test_a_killed_merger_finishes_or_says_so_in_one_line_and_resume_finishes(tmp_path: Path) -> None:
    folder, out, count = _scenes(tmp_path / "in", 6, 160), tmp_path / "out", 6
    cfg = dict(input=str(folder), output=str(out), model="unet",
               params={"depth": 1, "base_channels": 4, "in_channels": 1}, tile=64, overlap=16, batch_size=2,
               shard_size=1, actors=(1, 1))
    killer = _MergerKiller(out, spare=set(predictors(os.getpid(), MERGER_TITLE)))
    killer.start()
    outcome, line = "completed", ""
    try:
        run_inference(InferenceConfig(**cfg))
    except Exception as exc:
        outcome, line = "failed", describe_fatal(exc, describe_failure(exc))
    finally:
        killer.done.set()
        killer.join(timeout=30)
    print(f"merger killed (pid, parts then): {killer.killed}; first run {outcome}: {line}")
    assert killer.killed is not None, "the run finished before the merger could be killed"
    assert killer.killed[1] < count
    if outcome == "failed":  # the scenes it held are lost: the line says which shards, and what to do
        assert "\n" not in line and "lack rows at the end of the run" in line and "--resume" in line, line
        summary = run_inference(InferenceConfig(**cfg, resume=True))
        assert summary.shards_skipped >= killer.killed[1]
    rows = assert_exactly_once(folder, out)
    assert all(r["status"] == "ok" for r in rows), rows
