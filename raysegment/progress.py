"""The driver's progress bar: items done, rate and ETA on stderr, for infer, eval, stats and train.

A job of a million items otherwise says nothing between its start and its summary. Every
long loop of a driver counts through one :class:`Progress`, so the bars look alike and are
switched the same way:

- on when stderr is a terminal, off otherwise (a log file or CI gets no ``\\r`` noise);
- ``RAYSEGMENT_PROGRESS=0`` turns it off, ``RAYSEGMENT_PROGRESS=1`` turns it on even off a
  terminal (tests, or a ``tail -f``'d log); ``enabled=`` in code overrides both.

While a bar shows, Ray Data's own progress bars (one per operator, also on stderr) are
turned off, so the two never fight over the terminal's last lines; off a terminal Ray
Data's periodic progress log lines stay. The counts are kept whether or not a bar is
drawn, so a caller can always read ``done``.

A training loop uses it per epoch::

    with progress(total=steps, desc=f"epoch {epoch}", unit="step") as bar:
        for batch in loader:
            ...
            bar.update(1)

This module imports nothing of raysegment and nothing heavy: tqdm is imported when a bar
is drawn, and Ray Data only when it is already loaded.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any, TextIO

__all__ = ["ENV", "Progress", "progress", "progress_enabled", "progress_line"]

#: ``0`` (or ``false``, ``no``, ``off``) turns the bars off; ``1`` (``true``, ``yes``, ``on``) forces them on.
ENV = "RAYSEGMENT_PROGRESS"
_OFF = ("0", "false", "no", "off")
_ON = ("1", "true", "yes", "on")


def progress_enabled(stream: TextIO | None = None) -> bool:
    """Whether a bar shows on ``stream`` (default stderr): ``RAYSEGMENT_PROGRESS``, else a TTY test."""
    value = os.environ.get(ENV, "").strip().lower()
    if value in _OFF:
        return False
    if value in _ON:
        return True
    stream = stream if stream is not None else sys.stderr
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


class Progress:
    """A counter of items done, drawn as a tqdm bar (count, rate, ETA) when enabled.

    ``total`` may be None when unknown (the bar then shows the count and rate, no ETA).
    Use it as a context manager, or call :meth:`close`.
    """

    def __init__(self, total: int | None, desc: str, *, unit: str = "item", enabled: bool | None = None,
                 file: TextIO | None = None) -> None:
        self.total = total
        self.desc = desc
        self.done = 0
        self._file = file
        self.enabled = progress_enabled(file) if enabled is None else bool(enabled)
        self._lock = threading.Lock()
        self._bar: Any = None
        self._ray_data_bars: bool | None = None  # Ray Data's setting while ours shows, to restore
        if self.enabled:
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=desc, unit=unit, file=file if file is not None else sys.stderr,
                             dynamic_ncols=True, smoothing=0.1, leave=True)
            self._ray_data_bars = _set_ray_data_bars(False)

    def update(self, n: int = 1) -> None:
        """Count ``n`` more items done."""
        with self._lock:
            self._advance(self.done + int(n))

    def set(self, done: int) -> None:
        """Set the count of items done (for a count polled from elsewhere); it never goes back."""
        with self._lock:
            self._advance(max(self.done, int(done)))

    def _advance(self, done: int) -> None:
        if self._bar is not None and done != self.done:
            self._bar.update(done - self.done)
        self.done = done

    @contextlib.contextmanager
    def follow(self, count: Callable[[], int], interval: float = 1.0) -> Iterator[Progress]:
        """Poll ``count()`` every ``interval`` seconds in a thread while the block runs, and once at its end.

        For work the driver does not iterate itself (a Ray Data write), whose progress is
        only visible from outside, e.g. the rows committed to the output so far. A failing
        ``count`` leaves the bar where it was: progress must never fail the job. Without a
        bar nobody watches, so there is no thread, only the final poll.
        """
        stop = threading.Event()

        def poll() -> None:
            with contextlib.suppress(Exception):
                self.set(count())

        def loop() -> None:
            while not stop.wait(interval):
                poll()

        thread = threading.Thread(target=loop, name="raysegment-progress", daemon=True) if self.enabled else None
        if thread is not None:
            thread.start()
        try:
            yield self
        finally:
            stop.set()
            if thread is not None:
                thread.join()
        poll()

    def close(self) -> None:
        """Finish the bar (it stays on screen) and give Ray Data its progress bars back."""
        with self._lock:
            if self._bar is not None:
                self._bar.close()
                self._bar = None
            if self._ray_data_bars is not None:
                _set_ray_data_bars(self._ray_data_bars)
                self._ray_data_bars = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def progress(total: int | None, desc: str, *, unit: str = "item", enabled: bool | None = None,
             file: TextIO | None = None) -> Progress:
    """A :class:`Progress` over ``total`` items; see the module docstring for when it shows."""
    return Progress(total, desc, unit=unit, enabled=enabled, file=file)


def _set_ray_data_bars(on: bool) -> bool | None:
    """Set Ray Data's ``DataContext.enable_progress_bars`` if Ray Data is loaded; returns the old value.

    A dataset copies the context when it is created, so a job enters its bar before
    building the dataset.
    """
    if "ray.data" not in sys.modules:
        return None
    from ray.data import DataContext

    context = DataContext.get_current()
    old = bool(context.enable_progress_bars)
    context.enable_progress_bars = on
    return old


def progress_line(desc: str, done: int, total: int | None, elapsed: float, unit: str = "it") -> str:
    """One printed bar (count, rate, ETA) as tqdm draws it, for loops whose stderr is not the user's
    terminal: a Ray Train worker's lines reach the driver one whole line at a time, so rank 0 prints
    a few of these per epoch instead of redrawing one bar."""
    from tqdm import tqdm

    return tqdm.format_meter(int(done), total, float(elapsed), ncols=100, prefix=desc, unit=unit)
