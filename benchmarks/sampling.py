"""Shared by the benchmark scripts: background samplers of Ray worker processes, and waiting
for Ray to go idle between runs."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import ray


class Sampler:
    """A background thread calling ``_sample`` every ``interval`` seconds while in a ``with``."""

    def __init__(self, interval: float) -> None:
        import psutil  # vendored by ray (ray/thirdparty_files): importable once ray is imported

        self.psutil, self.me, self.interval = psutil, psutil.Process(), interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def ray_workers(self) -> Iterator[Any]:
        """Task and actor worker processes (they set a ``ray::`` title); raylet & co. are our children."""
        for proc in self.me.children(recursive=True):
            try:
                cmd = proc.cmdline()
            except (self.psutil.NoSuchProcess, self.psutil.AccessDenied, self.psutil.ZombieProcess):
                continue
            if cmd and cmd[0].startswith("ray::"):
                yield proc

    def _sample(self) -> None:
        raise NotImplementedError

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> Any:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


def wait_for_idle_ray(timeout: float = 60.0) -> None:
    """Let the last run's workers exit (Ray frees them asynchronously) so that runs never overlap."""
    if not ray.is_initialized():
        return
    total, deadline = ray.cluster_resources().get("CPU", 0.0), time.monotonic() + timeout
    while ray.available_resources().get("CPU", 0.0) < total and time.monotonic() < deadline:
        time.sleep(0.2)
