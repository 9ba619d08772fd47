"""The predictor pool's plan (runtime.plan_actors): what each actor asks Ray for, and what it leaves."""

from __future__ import annotations

import pytest

from raysegment.runtime import plan_actors


@pytest.mark.parametrize(("cpus", "actors", "per_actor"), [(8, None, 1.0), (8, (2, 2), 1.0), (3, (2, 2), 1.0),
                                                           (2, (2, 2), 0.0), (2, (1, 2), 0.0), (1, None, 0.0),
                                                           (4, (4, 4), 0.0), (4, (3, 3), 1.0)])
def test_a_cpu_pool_never_reserves_the_last_cpu(cpus: int, actors, per_actor: float) -> None:
    plan = plan_actors(actors, None, {"CPU": float(cpus)})
    assert plan.num_gpus == 0 and plan.num_cpus == pytest.approx(per_actor)
    assert plan.spare_cpus >= 1 and plan.spare_cpus == pytest.approx(cpus - plan.max_size * plan.num_cpus)
    assert plan.threads == max(1, cpus // plan.max_size)  # torch still runs on the actor's share of the node


def test_a_gpu_pool_asks_one_gpu_share_and_leaves_a_cpu() -> None:
    plan = plan_actors(None, None, {"CPU": 16.0, "GPU": 4.0})
    assert (plan.min_size, plan.max_size, plan.num_gpus, plan.num_cpus, plan.spare_cpus) == (1, 4, 1.0, 1.0, 12.0)
    half = plan_actors(None, 0.5, {"CPU": 2.0, "GPU": 1.0})
    assert (half.max_size, half.num_gpus, half.num_cpus, half.spare_cpus) == (2, 0.5, 0.0, 2.0)


def test_reserves_counts_the_cpu_stages_beside_the_pool() -> None:
    small, big = plan_actors(None, None, {"CPU": 2.0}), plan_actors((2, 2), None, {"CPU": 5.0})
    assert (small.spare_cpus, small.reserves(1), small.reserves(2)) == (1.0, True, False)
    assert (big.spare_cpus, big.reserves(3), big.reserves(4)) == (3.0, True, False)


@pytest.mark.parametrize(("actors", "gpus", "resources", "words"), [
    ((3, 3), None, {"CPU": 2.0}, "--actors 3:3 exceeds the 2 CPU(s)"),
    (None, 1.0, {"CPU": 2.0}, "asked for, but the cluster has no GPU"),
    (None, 2.0, {"CPU": 2.0, "GPU": 1.0}, "--gpus-per-actor 2 exceeds the 1 GPU(s)"),
    (None, -1.0, {"CPU": 2.0}, "--gpus-per-actor must be >= 0"),
])
def test_a_pool_that_cannot_fit_is_one_line(actors, gpus, resources, words: str) -> None:
    with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(")", r"\)")):
        plan_actors(actors, gpus, resources)


def test_cpus_others_hold_are_not_counted_on() -> None:
    """One of two CPUs held by another actor (a failed run's predictor lingers in a shared Ray
    session): the new pool reserves none, so the one free CPU stays for reading and decoding."""
    plan = plan_actors(None, None, {"CPU": 2.0}, free={"CPU": 1.0})
    assert (plan.num_cpus, plan.spare_cpus, plan.threads) == (0.0, 1.0, 2)
    assert plan_actors(None, None, {"CPU": 8.0}, free={"CPU": 3.0}).num_cpus == 1.0
