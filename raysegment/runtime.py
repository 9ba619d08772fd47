"""Starting or joining Ray, sizing the predictor pool, and saying in one line why a Ray job failed.

raysegment never schedules anything itself: it starts an embedded local Ray
when none is given, joins ``--address`` otherwise, and asks Ray for actors
with the CPUs/GPUs they need.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import sys
from typing import Any

from raysegment.errors import own_error_line
from raysegment.ray_logs import quiet_ray_logs
from raysegment.reaper import end_with_driver

__all__ = ["ensure_ray", "describe_failure", "describe_stall", "StalledRunError", "ActorPlan", "parse_actors",
           "plan_actors", "cluster_resources"]

log = logging.getLogger("raysegment")


def ensure_ray(address: str | None = None, *, num_cpus: int | None = None) -> bool:
    """Connect to Ray; returns True when this call started it (so the caller may shut it down).

    An already-initialised Ray (a notebook, a test fixture, a Ray job) is reused.
    ``address=None`` (or ``"local"``) with no ``RAY_ADDRESS`` always starts a
    fresh embedded Ray (``ray.init(address="local")``): a plain ``ray.init()``
    would join whatever cluster this machine recorded last (``ray start --head``
    or a ``ray.cluster_utils.Cluster`` write ``ray_current_cluster`` in Ray's
    temp dir), and the run would compete for, and die with, someone else's
    cluster. ``"auto"`` joins that recorded cluster on purpose; any other
    address is joined as given.
    """
    import ray

    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": True}
    address = address or os.environ.get("RAY_ADDRESS") or None
    local = address in (None, "local")
    if local:
        # "local" also keeps ray.init from reading RAY_ADDRESS or the recorded cluster itself.
        kwargs.update(address="local", include_dashboard=False, num_cpus=num_cpus)
    else:
        kwargs["address"] = address
    quiet = quiet_ray_logs()  # Ray's known-harmless notices go to a log file, from the start on
    try:
        context = ray.init(**kwargs)
    except ConnectionError as exc:
        what = "cannot start a local Ray" if local else f"cannot join Ray cluster at {address!r}"
        raise ConnectionError(f"{what}: {_first_line(str(exc))}") from None
    if local:  # a SIGKILLed driver would leave Ray's agents running for a minute (raysegment/reaper.py)
        end_with_driver(context.address_info["session_dir"])
    quiet.attach()
    log.info("Ray's known-harmless notices are written to %s", quiet.path)
    _quiet_ray_data()
    return True


# -- one line per failure -----------------------------------------------------------------
# Ray's exceptions carry multi-line dumps (remote tracebacks, tab-indented actor fields,
# troubleshooting essays); their first line is often only a header such as
# "ray::f() (pid=..., ip=...)". The CLI prints one line, so these are read for what
# failed and the root cause. RAYSEGMENT_DEBUG=1 still shows the whole exception.

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_HEADER = re.compile(r"ray::(?P<name>.+?)\(\)")
_CHAIN = re.compile(r"\n\s*(?:The above exception was the direct cause of the following exception:"
                    r"|During handling of the above exception, another exception occurred:)\s*\n")


def _first_line(text: str) -> str:
    lines = [line.strip() for line in _ANSI.sub("", text).splitlines() if line.strip()]
    return lines[0] if lines else ""


def _first_sentence(text: str) -> str:
    line = _first_line(text)
    head, sep, _ = line.partition(". ")
    return head if sep else line.rstrip(".")


def _plain(exc: BaseException) -> str:
    """``Type: first line``: the remote cause's type matters (KeyError 'x' says little alone)."""
    text = _first_line(str(exc))
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _cause(exc: BaseException) -> str:
    """A remote cause: Ray's own errors described, a user's exception as ``Type: line``."""
    return _describe(exc) or _plain(exc)


def _remote_name(text: str) -> str | None:
    """The task or actor method from a ``ray::NAME()`` header, e.g. ``ReadRange->MapBatches(udf)``."""
    match = _HEADER.search(_ANSI.sub("", text))
    return match.group("name") if match else None


