"""The embedded Ray ends with its driver: a small watcher kills what a killed driver leaves.

Why: Ray starts its GCS, raylet, monitor, log monitor and minimal dashboard with
``PR_SET_PDEATHSIG``, so they die with the driver, and idle workers follow within
seconds. The raylet's two agents (``ray::DashboardAgent``, ``ray::RuntimeEnvAgent``)
do not: when the raylet dies they try to tell the already dead GCS (a blocking call
with a 60 s timeout, inside their event loop), so after a SIGKILLed
``raysegment infer`` they live on for about a minute, reparented to init and deaf to
SIGTERM, holding memory and the session's files. ``end_with_driver`` starts one
watcher per embedded Ray (this file, run as a script on the standard library only,
in its own session so a signal to the driver's process group spares it). It waits for
the driver to die (``pidfd``, else its parent pid changing) or for the session's own
processes to be gone (a normal ``ray.shutdown()``), then ends every process left of
that session: SIGTERM, a second's grace, SIGKILL. Then it exits; it never outlives
the Ray it watches by more than that.

A process belongs to the session when it descends from the driver through a process
whose command line names the session's directory (the GCS, the raylet and their
children: agents, workers, anything a task started), as recorded once a second while
the driver lives; or, at the end, when it is a Ray process (``RAY_RAYLET_PID`` in its
environment) holding a file under the session's directory. Another Ray on the machine
(another run, a test's ``ray.cluster_utils.Cluster``) has its own session directory
and processes, so it is never touched. Linux only (it reads ``/proc``); elsewhere
``end_with_driver`` does nothing and returns None.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import threading
import time

__all__ = ["end_with_driver", "session_processes"]

POLL_S = 1.0  # how often the watcher looks again: cheap (one read of /proc/*/stat), and soon enough
GRACE_S = 1.0  # between SIGTERM and SIGKILL


def end_with_driver(session_dir: str) -> subprocess.Popen | None:
    """Start the watcher that ends this Ray session's processes when this process dies.

    Call it right after starting an embedded Ray. None where ``/proc`` is missing
    (not Linux): there the session's processes are left to Ray.
    """
    if not sys.platform.startswith("linux") or not os.path.isdir("/proc/self"):
        return None
    proc = subprocess.Popen([sys.executable, "-I", "-S", os.path.abspath(__file__), str(os.getpid()), session_dir],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, close_fds=True)
    # Reaped as soon as it exits (after a ray.shutdown()), so it is never a zombie of a long-lived driver.
    threading.Thread(target=proc.wait, name="raysegment-reaper-wait", daemon=True).start()
    return proc


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return b""


def _stat(pid: int) -> tuple[int, str, str] | None:
    """(parent pid, state, start time) from /proc/PID/stat; None when the process is gone."""
    text = _read(f"/proc/{pid}/stat").decode(errors="replace")
    if not text:
        return None
    fields = text[text.rfind(")") + 2:].split()  # the name in parentheses may hold spaces
    return int(fields[1]), fields[0], fields[19]


def _table() -> dict[int, tuple[int, str, str]]:
    """Every live (not zombie) process: pid -> (parent pid, state, start time)."""
    table = {}
    for name in os.listdir("/proc"):
        if name.isdigit() and (row := _stat(int(name))) is not None and row[1] not in "ZX":
            table[int(name)] = row
    return table


def _children(table: dict[int, tuple[int, str, str]]) -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    return children


def _names_session(pid: int, session: bytes) -> bool:
    """The command line names the session's directory (or a path in it), not merely a longer name."""
    cmdline = _read(f"/proc/{pid}/cmdline")
    return session + b"/" in cmdline or session + b"\0" in cmdline or cmdline.endswith(session)


def _holds_file_under(pid: int, session: str) -> bool:
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith(session + "/"):
                return True
        except OSError:
            continue
    return False


def session_processes(driver: int, session_dir: str, table: dict[int, tuple[int, str, str]] | None = None,
                      exclude: int | None = None) -> dict[int, str]:
    """The live processes of one Ray session under ``driver``: pid -> start time (to tell a reused pid).

    A descendant of ``driver`` belongs to the session when its command line names
    ``session_dir`` or its parent belongs to it. ``exclude`` (the watcher itself) never does.
    """
    table = _table() if table is None else table
    session = os.path.realpath(session_dir).encode()
    children = _children(table)
    found: dict[int, str] = {}
    stack = [(pid, False) for pid in children.get(driver, ())]
    while stack:
        pid, inside = stack.pop()
        if pid == exclude:
            continue
        inside = inside or _names_session(pid, session)
        if inside:
            found[pid] = table[pid][2]
        stack += [(child, inside) for child in children.get(pid, ())]
    return found


def _late_members(session: str, table: dict[int, tuple[int, str, str]], me: int) -> dict[int, str]:
    """Processes never seen under the driver (born just before it died, or after it was
    reparented) that are surely this session's: a Ray process (``RAY_RAYLET_PID`` in its
    environment) holding a file under this session's directory."""
    found = {}
    for pid, (_, _, start) in table.items():
        if pid != me and b"\0RAY_RAYLET_PID=" in b"\0" + _read(f"/proc/{pid}/environ") \
                and _holds_file_under(pid, session):
            found[pid] = start
    return found


def _descendants(roots: dict[int, str], table: dict[int, tuple[int, str, str]], me: int) -> dict[int, str]:
    children = _children(table)
    found: dict[int, str] = {}
    stack = [child for pid in roots for child in children.get(pid, ())]
    while stack:
        pid = stack.pop()
        if pid != me and pid not in found:
            found[pid] = table[pid][2]
            stack += children.get(pid, ())
    return found


def _alive(members: dict[int, str]) -> dict[int, str]:
    out = {}
    for pid, start in members.items():
        row = _stat(pid)
        if row is not None and row[1] not in "ZX" and row[2] == start:
            out[pid] = start
    return out


def _signal_all(members: dict[int, str], sig: int) -> None:
    for pid in _alive(members):
        try:
            os.kill(pid, sig)
        except OSError:  # gone meanwhile, or not ours to signal
            pass


def _driver_gone(driver: int, pidfd: int | None, timeout: float) -> bool:
    """Wait up to ``timeout`` for the driver to die; True once it has."""
    if pidfd is not None:
        return bool(select.select([pidfd], [], [], timeout)[0])
    if os.getppid() != driver:
        return True
    time.sleep(timeout)  # no pidfd (Linux < 5.3): a dead parent shows as a new parent pid
    return os.getppid() != driver


def _watch(driver: int, session_dir: str) -> None:
    me = os.getpid()
    session = os.path.realpath(session_dir)
    try:
        pidfd = os.pidfd_open(driver) if os.getppid() == driver else None
    except (AttributeError, OSError):
        pidfd = None
    members: dict[int, str] = {}
    while os.getppid() == driver:
        table = _table()
        members = _alive({**members, **session_processes(driver, session, table, exclude=me)})
        core = [pid for pid in members if table.get(pid, (0,))[0] == driver]
        if not core or _driver_gone(driver, pidfd, POLL_S):
            break  # the session was shut down (only stragglers may be left), or the driver died
    table = _table()
    members = {**members, **_late_members(session, table, me)}
    members.update(_descendants(members, table, me))  # and whatever they started, not seen yet
    _signal_all(members, signal.SIGTERM)
    deadline = time.monotonic() + GRACE_S
    while _alive(members) and time.monotonic() < deadline:
        time.sleep(0.05)
    _signal_all(members, signal.SIGKILL)


if __name__ == "__main__":
    _watch(int(sys.argv[1]), sys.argv[2])
