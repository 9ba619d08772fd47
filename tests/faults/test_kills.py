"""Processes and nodes that die mid-run, with real Ray and real processes: every item is one row.

Each test kills something real while a run writes: a predictor actor's worker process
(SIGKILL), the ``raysegment infer`` driver (SIGKILL, then ``--resume``), a whole worker node
of a ``ray.cluster_utils.Cluster`` that runs a predictor. Then it checks the output item by
item: one row per listed entry, by uri and by index, and every committed row stamped with
the run id of the output's ``_raysegment.json`` (a resume keeps it). The last test runs the
bad-input corpus and the links and FIFO of a listing through one run: every entry accounted for.

Processes are found through /proc as descendants of the process that started their Ray
(the test, the CLI, the cluster script): another engineer's Ray on the same machine is
never touched, and no private Ray API is needed (the dashboard is off).
"""

from __future__ import annotations

import inspect
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import SMALL_UNET, png_bytes, write_bad_inputs
from fault_helpers import DEADLINE_S, PREDICTOR_TITLE, assert_exactly_once, predictors, process_table
from test_orphans import ray_processes, wait_until_gone

from raysegment.infer.pipeline import InferenceConfig, run_inference
from raysegment.output.lease import LEASE_FOLDER, lease_holder
from raysegment.output.root import MANIFEST, SUCCESS, OutputRoot

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds Ray's processes in /proc")

ROOT = Path(__file__).resolve().parents[2]
UNET_ARGS = ("--model", "unet", "--param", "depth=2", "--param", "base_channels=4")


# -- helpers ------------------------------------------------------------------------------
def _pngs(folder: Path, count: int, size: int = 64) -> Path:
    """``count`` small grey PNGs: a run's items cost Ray overhead only."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        (folder / f"img{i:03d}.png").write_bytes(png_bytes(rng.integers(0, 255, (size, size), dtype=np.uint8)))
    return folder


def _parts(out: Path) -> int:
    return len(list(out.glob("part-*.parquet")))


def _rows_landed(out: Path) -> bool:
    """Some rows are in the output folder: a committed part, or a batch's fragment staged for one."""
    return any(out.glob("part-*.parquet")) or any(out.glob("_staging/shard-*/frag-*.parquet"))


def _durable(out: Path, shard_size: int) -> int:
    """Items a resume keeps: rows of committed parts, plus the distinct items staged for the others."""
    import pyarrow.parquet as pq

    parts = {p.stem.split("-")[1] for p in out.glob("part-*.parquet")}
    staged = 0
    for folder in out.glob("_staging/shard-*"):
        if folder.name.split("-")[1] not in parts:
            frags = sorted(folder.glob("frag-*.parquet"))
            staged += len({i for f in frags for i in pq.read_table(f, columns=["index"]).column("index").to_pylist()})
    return len(parts) * shard_size + staged


def _until(what: str, ready: Callable[[], bool], timeout: float = DEADLINE_S, alive: Callable[[], bool] = lambda: True):
    """Poll ``ready`` (no fixed sleep stands in for an event); fail naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not ready():
        if not alive():
            pytest.fail(f"the run ended before {what}")
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not happen within {timeout:.0f} s")
        time.sleep(0.05)


def _env(ray_tmp: str) -> dict[str, str]:
    """The CLI's environment: its own Ray temp folder (so its processes are known), no progress bar,
    and a lease TTL far beyond the test, so a take-over can only come from the dead-pid check."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAYSEGMENT_DEBUG")}
    return env | {"RAY_TMPDIR": ray_tmp, "RAYSEGMENT_PROGRESS": "0", "RAYSEGMENT_LEASE_TTL": "3600"}


@pytest.fixture
def ray_tmp() -> Iterator[Callable[[], str]]:
    """Short RAY_TMPDIR folders (Ray's socket paths live under them); whatever is left of them is ended."""
    made: list[str] = []

    def make() -> str:
        made.append(tempfile.mkdtemp(prefix="rsflt"))
        return made[-1]

    yield make
    for tmp in made:
        for pid, _start in ray_processes(tmp):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        shutil.rmtree(tmp, ignore_errors=True)


