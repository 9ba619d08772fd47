"""The embedded Ray ends with its driver: nothing of its session outlives a SIGKILLed driver.

Before raysegment/reaper.py, a SIGKILLed driver left the raylet's ``ray::DashboardAgent``
and ``ray::RuntimeEnvAgent`` running for about a minute, deaf to SIGTERM. Each driver
here is a real process with its own ``RAY_TMPDIR``, so its session's processes are
exactly those that name that folder or hold a file under it, found through /proc
independently of how the reaper finds them; and another Ray running meanwhile must be
left alone.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
CLEANUP_S = 30.0  # the agents alone used to live ~60 s after the driver

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the reaper reads /proc: Linux only")

#: Starts the embedded Ray as the CLI does, runs a task (so a worker exists), prints its pid;
#: then answers each stdin line with a task's result, and exits normally when stdin closes.
DRIVER = textwrap.dedent("""
    import json, os, sys
    import ray
    from raysegment.runtime import ensure_ray

    assert ensure_ray(num_cpus=1)
    square = ray.remote(lambda x: x * x)
    print(json.dumps({"pid": os.getpid(), "square": ray.get(square.remote(3))}), flush=True)
    for line in sys.stdin:
        print(json.dumps({"square": ray.get(square.remote(int(line)))}), flush=True)
""")


def _env(tmp: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAYSEGMENT_DEBUG")}
    return env | {"RAY_TMPDIR": tmp, "RAYSEGMENT_PROGRESS": "0"}


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return b""


def _start_time(pid: int) -> str | None:
    """The start time of a live process (None when gone or a zombie): tells a reused pid apart."""
    text = _read(f"/proc/{pid}/stat").decode(errors="replace")
    fields = text[text.rfind(")") + 2:].split()
    return fields[19] if fields and fields[0] not in "ZX" else None


def _name(pid: int) -> str:
    first = _read(f"/proc/{pid}/cmdline").split(b"\0")[0].decode(errors="replace")
    return first.strip() if first.startswith("ray::") else os.path.basename(first)


def ray_processes(tmp: str) -> dict[tuple[int, str], str]:
    """Live processes that name ``tmp`` on their command line or hold a file under it:
    (pid, start time) -> name."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        pid = int(entry)
        start = _start_time(pid)
        if start is None:
            continue
        inside = tmp.encode() in _read(f"/proc/{pid}/cmdline")
        if not inside:
            try:
                fds = os.listdir(f"/proc/{pid}/fd")
            except OSError:
                fds = []
            for fd in fds:
                try:
                    if os.readlink(f"/proc/{pid}/fd/{fd}").startswith(tmp + "/"):
                        inside = True
                        break
                except OSError:
                    continue
        if inside:
            found[(pid, start)] = _name(pid)
    return found


def wait_until_gone(tmp: str, timeout: float = CLEANUP_S) -> float:
    """Seconds until no process of ``tmp``'s Ray remains; fails naming the survivors."""
    t0 = time.monotonic()
    while (left := ray_processes(tmp)) and time.monotonic() - t0 < timeout:
        time.sleep(0.2)
    assert not left, f"still running {timeout:.0f} s after the driver ended: {sorted(left.values())}"
    return time.monotonic() - t0


def _json_line(proc: subprocess.Popen, timeout: float = 180) -> dict:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0 and select.select([proc.stdout], [], [], left)[0]:
        line = proc.stdout.readline()
        if not line:
            break
        if line.startswith("{"):
            return json.loads(line)
    pytest.fail(f"the driver printed no JSON line (rc={proc.poll()})")


@pytest.fixture
def ray_tmp() -> Iterator[Callable[[], str]]:
    """Short temp folders for RAY_TMPDIR (Ray's socket paths live under them), removed afterwards."""
    made: list[str] = []

    def make() -> str:
        made.append(tempfile.mkdtemp(prefix="rsorph"))
        return made[-1]

    yield make
    for tmp in made:
        for (pid, _start), _name_ in ray_processes(tmp).items():  # never leave ours behind, whatever failed
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        shutil.rmtree(tmp, ignore_errors=True)


