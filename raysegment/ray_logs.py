"""Ray's known-harmless messages go to a log file, not the terminal; every other line stays.

A raysegment run on an embedded Ray used to open with a screen of Ray's notices that ask
nothing of the user (a notice about token authentication, "does not have any available
CPUs ... will hang" while our own predictor actor holds the CPU, a deprecation inside Ray
Train, blank lines from workers), and a real warning drowned among them. The list of
known-harmless messages is :data:`HARMLESS`, one pattern per notice with the reason it is
harmless; anything that matches none of them is shown as before.

:func:`quiet_ray_logs` filters the three ways Ray's messages reach the driver's terminal:

- records of the ``ray`` loggers (and the root logger), by a filter on their console
  handlers (``ray.data`` and ``ray`` each have their own);
- Python warnings (``warnings.showwarning``);
- worker and actor output forwarded to the driver (``log_to_driver``), by wrapping Ray's
  printer of those lines; blank worker lines are dropped.

Filtered messages are written to ``<Ray session dir>/logs/raysegment-quiet.log`` (for the
embedded Ray e.g. ``/tmp/ray/session_latest/logs/raysegment-quiet.log``), or to the path in
``RAYSEGMENT_QUIET_LOG``. Not filterable: lines Ray's C++ core writes straight to the
process's stderr, such as the driver's "has constructor arguments in the object store and
max_restarts > 0" (ray-project/ray#57733); the same line from a worker is filtered.

The worker-line hook uses Ray's internal dispatcher of forwarded lines
(``ray._private.ray_logging``); where a Ray version lacks it, worker lines are shown
unfiltered, never lost.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import tempfile
import warnings
from collections.abc import Callable
from typing import Any

__all__ = ["HARMLESS", "LOG_ENV", "QuietRayLogs", "is_harmless", "quiet_ray_logs"]

#: Overrides where filtered messages are written.
LOG_ENV = "RAYSEGMENT_QUIET_LOG"
LOG_NAME = "raysegment-quiet.log"
PRINTER = "ray_print_logs"  # the name Ray registers its printer of worker lines under
BUFFERED = 1000  # records kept in memory until the log file is known (Ray not started yet)

#: (why it is harmless, pattern). Matched anywhere in a message or a forwarded worker line.
HARMLESS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("Ray Data sees no free CPU while our predictor actors hold theirs; the job does not hang",
     re.compile(r"does not have any available CPUs")),
    ("Ray Data's actor pool keeps its constructor arguments in the object store (ray-project/ray#57733)",
     re.compile(r"has constructor arguments in the object store and max_restarts > 0")),
    ("Ray Train's placement-group cleaner retries a busy state API by itself",
     re.compile(r"Failed to query Ray Train Controller actor state")),
    ("a deprecation inside Ray Train's own use of Ray Data; raysegment sets no exclude_resources",
     re.compile(r"ExecutionOptions\.exclude_resources` is deprecated|^\s*self\.exclude_resources = exclude_resources\s*$")),
    ("the embedded Ray made its own token; nothing to do",
     re.compile(r"Token authentication is enabled for this Ray cluster")),
    ("raysegment's own bar replaces Ray Data's while it shows (raysegment/progress.py)",
     re.compile(r"Progress bars disabled\. To enable, set")),
    ("Ray Data's INFO lines for each small dataset a training worker reads (one per epoch and per "
     "validation); the epoch line says what matters",
     re.compile(r"Registered dataset logger for dataset|Starting execution of Dataset|Execution plan of Dataset"
                r"|Dataset \S+ execution finished in")),
    ("Ray Train's INFO lines for each report and its checkpoint; the run folder and the epoch line say it",
     re.compile(r"Checkpoint successfully created at: |Reporting training result \d+|Moving model to device"
                r"|Wrapping provided model in DistributedDataParallel")),
)


def is_harmless(text: str) -> bool:
    """Whether ``text`` (a log message or a worker line) is one of Ray's known-harmless notices."""
    return any(pattern.search(text) for _, pattern in HARMLESS)


def session_log_path() -> str:
    """Where filtered messages go: ``RAYSEGMENT_QUIET_LOG``, else the Ray session's logs folder."""
    if os.environ.get(LOG_ENV):
        return os.environ[LOG_ENV]
    node = getattr(sys.modules.get("ray._private.worker"), "_global_node", None)
    session = node.get_session_dir_path() if node is not None else None
    folder = os.path.join(session, "logs") if session else os.path.join(tempfile.gettempdir(), "raysegment")
    return os.path.join(folder, LOG_NAME)


class _QuietFile(logging.Handler):
    """The log file of filtered messages; records wait in memory until its path is known."""

    def __init__(self, path: str | None = None) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        self.path: str | None = None
        self._file: logging.FileHandler | None = None
        self._waiting: list[logging.LogRecord] = []
        if path:
            self.open(path)

    def open(self, path: str) -> None:
        if self.path == path:
            return
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        if self._file is not None:
            self._file.close()
        self.path = path
        self._file = logging.FileHandler(path, delay=True, encoding="utf-8")
        self._file.setFormatter(self.formatter)
        waiting, self._waiting = self._waiting, []
        for record in waiting:
            self._file.handle(record)

    def emit(self, record: logging.LogRecord) -> None:
        if self._file is not None:
            self._file.handle(record)
        elif len(self._waiting) < BUFFERED:
            self._waiting.append(record)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        super().close()


