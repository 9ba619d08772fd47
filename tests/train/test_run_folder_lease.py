"""One training run per ``--storage/--name``: the run folder's lease, with a real second process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import fsspec
import pytest

from raysegment.output.lease import LeaseHeld, LeaseLost, acquire_lease
from raysegment.train.run_folder import RunFolder
from raysegment.train.training import TrainConfig

HOLD = """
import sys
from raysegment.train.run_folder import RunFolder
run = RunFolder(sys.argv[1], "shared", {})
run.check(resume=False)
print("training", flush=True)
sys.stdin.readline()
"""


def test_a_second_train_on_a_live_run_fails_in_one_line_before_ray(tmp_path: Path) -> None:
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "training"
        cfg = TrainConfig(images=str(tmp_path / "none"), model="unet", storage=str(tmp_path), name="shared", resume=True)
        with pytest.raises(LeaseHeld, match=r"run .*shared is in use by run \S+ \(pid \d+"):
            RunFolder(cfg.storage, cfg.name, {}).check(resume=True)
    finally:
        holder.kill()
        holder.wait()
    run = RunFolder(str(tmp_path), "shared", {})
    run.check(resume=True)  # the killed holder's lease is taken over at once
    run.release()


def test_a_run_that_lost_its_folder_writes_nothing_more(tmp_path: Path) -> None:
    run = RunFolder(str(tmp_path), "r", {})
    run.check(resume=False)
    run.write("metrics.jsonl", b"{}\n")
    run.release()  # as a run that stopped renewing; its fence still travels with the folder (rank 0)
    acquire_lease(fsspec.filesystem("file"), f"{run.path}/_lease", run_id="usurper", shown="run r")
    with pytest.raises(LeaseLost, match="to run usurper"):
        run.write("metrics.jsonl", b"{}\n{}\n")
    assert (tmp_path / "r" / "metrics.jsonl").read_bytes() == b"{}\n"
    with pytest.raises(LeaseLost, match="to run usurper"):  # what rank 0 asks before each Ray Train checkpoint
        run.hold()