def _root_cause_line(traceback_text: str) -> str | None:
    """The exception line of a formatted remote traceback, skipping Ray's own wrappers.

    Chained tracebacks are blocks; the outermost block that is not a
    ``ray.exceptions.*`` wrapper (Ray Data's ``UserCodeException``) is the one the
    user's code raised. Within a block it is the first line after the frames.
    """
    found = None
    for block in _CHAIN.split(_ANSI.sub("", traceback_text)):
        lines = [line.rstrip() for line in block.splitlines() if line.strip()]
        frames = [i for i, line in enumerate(lines) if line.startswith("  File ")]
        end = frames[-1] + 1 if frames else 0
        while frames and end < len(lines) and lines[end].startswith("    "):  # the frame's source and carets
            end += 1
        after = [line for line in lines[end:]
                 if not line.startswith(("ray::", "Traceback (", "The actor died because", " "))]
        if after and not after[0].startswith("ray.exceptions."):
            found = after[0]
        elif after and found is None:
            found = after[0]
    return found


def _task_error(exc: Any) -> str:
    """``RayTaskError`` (or its ``RayTaskError(ValueError)`` dual): the task's name and its cause."""
    import ray.exceptions as rx

    text = str(exc)
    name = _remote_name(text) or "a Ray task"
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException) and not isinstance(cause, rx.UserCodeException):
        reason = _cause(cause)
    else:  # Ray Data wraps the user's exception; only its traceback text survives
        reason = own_error_line(_root_cause_line(getattr(exc, "traceback_str", "") or text) or _first_line(text))
    return f"Ray task {name} failed: {reason}"


def _actor_error(exc: Any) -> str:
    """An actor that raised in ``__init__``, or whose process died (at start-up or later)."""
    text = _ANSI.sub("", str(exc))
    if getattr(exc, "actor_init_failed", False):
        name = (_remote_name(text) or "").removesuffix(".__init__") or "?"
        reason = _root_cause_line(text) or _first_line(text)
        return f"Ray actor {name} failed to start: {reason}"
    lines = text.splitlines()
    fields = dict(line.strip().partition(": ")[::2] for line in lines if line.startswith("\t"))
    notes = [line.strip() for line in lines[1:] if line.strip() and not line.startswith("\t")]
    if "class_name" not in fields or not notes:
        return _first_line(text) or type(exc).__name__
    when = " before it started" if any(n.startswith("The actor never ran") for n in notes) else ""
    detail = notes[0]
    reason = _first_sentence(detail).removeprefix("The actor is dead because ")
    if "Worker exit detail:" in detail:
        exit_detail = detail.split("Worker exit detail:", 1)[1].split(" Some common causes", 1)[0].strip()
        reason = f"{reason} ({exit_detail.rstrip('.')})"
    pid = f" (pid {fields['pid']})" if fields.get("pid") else ""
    return f"Ray actor {fields['class_name']}{pid} died{when}: {reason}"


def _object_error(exc: Any) -> str:
    """ObjectLostError and kin: the base text names the object; the paragraph after it says why."""
    text = _ANSI.sub("", str(exc))
    _, _, why = text.partition("\n\n")
    return f"Ray lost an object ({type(exc).__name__}): {_first_sentence(why or text)}"


def _training_error(exc: Any) -> str | None:
    """Ray Train's TrainingFailedError: name the failing rank (or the controller) and its cause."""
    failures = getattr(exc, "worker_failures", None)
    if isinstance(failures, dict) and failures:
        rank = min(failures)
        more = f" (and {len(failures) - 1} more worker(s))" if len(failures) > 1 else ""
        return f"training failed on worker rank {rank}{more}: {_cause(failures[rank])}"
    controller = getattr(exc, "controller_failure", None)
    if isinstance(controller, BaseException):
        return f"training controller failed: {_cause(controller)}"
    if isinstance(exc.__cause__, BaseException):  # Ray Train v1 chains the real error
        return f"training failed: {_cause(exc.__cause__)}"
    return None


def describe_failure(exc: BaseException) -> str:
    """One line naming what failed and why, for the CLI's ``error: ...`` line.

    Ray's exceptions are read for the task/actor/object and the root cause (a
    remote ``ValueError``'s own line, not the ``ray::f() (pid=...)`` header);
    anything else keeps its first line, which raysegment's own errors make the
    message. Never raises.
    """
    try:
        line = _describe(exc)
    except Exception:  # a malformed message must not hide the error it describes
        line = None
    return _ANSI.sub("", line or _first_line(str(exc)) or type(exc).__name__)


class StalledRunError(RuntimeError):
    """No stage of a run made progress for its stall timeout; ``--resume`` finishes what is left."""


_STAGE = re.compile(r"^\s*-\s*(?P<name>.+?): (?P<active>\d+) active task\(s\), (?P<done>\d+) finished", re.M)