# -- 1. a predictor actor SIGKILLed mid-run ---------------------------------------------------
class _ActorKiller(threading.Thread):
    """SIGKILLs this process's predictor actor ``kills`` times while the run writes: the first once
    rows have landed in the output (the first fragments: the predictor is faster than the one CPU
    left to decode and encode, so by the first committed part it may have predicted everything),
    then each one Ray restarts as soon as it is up (its title is set after ``__init__``: the model
    is loaded and the retried batch is on its way to it)."""

    def __init__(self, out: Path, kills: int, spare: set[int]):
        super().__init__(daemon=True)
        self.out, self.kills, self.spare = out, kills, spare
        self.killed: list[tuple[int, int]] = []  # (pid, parts committed when it was killed)
        self.done = threading.Event()
        self.error: str | None = None

    def run(self) -> None:
        deadline = time.monotonic() + DEADLINE_S
        while len(self.killed) < self.kills and not self.done.is_set():
            if time.monotonic() > deadline:
                self.error = f"only {len(self.killed)} of {self.kills} kills within {DEADLINE_S:.0f} s"
                return
            parts = _parts(self.out)
            victims = [pid for pid in predictors(os.getpid()) if pid not in self.spare]
            if victims and _rows_landed(self.out) and not (self.out / SUCCESS).exists():
                os.kill(victims[0], signal.SIGKILL)
                self.killed.append((victims[0], parts))
                self.spare.add(victims[0])
            self.done.wait(0.05)


