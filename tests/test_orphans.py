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
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
CLEANUP_S = 30.0  # the agents alone used to live ~60 s after the driver

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the reaper reads /proc: Linux only")

#: Starts the embedded Ray as the CLI does, runs a task (so a worker exists), prints its pid;
#: then answers each stdin line with a task's result ("shutdown": ray.shutdown()), and exits
#: normally when stdin closes.
DRIVER = textwrap.dedent("""
    import json, os, sys
    import ray
    from raysegment.runtime import ensure_ray

    assert ensure_ray(num_cpus=1)
    square = ray.remote(lambda x: x * x)
    print(json.dumps({"pid": os.getpid(), "square": ray.get(square.remote(3))}), flush=True)
    for line in sys.stdin:
        if line.strip() == "shutdown":
            ray.shutdown()
            print(json.dumps({"shutdown": True}), flush=True)
        else:
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


def ray_processes(tmp: str, exclude: int | None = None) -> dict[tuple[int, str], str]:
    """Live processes that name ``tmp`` on their command line or hold a file under it:
    (pid, start time) -> name. ``exclude``: a live driver (it keeps Ray's log files open)."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in (os.getpid(), exclude):
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


def wait_until_gone(tmp: str, timeout: float = CLEANUP_S, exclude: int | None = None) -> float:
    """Seconds until no process of ``tmp``'s Ray remains; fails naming the survivors."""
    t0 = time.monotonic()
    while (left := ray_processes(tmp, exclude)) and time.monotonic() - t0 < timeout:
        time.sleep(0.2)
    assert not left, f"still running {timeout:.0f} s after its Ray ended: " + "; ".join(
        f"{pid} {name} {_read(f'/proc/{pid}/cmdline')[:160]!r}" for (pid, _), name in sorted(left.items()))
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


def _driver(tmp: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", DRIVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, cwd=ROOT, env=_env(tmp))


def _end(*procs: subprocess.Popen) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


def _kill_and_check(driver: subprocess.Popen, tmp: str) -> None:
    """SIGKILL a driver whose Ray is up (agents included) and wait for every process of it to go."""
    names = set(ray_processes(tmp).values())
    # The ones Ray itself never ended with a killed driver, and the core it does.
    assert {"ray::DashboardAgent", "ray::RuntimeEnvAgent", "raylet", "gcs_server"} <= names, names
    driver.send_signal(signal.SIGKILL)
    driver.wait(timeout=30)
    took = wait_until_gone(tmp)
    print(f"a SIGKILLed driver's Ray was gone {took:.1f} s later")


def test_a_killed_driver_leaves_no_ray_process(ray_tmp: Callable[[], str]) -> None:
    tmp = ray_tmp()
    driver = _driver(tmp)
    try:
        assert _json_line(driver)["square"] == 9
        _kill_and_check(driver, tmp)
        _assert_fixture_ray_alive()
    finally:
        _end(driver)


def _reapers(tmp: str) -> list[int]:
    return [pid for pid, _ in ray_processes(tmp) if b"raysegment/reaper.py" in _read(f"/proc/{pid}/cmdline")]


def _zombie_children(pid: int) -> list[int]:
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        text = _read(f"/proc/{entry}/stat").decode(errors="replace")
        fields = text[text.rfind(")") + 2:].split()
        if len(fields) > 1 and fields[0] == "Z" and fields[1] == str(pid):
            found.append(int(entry))
    return found


def test_a_normal_exit_leaves_no_ray_process(ray_tmp: Callable[[], str]) -> None:
    """Ray's atexit shutdown ends its processes, and the reaper (it names the session) leaves with them."""
    tmp = ray_tmp()
    driver = _driver(tmp)
    try:
        assert _json_line(driver)["square"] == 9 and len(_reapers(tmp)) == 1
        assert driver.stdin is not None
        driver.stdin.close()
        assert driver.wait(timeout=60) == 0
        wait_until_gone(tmp)
    finally:
        _end(driver)


def test_after_ray_shutdown_in_a_live_driver_the_reaper_leaves(ray_tmp: Callable[[], str]) -> None:
    """A notebook or a test calls ray.shutdown() and goes on: nothing of that Ray stays, not
    even a zombie of its reaper."""
    tmp = ray_tmp()
    driver = _driver(tmp)
    try:
        pid = _json_line(driver)["pid"]
        assert len(_reapers(tmp)) == 1
        assert driver.stdin is not None
        driver.stdin.write("shutdown\n")
        driver.stdin.flush()
        assert _json_line(driver, timeout=60) == {"shutdown": True}
        wait_until_gone(tmp, exclude=pid)
        deadline = time.monotonic() + 10
        while (zombies := _zombie_children(pid)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not zombies and driver.poll() is None
    finally:
        _end(driver)


@pytest.mark.slow
def test_a_killed_driver_spares_another_ray_on_the_machine(ray_tmp: Callable[[], str]) -> None:
    killed_tmp, other_tmp = ray_tmp(), ray_tmp()
    killed, other = _driver(killed_tmp), _driver(other_tmp)
    try:
        assert _json_line(killed)["square"] == 9 and _json_line(other)["square"] == 9
        bystanders = ray_processes(other_tmp)
        assert {"raylet", "ray::DashboardAgent"} <= set(bystanders.values())
        _kill_and_check(killed, killed_tmp)
        # The other Ray, with its own reaper watching, is untouched and still works.
        assert [(pid, start) for pid, start in bystanders if _start_time(pid) != start] == []
        assert other.stdin is not None
        other.stdin.write("4\n")
        other.stdin.flush()
        assert _json_line(other, timeout=60)["square"] == 16
        _assert_fixture_ray_alive()
    finally:
        _end(killed, other)


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

# The killed `raysegment infer` + `--resume` case (orphans, run id, lease take-over, exactly once)
# is tests/faults/test_kills.py::test_a_sigkilled_driver_is_resumed_exactly_once_under_its_run_id.
