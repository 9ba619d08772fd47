"""Starting or joining Ray, and sizing the predictor pool to what the cluster has.

raysegment never schedules anything itself: it starts an embedded local Ray
when none is given, joins ``--address`` otherwise, and asks Ray for actors
with the CPUs/GPUs they need.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

__all__ = ["ensure_ray", "ActorPlan", "parse_actors", "plan_actors", "cluster_resources"]

log = logging.getLogger("raysegment")


def ensure_ray(address: str | None = None, *, num_cpus: int | None = None) -> bool:
    """Connect to Ray; returns True when this call started it (so the caller may shut it down).

    An already-initialised Ray (a notebook, a test fixture, a Ray job) is reused.
    ``address=None`` starts an embedded local Ray unless ``RAY_ADDRESS`` is set;
    ``"auto"`` joins the cluster this machine belongs to.
    """
    import ray

    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": True}
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address:
        kwargs["address"] = address
    else:
        kwargs.update(include_dashboard=False, num_cpus=num_cpus)
    try:
        ray.init(**kwargs)
    except ConnectionError as exc:
        raise ConnectionError(f"cannot join Ray cluster at {address!r}: {str(exc).splitlines()[0]}") from None
    _quiet_ray_data()
    return True


def _quiet_ray_data() -> None:
    """Keep Ray Data's per-operator chatter out of the CLI; its progress bars stay."""
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    # Off a terminal Ray Data reports progress as periodic log lines; keep those.
    logging.getLogger("ray.data._internal.progress.logging_progress").setLevel(logging.INFO)


def cluster_resources() -> dict[str, float]:
    import ray

    return dict(ray.cluster_resources())


@dataclasses.dataclass(frozen=True)
class ActorPlan:
    """How many predictor actors to run, and what each asks Ray for."""

    min_size: int
    max_size: int
    num_cpus: float
    num_gpus: float
    threads: int | None  # torch intra-op threads per actor on CPU

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
) -> ActorPlan:
    """Size the pool from the cluster: one actor per GPU share, or CPU actors without GPUs.

    On CPU the actor reserves one CPU (leaving the rest to decode/encode
    tasks) but runs torch on its share of the node, so the forward pass is not
    throttled to a single thread while decoding overlaps it.
    """
    gpus = float(resources.get("GPU", 0.0))
    cpus = max(1, int(resources.get("CPU", 1)))
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
        return ActorPlan(lo, hi, num_cpus=1.0, num_gpus=per, threads=threads)
    if gpus_per_actor:
        raise ValueError(f"--gpus-per-actor {gpus_per_actor:g} asked for, but the cluster has no GPU")
    lo, hi = actors or (1, 1)
    if hi > cpus:
        raise ValueError(f"--actors {lo}:{hi} exceeds the {cpus} CPU(s) in the cluster")
    return ActorPlan(lo, hi, num_cpus=1.0, num_gpus=0.0, threads=threads or max(1, cpus // hi))