def describe_stall(exc: BaseException, timeout: float, cpus_left: float | None = None) -> str | None:
    """One line for Ray Data's no-progress guard (``ExecutionTimeoutError``, possibly wrapped),
    naming the stage that holds the run up: the first one whose tasks run but never finish (a
    hung read, a stuck model), else, when no task runs at all, the first one (it cannot get a
    CPU or GPU: the deadlock of a pool that took every core). None for any other failure.

    ``cpus_left``: the cluster's CPUs now, less what the predictor pool asks for. Under one,
    the pool can hold every CPU (a node was lost and its predictor restarted elsewhere), so a
    task stage's "running" task is one waiting for a CPU, and the line says so."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if type(exc).__name__ == "ExecutionTimeoutError":
            break
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    if exc is None or type(exc).__name__ != "ExecutionTimeoutError":
        return None
    stages = [(m["name"].strip(), int(m["active"])) for m in _STAGE.finditer(_ANSI.sub("", str(exc)))]
    waiting = [name for name, active in stages if active == 0]
    busy = [f"{name} ({active} task(s) running)" for name, active in stages if active]
    if cpus_left is not None and cpus_left < 1 and stages:
        first = next((name for name, _ in stages if "Predictor" not in name), stages[0][0])
        what = (f"stage {first} has no CPU to run on: the predictor actors ask for all the CPUs the cluster has "
                f"now ({cpus_left:g} left beside them; was a node lost?)")
    elif busy:  # the most upstream stage whose tasks run but never finish (a hung read, a stuck model)
        what = f"stage {busy[0]} did not finish a task"
    elif waiting:  # nothing runs at all: the first stage could not get a CPU or GPU
        what = f"stage {waiting[0]} got no task running (no free CPU or GPU for it)"
    else:
        what = "no stage reported progress"
    advice = ("Rerun with --resume: on the cluster as it is now the pool leaves a CPU free" if cpus_left is not None
              and cpus_left < 1 and stages else "Rerun with --resume to finish the rest")
    return (f"no progress for {timeout:.0f} s (--stall-timeout): {what}; still running: "
            f"{', '.join(name for name, _ in stages) or 'none'}. {advice}")


def _describe(exc: BaseException) -> str | None:
    rx = sys.modules.get("ray.exceptions")
    train = sys.modules.get("ray.train")
    if train is not None and isinstance(exc, getattr(train, "TrainingFailedError", ())):
        return _training_error(exc)
    health = getattr(exc, "health_check_failure", None)  # Ray Train: a worker failed its health check
    if isinstance(health, BaseException):
        return f"{_first_line(str(exc))}: {_cause(health)}"
    if rx is None or not isinstance(exc, rx.RayError):
        return None
    if isinstance(exc, rx.RayTaskError):
        return _task_error(exc)
    if isinstance(exc, rx.RayActorError):
        return _actor_error(exc)
    if isinstance(exc, rx.ObjectLostError):
        return _object_error(exc)
    if isinstance(exc, rx.NodeDiedError):
        return f"a Ray node died: {_first_line(str(exc))}"
    return _first_line(str(exc))


def _quiet_ray_data() -> None:
    """Keep Ray Data's per-operator chatter out of the CLI; its progress bars stay (off while
    raysegment's own bar shows, see raysegment/progress.py)."""
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    # Off a terminal Ray Data reports progress as periodic log lines; keep those.
    logging.getLogger("ray.data._internal.progress.logging_progress").setLevel(logging.INFO)


def cluster_resources() -> dict[str, float]:
    """What the connected cluster has, so the actor plan fits it."""
    import ray

    return dict(ray.cluster_resources())


def free_resources() -> dict[str, float]:
    """What the connected cluster has free now: other jobs' (or an earlier failed run's) actors
    hold the rest, so the pool must not count on it."""
    import ray

    return dict(ray.available_resources())


@dataclasses.dataclass(frozen=True)
class ActorPlan:
    """How many predictor actors to run, and what each asks Ray for."""

    min_size: int
    max_size: int
    num_cpus: float
    num_gpus: float
    threads: int | None  # torch intra-op threads per actor on CPU
    #: The cluster's CPUs left once the pool is at its largest: what the CPU stages can reserve.
    spare_cpus: float = 0.0

    def reserves(self, cpu_stages: int) -> bool:
        """Whether Ray Data can reserve one task's CPU for each of ``cpu_stages`` stages beside the pool.

        Ray Data reserves at least one task per stage, upstream stages first: a stage left
        without a reservation waits until the stages before it have finished, so its work
        would pile up and land only at the end.
        """
        return self.spare_cpus >= cpu_stages

    def describe(self) -> str:
        pool = f"{self.min_size}" if self.min_size == self.max_size else f"{self.min_size}..{self.max_size}"
        device = f"{self.num_gpus:g} GPU" if self.num_gpus else f"CPU, {self.threads or 'default'} threads"
        return f"{pool} predictor actor(s), each {device}"