class QuietFilter(logging.Filter):
    """A console handler's filter: a harmless record goes to ``sink`` and not to the console."""

    def __init__(self, sink: logging.Handler) -> None:
        super().__init__("raysegment.quiet")
        self.sink = sink

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            text = record.getMessage()
        except Exception:  # a malformed record is the console's to show
            return True
        if is_harmless(text):
            self.sink.handle(record)
            return False
        return True


class QuietRayLogs:
    """The filters :func:`quiet_ray_logs` installed; :meth:`close` takes every one of them back."""

    def __init__(self, path: str | None = None) -> None:
        self.sink = _QuietFile(path)
        self.filter = QuietFilter(self.sink)
        self._filtered: list[logging.Handler] = []
        self._showwarning: Callable[..., Any] | None = None
        self._printer: Callable[[dict[str, Any]], None] | None = None

    @property
    def path(self) -> str | None:
        """The log file of filtered messages, once known."""
        return self.sink.path

    def filter_handlers(self) -> None:
        """Put the filter on every console handler of the ``ray`` loggers and the root logger."""
        loggers = [logging.getLogger(), logging.getLogger("ray")]
        loggers += [logger for name, logger in sorted(list(logging.Logger.manager.loggerDict.items()))
                    if name.startswith("ray.") and isinstance(logger, logging.Logger)]
        for logger in loggers:
            for handler in logger.handlers:
                console = isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler)
                if console and self.filter not in handler.filters:
                    handler.addFilter(self.filter)
                    self._filtered.append(handler)

    def filter_warnings(self) -> None:
        if self._showwarning is not None:
            return
        previous = self._showwarning = warnings.showwarning

        def showwarning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                        file: Any = None, line: str | None = None) -> None:
            text = warnings.formatwarning(message, category, filename, lineno, line)
            if is_harmless(text):
                self.sink.handle(logging.makeLogRecord({"name": "py.warnings", "levelno": logging.WARNING,
                                                        "levelname": "WARNING", "msg": text.rstrip()}))
                return
            previous(message, category, filename, lineno, file, line)

        warnings.showwarning = showwarning

    def filter_worker_lines(self) -> bool:
        """Wrap Ray's printer of forwarded worker lines; False where this Ray has none to wrap."""
        try:
            from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher
        except ImportError:
            return False
        printer = next((fn for name, fn in list(getattr(dispatcher, "handlers", ())) if name == PRINTER), None)
        if printer is None or getattr(printer, "raysegment_quiet", False):
            return printer is not None
        self._printer = printer

        def quiet_printer(data: dict[str, Any]) -> None:
            lines = data.get("lines") or []
            keep = [line for line in lines if line.strip() and not self._quiet_line(data, line)]
            if len(keep) == len(lines):
                printer(data)
            elif keep:
                printer({**data, "lines": keep})

        quiet_printer.raysegment_quiet = True  # type: ignore[attr-defined]
        dispatcher.remove_handler(PRINTER)
        dispatcher.add_handler(PRINTER, quiet_printer)
        return True

    def _quiet_line(self, data: dict[str, Any], line: str) -> bool:
        if not is_harmless(line):
            return False
        who = data.get("actor_name") or data.get("task_name") or ""
        text = f"({who} pid={data.get('pid')}) {line}" if who else f"(pid={data.get('pid')}) {line}"
        self.sink.handle(logging.makeLogRecord({"name": "ray.worker", "levelno": logging.WARNING,
                                                "levelname": "WARNING", "msg": text}))
        return True

    def attach(self, path: str | None = None) -> None:
        """Once Ray runs: choose the log file (writing what waited), filter new handlers and worker lines.

        An unwritable log file must not fail the job: its notices are then kept from the
        terminal all the same, and that is said once.
        """
        target = path or session_log_path()
        try:
            self.sink.open(target)
        except OSError as exc:
            logging.getLogger("raysegment").warning("cannot write Ray's quiet log %s (%s)", target, exc)
        self.filter_handlers()
        self.filter_worker_lines()

    def close(self) -> None:
        """Remove every filter and hook this installed, and close the log file."""
        global _ACTIVE
        for handler in self._filtered:
            handler.removeFilter(self.filter)
        self._filtered = []
        if self._showwarning is not None:
            warnings.showwarning = self._showwarning
            self._showwarning = None
        if self._printer is not None:
            from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

            if any(name == PRINTER and getattr(fn, "raysegment_quiet", False) for name, fn in dispatcher.handlers):
                dispatcher.remove_handler(PRINTER)
                dispatcher.add_handler(PRINTER, self._printer)
            self._printer = None
        self.sink.close()
        if _ACTIVE is self:
            _ACTIVE = None


_ACTIVE: QuietRayLogs | None = None


def quiet_ray_logs(path: str | None = None) -> QuietRayLogs:
    """Filter Ray's known-harmless messages out of the terminal (see the module docstring).

    Call it before ``ray.init`` (notices of the start itself are caught and kept until
    the log file is known), then :meth:`QuietRayLogs.attach` once Ray runs. Idempotent:
    a second call returns the active installation with any new console handlers filtered.
    """
    global _ACTIVE
    if _ACTIVE is None:
        _ACTIVE = QuietRayLogs(path)
    elif path:
        _ACTIVE.sink.open(path)
    _ACTIVE.filter_handlers()
    _ACTIVE.filter_warnings()
    return _ACTIVE
