"""The embedded Ray is really local, and a failed Ray job ends in one line.

Another cluster runs on the same machine, recorded where Ray looks for it (its
``ray_current_cluster`` file), so a plain ``ray.init()`` joins it; ``ensure_ray()``
must start its own Ray instead, and still join that cluster when given its
address. Each Ray lives in its own subprocess, so this test process stays clean,
and ``RAY_TMPDIR`` keeps the recorded address away from other Ray users here.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: A ray.cluster_utils.Cluster, recorded in RAY_TMPDIR like a `ray start --head`; it
#: prints its address and head node once up, and stops when its stdin closes.
OTHER_CLUSTER = textwrap.dedent("""
    import json, sys
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "include_dashboard": False, "resources": {"other_cluster": 1}})
    print(json.dumps({"gcs": cluster.address, "node": cluster.head_node.node_id}), flush=True)
    sys.stdin.read()
    cluster.shutdown()
""")

#: Runs each step ("plain" = a bare ray.init(), else ensure_ray(ADDRESS)), prints one JSON line per step.
PROBE = textwrap.dedent("""
    import json, os, sys
    import ray
    from raysegment.runtime import ensure_ray

    for step in json.loads(sys.argv[1]):
        if step.get("env"):
            os.environ["RAY_ADDRESS"] = step["env"]
        if step["call"] == "plain":
            ray.init(logging_level="WARNING")
            started = None
        else:
            started = ensure_ray(step.get("address"), num_cpus=1)
        ctx = ray.get_runtime_context()
        print(json.dumps({"started": started, "gcs": ctx.gcs_address, "node": ctx.get_node_id(),
                          "nodes": [n["NodeID"] for n in ray.nodes() if n["Alive"]],
                          "other_cluster": ray.cluster_resources().get("other_cluster", 0)}), flush=True)
        ray.shutdown()
        os.environ.pop("RAY_ADDRESS", None)