def parse_actors(text: str | int | None) -> tuple[int, int] | None:
    """``"4"`` -> (4, 4); ``"1:8"`` -> (1, 8); None -> decide from the cluster."""
    if text is None or text == "":
        return None
    if isinstance(text, int):
        lo = hi = text
    else:
        lo_s, sep, hi_s = str(text).partition(":")
        try:
            lo = int(lo_s)
            hi = int(hi_s) if sep else lo
        except ValueError:
            raise ValueError(f"--actors expects N or MIN:MAX, got {text!r}") from None
    if lo < 1 or hi < lo:
        raise ValueError(f"--actors expects 1 <= MIN <= MAX, got {text!r}")
    return lo, hi


def plan_actors(
    actors: tuple[int, int] | None,
    gpus_per_actor: float | None,
    resources: dict[str, float],
    threads: int | None = None,
    joined: bool = False,
    free: dict[str, float] | None = None,
) -> ActorPlan:
    """Size the pool from the cluster: one actor per GPU share, or CPU actors without GPUs.

    On CPU the actor reserves one CPU (leaving the rest to decode/encode
    tasks) but runs torch on its share of the node, so the forward pass is not
    throttled to a single thread while decoding overlaps it. The pool never reserves
    the cluster's last free CPU (``free``: what is free now; others may hold the rest, such
    as the actor of a run that failed in this Ray session, which Ray Data lets linger for
    lineage): where whole CPUs per actor would take it, the actors ask for none
    (they still run torch on their share of the cores), so the read and decode tasks always
    have one to run on (``--actors 2`` on two CPUs would otherwise wait forever).
    """
    gpus = float(resources.get("GPU", 0.0))
    cpus = max(1, int(resources.get("CPU", 1)))
    free_cpus = min(cpus, int((free if free is not None else resources).get("CPU", cpus)))
    if gpus_per_actor is not None and gpus_per_actor < 0:
        raise ValueError("--gpus-per-actor must be >= 0")
    use_gpu = (gpus > 0 and gpus_per_actor != 0) or (joined and bool(gpus_per_actor))
    if use_gpu:
        per = gpus_per_actor or 1.0
        if gpus == 0:  # an autoscaling cluster may add GPU workers on demand
            log.warning("the cluster shows no GPU yet; waiting for its autoscaler to add GPU workers")
            gpus = per * (actors[1] if actors else 1)
        if per > gpus:
            raise ValueError(f"--gpus-per-actor {per:g} exceeds the {gpus:g} GPU(s) in the cluster")
        lo, hi = actors or (1, max(1, int(gpus // per)))
        return ActorPlan(lo, hi, num_cpus=_cpus_per_actor(free_cpus, hi), num_gpus=per, threads=threads,
                         spare_cpus=free_cpus - hi * _cpus_per_actor(free_cpus, hi))
    if gpus_per_actor:
        raise ValueError(f"--gpus-per-actor {gpus_per_actor:g} asked for, but the cluster has no GPU")
    lo, hi = actors or (1, 1)
    if hi > cpus:
        raise ValueError(f"--actors {lo}:{hi} exceeds the {cpus} CPU(s) in the cluster")
    per_actor = _cpus_per_actor(free_cpus, hi)
    if per_actor < 1:
        log.info("%d CPU actor(s) with %d CPU(s) free: they reserve none, so the CPUs stay free for decoding",
                 hi, free_cpus)
    return ActorPlan(lo, hi, num_cpus=per_actor, num_gpus=0.0, threads=threads or max(1, cpus // hi),
                     spare_cpus=free_cpus - hi * per_actor)


def _cpus_per_actor(cpus: int, actors: int) -> float:
    """One CPU per actor, or none where that would take the last one. Not a fraction: actors of
    half a CPU on two 1-CPU nodes would leave half a CPU on each, and no task fits in that."""
    return 1.0 if cpus - actors >= 1 else 0.0
