"""Running the conformance checks: on a model, as a pytest class, as a report.

The checks themselves are in :mod:`raysegment.testing.conformance`; this module
creates the model (by registry name, class or instance), runs the requested
checks with what they need, and gives plugin tests the installed-model lookups
they would otherwise take from the internal registry.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar

import torch

from raysegment.errors import describe_error
from raysegment.plugin.contract import SegmentationModel
from raysegment.plugin.registry import PluginInfo, UnknownModelError, get_registry
from raysegment.testing.conformance import CHECKS, NEEDS, CheckContext, CheckFailed, CheckResult

__all__ = ["ModelArg", "check_model", "assert_conforms", "format_results", "ModelConformance",
           "installed_model", "create_model"]

ModelArg = SegmentationModel | type[SegmentationModel] | str


def installed_model(name: str) -> PluginInfo:
    """The installed plugin registered as ``name`` (class, distribution, version); unknown names fail loudly."""
    return get_registry().get(name)


def create_model(name: str, params: Mapping[str, Any] | None = None) -> SegmentationModel:
    """An instance of the installed model ``name`` with ``params`` resolved (what ``--model``/``--param`` make)."""
    return get_registry().create(name, params)


# -- running ----------------------------------------------------------------------------------
def _with_needs(names: Iterable[str]) -> list[str]:
    """``names`` and everything they need, in check order."""
    wanted = set(names)
    if wanted - set(CHECKS):
        raise ValueError(f"unknown check(s) {sorted(wanted - set(CHECKS))}; checks: {', '.join(CHECKS)}")
    for name in reversed(CHECKS):  # a check's needs come before it, so one backward pass closes the set
        if name in wanted:
            wanted.update(NEEDS[name])
    return [n for n in CHECKS if n in wanted]


def _create(model: ModelArg, params: Mapping[str, Any] | None) -> SegmentationModel:
    if isinstance(model, str):
        return get_registry().create(model, params)
    if isinstance(model, SegmentationModel):
        return type(model)(**{**model.params, **params}) if params else model
    return model(**dict(params or {}))


def check_model(model: ModelArg, params: Mapping[str, Any] | None = None, *,
                only: Iterable[str] | None = None, size: int | None = None) -> list[CheckResult]:
    """Run the checks (``only`` some, with what they need) and return one result per requested check.

    ``model`` is a registry name, a plugin class or an instance; ``params`` make
    (for an instance: override) its parameters. ``size`` is the input height,
    rounded up to a multiple of ``size_divisor``. A model that cannot be created
    fails ``contract``; an unknown registry name raises :class:`UnknownModelError`.
    """
    names = list(CHECKS) if only is None else _with_needs(only)
    shown = set(names if only is None else only)
    results: dict[str, CheckResult] = {}
    root: dict[str, str] = {}  # failed check -> the check whose own failure caused it
    try:
        instance = _create(model, params)
    except UnknownModelError:
        raise
    except Exception as exc:
        results["contract"] = CheckResult("contract", False, f"cannot create the model: {describe_error(exc)}", 0.0)
        instance, root["contract"] = None, "contract"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # inputs are tiny: one thread beats several, by far on a busy machine
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            ctx = CheckContext(instance, size) if instance is not None else None
            for name in (n for n in names if n not in results):  # contract is there when creation failed
                failed = [n for n in NEEDS[name] if not results[n].ok]
                if failed:
                    root[name] = cause = root[failed[0]]
                    extra = "" if cause in shown else f": {results[cause].message}"
                    results[name] = CheckResult(name, False, f"skipped: {cause} failed{extra}", 0.0)
                    continue
                start = time.perf_counter()
                try:
                    ok, message = True, CHECKS[name](instance, ctx) or ""  # type: ignore[arg-type]
                except CheckFailed as exc:
                    ok, message = False, str(exc)
                except Exception as exc:
                    ok, message = False, f"raised {describe_error(exc)}"
                results[name] = CheckResult(name, ok, message, time.perf_counter() - start)
                if not ok:
                    root[name] = name
    finally:
        torch.set_num_threads(threads)
    return [r for n, r in results.items() if n in shown]


def assert_conforms(model: ModelArg, params: Mapping[str, Any] | None = None, **kw: Any) -> None:
    """Raise AssertionError naming every failed check (``kw`` as for :func:`check_model`)."""
    failed = [r for r in check_model(model, params, **kw) if not r.ok]
    if failed:
        lines = "\n".join(f"  {r.name}: {r.message}" for r in failed)
        raise AssertionError(f"{len(failed)} conformance check(s) failed:\n{lines}")


def format_results(results: Iterable[CheckResult]) -> str:
    """A plain-text table (check, result, time, message) and a one-line summary."""
    rows = list(results)
    width = max([len("check")] + [len(r.name) for r in rows])
    lines = [f"{'check':<{width}}  result  {'time':>8}  message"]
    for r in rows:  # messages on one line
        lines.append(f"{r.name:<{width}}  {'PASS' if r.ok else 'FAIL':<6}  {r.seconds * 1000:6.0f}ms  "
                     + " ".join(r.message.split()))
    lines.append(f"{sum(r.ok for r in rows)}/{len(rows)} checks passed")
    return "\n".join(lines)


class ModelConformance:
    """pytest base class: one test per check (``test_contract``, ``test_build``, ...).

    Set ``model_name`` (a registry name) and ``params``, or override
    :meth:`make_model`. All checks run once per class; each test reports its
    own. The name lacks the ``Test`` prefix, so pytest collects only subclasses.
    """

    model_name: ClassVar[str | None] = None
    params: ClassVar[dict[str, Any]] = {}
    size: ClassVar[int | None] = None

    def make_model(self) -> SegmentationModel:
        if self.model_name is None:
            raise TypeError(f"{type(self).__name__} must set model_name or override make_model()")
        return get_registry().create(self.model_name, self.params)

    def conformance_results(self) -> dict[str, CheckResult]:
        cls = type(self)
        cached: dict[str, CheckResult] | None = cls.__dict__.get("_conformance_cache")
        if cached is None:
            try:
                model = self.make_model()
            except Exception as exc:
                message = f"make_model() raised {describe_error(exc)}"
                cached = {n: CheckResult(n, False, message, 0.0) for n in CHECKS}
            else:
                cached = {r.name: r for r in check_model(model, size=self.size)}
            cls._conformance_cache = cached  # type: ignore[attr-defined]
        return cached

    def assert_check(self, name: str) -> None:
        result = self.conformance_results()[name]
        if not result.ok:
            raise AssertionError(f"conformance check {name!r} failed: {result.message}")


def _make_test(name: str) -> Callable[[ModelConformance], None]:
    def test(self: ModelConformance) -> None:
        self.assert_check(name)

    test.__name__ = f"test_{name}"
    test.__qualname__ = f"ModelConformance.test_{name}"
    test.__doc__ = f"Conformance check {name!r} (raysegment.testing.CHECKS)."
    return test


for _name in CHECKS:
    setattr(ModelConformance, f"test_{_name}", _make_test(_name))
del _name