def _assert_fixture_ray_alive() -> None:
    """The session's own Ray (tests/conftest.py ``ray_local``), when running here, still works."""
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        assert ray.get(ray.put("alive")) == "alive"


def test_a_killed_driver_leaves_no_ray_process_and_spares_another_ray(ray_tmp: Callable[[], str]) -> None:
    killed_tmp, other_tmp = ray_tmp(), ray_tmp()
    drivers = [subprocess.Popen([sys.executable, "-c", DRIVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True, cwd=ROOT, env=_env(tmp))
               for tmp in (killed_tmp, other_tmp)]
    killed, other = drivers
    try:
        assert _json_line(killed)["square"] == 9 and _json_line(other)["square"] == 9
        before = ray_processes(killed_tmp)
        names = set(before.values())
        # The ones Ray itself never ended with a killed driver, and the core it does.
        assert {"ray::DashboardAgent", "ray::RuntimeEnvAgent", "raylet", "gcs_server"} <= names, names
        bystanders = ray_processes(other_tmp)
        assert "raylet" in bystanders.values()

        killed.send_signal(signal.SIGKILL)
        killed.wait(timeout=30)
        took = wait_until_gone(killed_tmp)
        print(f"a SIGKILLed driver's Ray was gone {took:.1f} s later")

        # Another Ray on the machine, with its own reaper watching, is untouched and still works.
        assert [(pid, start) for pid, start in bystanders if _start_time(pid) != start] == []
        assert other.stdin is not None
        other.stdin.write("4\n")
        other.stdin.flush()
        assert _json_line(other, timeout=60)["square"] == 16
        _assert_fixture_ray_alive()

        other.stdin.close()  # a normal exit: ray.shutdown() at exit, and the reaper leaves with it
        assert other.wait(timeout=60) == 0
        wait_until_gone(other_tmp)
    finally:
        for proc in drivers:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)


def _images(folder: Path, count: int) -> None:
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(count):
        Image.fromarray(rng.integers(0, 255, (96, 96), dtype=np.uint8)).save(folder / f"img{i:03d}.png")


def _infer(images: Path, out: Path, tmp: str, *extra: str) -> subprocess.Popen:
    args = ["infer", str(images), str(out), "--model", "unet", "--param", "depth=2", "--param", "base_channels=4",
            "--shard-size", "1", "--batch-size", "1", *extra]
    return subprocess.Popen([sys.executable, "-m", "raysegment.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT, env=_env(tmp))


@pytest.mark.slow
def test_a_killed_infer_leaves_no_ray_process_and_resume_finishes_it(ray_tmp: Callable[[], str], tmp_path: Path) -> None:
    """The issue's fault: ``raysegment infer`` SIGKILLed mid-run, its Ray checked gone, then ``--resume``."""
    images, out, count = tmp_path / "in", tmp_path / "out", 40
    _images(images, count)
    tmp = ray_tmp()
    run = _infer(images, out, tmp)
    try:
        deadline = time.monotonic() + 240
        while not list(out.glob("part-*.parquet")) and run.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert run.poll() is None, f"the run ended before it could be killed: {run.communicate()[1][-2000:]}"
        assert list(out.glob("part-*.parquet")), "no shard was committed within 240 s"
        assert {"ray::DashboardAgent", "ray::RuntimeEnvAgent"} <= set(ray_processes(tmp).values())
        run.send_signal(signal.SIGKILL)
        run.communicate(timeout=30)
        committed = len(list(out.glob("part-*.parquet")))
        assert committed < count and not (out / "_SUCCESS").exists(), "the kill came after the run finished"
        took = wait_until_gone(tmp)
        print(f"a SIGKILLed raysegment infer's Ray was gone {took:.1f} s later ({committed}/{count} shards done)")
    finally:
        if run.poll() is None:
            run.kill()
            run.wait(timeout=30)

    resume_tmp = ray_tmp()
    resumed = _infer(images, out, resume_tmp, "--resume")
    _, stderr = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, stderr[-3000:]
    wait_until_gone(resume_tmp)
    df = pd.read_parquet(out)
    assert len(df) == count and df["uri"].is_unique and df["index"].is_unique and (df["status"] == "ok").all()
    assert (out / "_SUCCESS").exists()