@pytest.mark.slow
@pytest.mark.usefixtures("ray_local")
def test_a_predictor_sigkilled_twice_mid_run_is_restarted_and_every_item_is_one_row(tmp_path: Path) -> None:
    # Items big enough and a model wide enough that the forward pass, not Ray's per-task cost,
    # is the slowest stage: rows then land while the predictor still has batches to do, so
    # both kills meet a predictor with work in flight (with 64 px items and the small U-Net it
    # could predict everything before the first row landed, and the run end after one kill).
    folder, out, count = _pngs(tmp_path / "in", 42, size=192), tmp_path / "out", 42
    killer = _ActorKiller(out, kills=2, spare=set(predictors(os.getpid())))
    killer.start()
    try:
        summary = run_inference(InferenceConfig(input=str(folder), output=str(out), model="unet",
                                                params={**SMALL_UNET, "base_channels": 24},
                                                batch_size=2, shard_size=3, actors=(1, 1)))
    finally:
        killer.done.set()
        killer.join(timeout=30)
    print(f"predictor kills (pid, parts committed then): {killer.killed}")
    assert killer.error is None, killer.error
    assert len(killer.killed) == 2, f"the run finished after {len(killer.killed)} kill(s): {killer.killed}"
    assert all(parts < count // 3 for _pid, parts in killer.killed), killer.killed  # both mid-run
    assert (summary.items, summary.ok, summary.failed) == (count, count, 0)
    assert_exactly_once(folder, out)


# -- 2. the driver SIGKILLed, then --resume ---------------------------------------------------
def _infer(folder: Path, out: Path, tmp: str, log: Path, *extra: str) -> subprocess.Popen:
    """``raysegment infer`` in a process of its own, its stdout and stderr to ``log`` (a pipe nobody
    reads while the run goes would fill with Ray's progress lines and block it)."""
    args = ["infer", str(folder), str(out), *UNET_ARGS, "--shard-size", "3", "--batch-size", "2", *extra]
    with log.open("w") as sink:
        return subprocess.Popen([sys.executable, "-m", "raysegment.cli", *args], stdout=sink, stderr=subprocess.STDOUT,
                                text=True, cwd=ROOT, env=_env(tmp))


@pytest.mark.slow
def test_a_sigkilled_driver_is_resumed_exactly_once_under_its_run_id(tmp_path: Path,
                                                                     ray_tmp: Callable[[], str]) -> None:
    folder, out, count = _pngs(tmp_path / "in", 24), tmp_path / "out", 24
    killed_tmp = ray_tmp()
    run = _infer(folder, out, killed_tmp, tmp_path / "killed.log")
    try:
        _until("a batch was staged", lambda: _rows_landed(out), alive=lambda: run.poll() is None)
        holder = lease_holder(OutputRoot(str(out)).fs, str(out / LEASE_FOLDER))
        assert holder is not None and holder.pid == run.pid and not holder.released
        run_id = json.loads((out / MANIFEST).read_text())["run_id"]
        assert holder.run_id == run_id
        run.send_signal(signal.SIGKILL)
        run.wait(timeout=60)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait(timeout=30)
    committed, durable = _parts(out), _durable(out, 3)
    assert committed < count // 3 and not (out / SUCCESS).exists(), "the kill came after the run finished"
    assert 0 < durable < count, durable  # finished items outlive the kill, parts or not
    took = wait_until_gone(killed_tmp)  # no process of the killed run's Ray remains
    print(f"killed driver: {committed}/{count // 3} parts committed, {durable} item(s) durable, its Ray gone "
          f"{took:.1f} s later")

    resume_tmp = ray_tmp()
    resumed = _infer(folder, out, resume_tmp, tmp_path / "resumed.log", "--resume")
    try:
        resumed.wait(timeout=DEADLINE_S)
    finally:
        if resumed.poll() is None:
            resumed.kill()
            resumed.wait(timeout=30)
    stderr = (tmp_path / "resumed.log").read_text()
    assert resumed.returncode == 0, stderr[-3000:]
    # Taken over at once: the TTL is an hour, so only "its process is gone" could free the lease.
    assert f"taking over output {out} from run {run_id}: its process {run.pid} on this host is gone" in stderr
    assert json.loads((out / MANIFEST).read_text())["run_id"] == run_id  # a resume keeps the run id
    # Item-level resume: the resume ran exactly the items that were not durable at the kill.
    assert f"rows written {count - durable} " in (tmp_path / "resumed.log").read_text(), (durable, stderr[-2000:])
    rows = assert_exactly_once(folder, out)
    assert all(r["status"] == "ok" for r in rows)
    final = lease_holder(OutputRoot(str(out)).fs, str(out / LEASE_FOLDER))
    assert final is not None and final.run_id == run_id and final.pid == resumed.pid and final.released
    wait_until_gone(resume_tmp)


# -- 3. a worker node holding a predictor removed from a cluster -------------------------------
#: Runs the cluster and its driver in a process of their own (the session's Ray is local). A
#: thread removes the worker node whose raylet is the parent of a predictor once a part is
#: committed; the run then finishes, or fails in one line, and a failed run is resumed on the
#: remaining cluster. Prints one JSON line of what happened.
CLUSTER_SCRIPT = textwrap.dedent("""
    import json, os, sys, threading, time
    from pathlib import Path
    from ray.cluster_utils import Cluster
    {helpers}
    from raysegment.infer.pipeline import InferenceConfig, run_inference
    from raysegment.runtime import describe_failure

    out = Path(sys.argv[2])
    # Dead nodes are noticed in about a second, not the default 15 s.
    fast = {"health_check_initial_delay_ms": 0, "health_check_period_ms": 500,
            "health_check_timeout_ms": 500, "health_check_failure_threshold": 3}
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "_system_config": fast})
    workers = [cluster.add_node(num_cpus=int(sys.argv[4])) for _ in range(2)]
    cluster.wait_for_nodes()
    result = {}

    first_run = threading.Event()  # set when the first run ends: the node goes during it, or not at all

    def remove_a_predictors_node():
        while not list(out.glob("part-*.parquet")):
            if first_run.wait(0.05):
                return
        while not first_run.is_set():
            running = predictors(os.getpid())
            for node in workers:
                raylet = node.all_processes["raylet"][0].process.pid
                held = [pid for pid, parent in running.items() if parent == raylet]
                if held:
                    result.update(removed_node=node.node_id, predictor_pid=held[0], at=time.monotonic(),
                                  parts_then=len(list(out.glob("part-*.parquet"))))
                    cluster.remove_node(node, allow_graceful=False)
                    return
            first_run.wait(0.05)

    remover = threading.Thread(target=remove_a_predictors_node, daemon=True)
    remover.start()
    cfg = dict(input=sys.argv[1], output=str(out), model="unet", params={"depth": 2, "base_channels": 4},
               batch_size=2, shard_size=3, actors=(2, 2), stall_timeout=float(sys.argv[3]), address=cluster.address)
    try:
        try:
            summary = run_inference(InferenceConfig(**cfg))
            result.update(outcome="completed", items=summary.items, ok=summary.ok)
        except Exception as exc:
            result.update(outcome="failed", error_type=type(exc).__name__, error=describe_failure(exc))
        result["first_run_ended"] = time.monotonic()
        first_run.set()
        remover.join()
        if result["outcome"] == "failed":
            summary = run_inference(InferenceConfig(**cfg, resume=True))
            result.update(resumed=True, items=summary.items, ok=summary.ok, skipped=summary.shards_skipped)
    finally:
        cluster.shutdown()
    print(json.dumps(result))
""")


@pytest.mark.slow
@pytest.mark.parametrize("worker_cpus", [2, 1], ids=["cpus-to-spare", "pool-takes-the-last-cpu"])
def test_a_removed_node_with_a_predictor_neither_hangs_nor_loses_or_doubles_a_row(tmp_path: Path,
                                                                                   worker_cpus: int) -> None:
    """Workers of 2 CPUs: 5 CPUs, so the encode stage has a CPU of its own and the restarted
    predictor finds a free one. Workers of 1 CPU: the restarted predictor takes the last CPU
    left, the run ends in one line naming that, and the resume (same pool, the smaller cluster)
    reserves no CPU for its actors and finishes."""
    folder, out, count, stall = _pngs(tmp_path / "in", 24), tmp_path / "out", 24, 30
    script = tmp_path / "cluster.py"
    helpers = f"PREDICTOR_TITLE = {PREDICTOR_TITLE!r}\n" + inspect.getsource(process_table) + inspect.getsource(predictors)
    script.write_text(CLUSTER_SCRIPT.replace("{helpers}", helpers))
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAYSEGMENT_DEBUG")}
    path = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)  # this tree, on every node too
    proc = subprocess.run([sys.executable, str(script), str(folder), str(out), str(stall), str(worker_cpus)],
                          capture_output=True,
                          text=True, timeout=420, cwd=ROOT, env=env | {"RAYSEGMENT_PROGRESS": "0", "PYTHONPATH": path})
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"node removal: {result}")
    assert "removed_node" in result, f"no worker node running a predictor was removed during the first run: {result}"
    assert result["parts_then"] < count // 3, "the node was removed after the run finished"
    # No hang: the first run ended soon after the node went, finished or not.
    assert result["first_run_ended"] - result["at"] < stall + 90
    if result["outcome"] == "failed":  # a pool that lost its node's CPUs: one line, then --resume finished it
        assert "\n" not in result["error"] and result["error"], result
        assert result["error_type"] == "StalledRunError" or result["error"].startswith(("Ray ", "a Ray node died")), result
        if result["error_type"] == "StalledRunError":  # the pool's CPUs named, not a hung read
            assert "has no CPU to run on: the predictor actors ask for all the CPUs" in result["error"], result
        assert result.get("resumed") is True
    assert (result["items"], result["ok"]) == (count, count)
    assert_exactly_once(folder, out)