""")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAYSEGMENT_DEBUG")}
    env.update(extra)
    return env


def _read_json_line(proc: subprocess.Popen, timeout: float) -> dict:
    """The first JSON line the process prints, waiting at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    while (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([proc.stdout], [], [], left)
        if not ready:
            break
        line = proc.stdout.readline()
        if not line:
            pytest.fail(f"the other cluster exited before it was up (rc={proc.wait()})")
        if line.startswith("{"):
            return json.loads(line)
    pytest.fail(f"the other cluster was not up within {timeout:.0f} s")


@pytest.fixture(scope="module")
def other_cluster() -> Iterator[tuple[dict, dict[str, str]]]:
    """Another Ray cluster on this machine, recorded for plain ray.init(); yields its info and the env that sees it."""
    tmp = tempfile.mkdtemp(prefix="rsray")  # short: Ray's socket paths live under it
    env = _env(RAY_TMPDIR=tmp)
    proc = subprocess.Popen([sys.executable, "-c", OTHER_CLUSTER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, env=env, cwd=ROOT)
    try:
        info = _read_json_line(proc, timeout=120)
        recorded = Path(tmp, "ray", "ray_current_cluster")
        assert recorded.read_text().strip() == info["gcs"], "the other cluster is not recorded where Ray looks"
        yield info, env
    finally:
        assert proc.stdin is not None
        proc.stdin.close()  # the cluster shuts itself down
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()  # its nodes' reaper stops the Ray processes it started
            proc.wait(timeout=30)
        shutil.rmtree(tmp, ignore_errors=True)


def _probe(env: dict[str, str], steps: list[dict]) -> list[dict]:
    proc = subprocess.run([sys.executable, "-c", PROBE, json.dumps(steps)], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(rows) == len(steps), proc.stdout + proc.stderr[-3000:]
    return rows


@pytest.mark.slow
def test_ensure_ray_starts_its_own_ray_beside_a_recorded_cluster(other_cluster: tuple[dict, dict[str, str]]) -> None:
    info, env = other_cluster
    plain, embedded = _probe(env, [{"call": "plain"}, {"call": "ensure"}])
    # The hazard is real here: a bare ray.init() lands on the other cluster.
    assert plain["gcs"] == info["gcs"] and info["node"] in plain["nodes"], (plain, info)
    assert embedded["started"] is True
    assert embedded["gcs"] != info["gcs"]
    assert info["node"] not in embedded["nodes"] and embedded["node"] != info["node"]
    assert embedded["other_cluster"] == 0, "the embedded Ray sees the other cluster's resources"


@pytest.mark.slow
def test_ensure_ray_joins_the_other_cluster_when_asked(other_cluster: tuple[dict, dict[str, str]]) -> None:
    info, env = other_cluster
    steps = [{"call": "ensure", "address": info["gcs"]}, {"call": "ensure", "env": info["gcs"]},
             {"call": "ensure", "address": "auto"}]
    for step, row in zip(steps, _probe(env, steps)):
        assert row["started"] is True, step
        assert row["gcs"] == info["gcs"] and info["node"] in row["nodes"], (step, row, info)
        assert row["other_cluster"] == 1, (step, row)


# -- one line per failed Ray job ------------------------------------------------------------
#: The real `raysegment` group with one extra command that fails in a chosen, real Ray way.
FAILING_COMMAND = textwrap.dedent("""
    import json, os, sys
    import click, ray, ray.data
    from raysegment.cli import main
    from raysegment.runtime import ensure_ray

    @ray.remote
    def read_band():
        raise ValueError("band 4 is out of range\\nthe image has 3 bands")

    @ray.remote
    class RaisesAtStart:
        def __init__(self):
            raise RuntimeError("weights do not match the model")
        def ping(self):
            return 1

    @ray.remote
    class ExitsAtStart:
        def __init__(self):
            os._exit(3)
        def ping(self):
            return 1

    def decode(batch):
        raise KeyError("missing band")

    def fit():
        import tempfile
        from ray.train import FailureConfig, RunConfig, ScalingConfig
        from ray.train.torch import TorchTrainer

        def loop(config):
            raise ValueError("labels have 3 classes, the model 2")

        TorchTrainer(loop, scaling_config=ScalingConfig(num_workers=1),
                     run_config=RunConfig(storage_path=tempfile.mkdtemp(),
                                          failure_config=FailureConfig(max_failures=0))).fit()

    CASES = {
        "task": lambda: ray.get(read_band.remote()),
        "actor-raises": lambda: ray.get(RaisesAtStart.remote().ping.remote()),
        "actor-exits": lambda: ray.get(ExitsAtStart.remote().ping.remote()),
        "data": lambda: ray.data.range(4).map_batches(decode).take_all(),
        "train": fit,
    }

    @main.command("fail")
    @click.argument("case")
    def fail(case):
        started = ensure_ray(num_cpus=2)
        try:
            CASES[case]()
        finally:  # as raysegment's commands do, so nothing Ray streams comes after the error line
            if started:
                ray.shutdown()

    cases = sys.argv[1:]
    if cases[0] == "--shared":  # one Ray for all cases: each command reuses it, as in a notebook
        cases = cases[1:]
        ensure_ray(num_cpus=2)
    results = {}
    for case in cases:
        debug = case.endswith(":debug")
        os.environ.pop("RAYSEGMENT_DEBUG", None)
        if debug:
            os.environ["RAYSEGMENT_DEBUG"] = "1"
        print(f"=== {case}", file=sys.stderr, flush=True)
        try:
            main(["fail", case.removesuffix(":debug")], standalone_mode=False)
            results[case] = "no error"
        except SystemExit as exc:
            results[case] = exc.code
        except Exception as exc:
            results[case] = "raised " + type(exc).__name__
        print(f"=== end {case}", file=sys.stderr, flush=True)
    print(json.dumps(results))
""")


def _run_failures(*cases: str, shared: bool = False) -> tuple[dict, dict[str, list[str]]]:
    """Exit code (or what escaped) and stderr lines per case, from one subprocess.

    Each case starts (and stops) its own Ray, as a command run alone does; with
    ``shared`` one Ray serves all, which is faster, but what Ray streams from one
    case's workers may then land after the next case's error line.
    """
    args = ["--shared", *cases] if shared else list(cases)
    proc = subprocess.run([sys.executable, "-c", FAILING_COMMAND, *args], capture_output=True, text=True,
                          env=_env(), cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in proc.stderr.splitlines():
        if line.startswith("=== end "):
            current = None
        elif line.startswith("=== "):
            current = sections.setdefault(line[4:], [])
        elif current is not None:
            current.append(line)
    return results, sections


def _error_line(results: dict, sections: dict[str, list[str]], case: str, last: bool = True) -> str:
    """The case exits 1 with exactly one ``error:`` line, no traceback, and (``last``) nothing after it."""
    lines = sections[case]
    assert results[case] == 1, (results[case], lines)
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1, lines
    assert not any("Traceback" in line for line in lines), lines
    if last:
        assert [line for line in lines if line.strip()][-1] == errors[0], lines
    return errors[0]


def test_ray_failures_end_in_one_line_naming_what_failed() -> None:
    results, sections = _run_failures("task", "actor-raises", "actor-exits", "data", "task:debug", shared=True)
    assert _error_line(results, sections, "task", last=False) == (
        "error: Ray task read_band failed: ValueError: band 4 is out of range")
    assert _error_line(results, sections, "actor-raises", last=False) == (
        "error: Ray actor RaisesAtStart failed to start: RuntimeError: weights do not match the model")
    line = _error_line(results, sections, "actor-exits", last=False)
    assert line.startswith("error: Ray actor ExitsAtStart (pid ") and "died before it started" in line, line
    assert _error_line(results, sections, "data", last=False) == (
        "error: Ray task ReadRange->MapBatches(decode) failed: KeyError: 'missing band'")
    # RAYSEGMENT_DEBUG=1 lets the real exception through instead.
    assert results["task:debug"] == "raised RayTaskError(ValueError)"
    assert not any(line.startswith("error:") for line in sections["task:debug"])


@pytest.mark.slow
def test_a_failed_training_or_actor_start_ends_in_one_line() -> None:
    """Run alone (Ray started and stopped by the command), the error line is the last thing printed."""
    results, sections = _run_failures("actor-raises", "train")
    assert _error_line(results, sections, "actor-raises") == (
        "error: Ray actor RaisesAtStart failed to start: RuntimeError: weights do not match the model")
    lines = sections["train"]
    assert results["train"] == 1 and [line for line in lines if line.startswith("error:")] == [
        "error: training failed on worker rank 0: ValueError: labels have 3 classes, the model 2"], lines
    # Ray Train's controller streams its own copy of the worker's traceback before that line (issue 15, part 5).
    assert [line for line in lines if line.strip()][-1].startswith("error: training failed"), lines


def test_lost_objects_and_nodes_are_described_in_one_line() -> None:
    """Ray's object/node loss errors, as Ray builds them, keep the reason and drop the essay after it."""
    from ray.exceptions import NodeDiedError, ObjectLostError, OwnerDiedError

    from raysegment.runtime import describe_failure

    ref = "ab" * 14
    assert describe_failure(OwnerDiedError(ref, None, "")) == (
        "Ray lost an object (OwnerDiedError): The object's owner has exited")
    assert describe_failure(ObjectLostError(ref, None, "")) == (
        f"Ray lost an object (ObjectLostError): All copies of {ref} have been lost due to node failure")
    assert describe_failure(NodeDiedError("node 1.2.3.4 has been marked dead\nheartbeats missed")) == (
        "a Ray node died: node 1.2.3.4 has been marked dead")
    # Anything else keeps its first line, which raysegment's own errors make the message.
    assert describe_failure(ValueError("unknown model 'nope'\ninstalled: unet")) == "unknown model 'nope'"
    assert describe_failure(KeyboardInterrupt()) == "KeyboardInterrupt"