# -- 4. the bad-input corpus and a listing's links and FIFO, as one run -------------------------
@pytest.mark.usefixtures("ray_local")
def test_every_bad_input_and_link_of_one_listing_is_one_row(tmp_path: Path) -> None:
    folder, elsewhere, out = tmp_path / "in", tmp_path / "elsewhere", tmp_path / "out"
    _pngs(folder, 3)
    words = write_bad_inputs(folder)
    _pngs(elsewhere, 1)
    os.symlink(elsewhere / "img000.png", folder / "link.png")
    os.symlink(tmp_path / "gone.png", folder / "dangling.png")
    os.symlink("loop.png", folder / "loop.png")
    os.mkfifo(folder / "pipe.png")
    words |= {"dangling.png": "broken symbolic link", "loop.png": "symbolic link loop", "pipe.png": "FIFO"}
    good = {"img000.png", "img001.png", "img002.png", "link.png"}
    assert set(os.listdir(folder)) == good | set(words)

    summary = run_inference(InferenceConfig(input=str(folder), output=str(out), model="unet", params=SMALL_UNET,
                                            batch_size=4, shard_size=5))
    assert (summary.items, summary.ok, summary.failed) == (13, len(good), len(words))
    rows = {Path(r["uri"]).name: r for r in assert_exactly_once(folder, out)}
    assert set(rows) == good | set(words)
    for name in good:
        assert (rows[name]["status"], rows[name]["error"]) == ("ok", None), rows[name]
    for name, word in words.items():
        row = rows[name]
        assert row["status"] == "error" and "\n" not in row["error"], row
        assert word in row["error"], row  # the row's uri names the item; a link's message names it too
        if name in ("dangling.png", "loop.png", "pipe.png"):
            assert str(folder / name) in row["error"], row
