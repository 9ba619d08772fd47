"""Discovery of model plugins through the ``raysegment.models`` entry-point group.

Entry points are the only way code gets imported: no module or class is ever
loaded by a name taken from a config file or the command line. A plugin that
fails to import or breaks the contract is kept as a :class:`BrokenPlugin` with
its error, so the others still list and work.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.metadata as md
import inspect
from collections.abc import Mapping
from typing import Any

from raysegment.plugin.contract import Modality, SegmentationModel, Task

GROUP = "raysegment.models"

__all__ = [
    "GROUP",
    "PluginInfo",
    "BrokenPlugin",
    "Registry",
    "UnknownModelError",
    "PluginLoadError",
    "discover",
    "get_registry",
]


class UnknownModelError(LookupError):
    """No plugin of that name is installed."""


class PluginLoadError(RuntimeError):
    """The named plugin is installed but cannot be used."""


@dataclasses.dataclass(frozen=True)
class PluginInfo:
    """A usable plugin: its entry-point name, distribution and class."""

    name: str
    distribution: str
    version: str
    cls: type[SegmentationModel]

    def create(self, params: Mapping[str, Any] | None = None) -> SegmentationModel:
        return self.cls(**dict(params or {}))


@dataclasses.dataclass(frozen=True)
class BrokenPlugin:
    """A plugin that could not be loaded, with the reason."""

    name: str
    distribution: str
    error: str


def _dist_of(ep: md.EntryPoint) -> tuple[str, str]:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return "<unknown>", ""
    return dist.metadata["Name"] or "<unknown>", dist.version or ""


def contract_violations(cls: Any) -> list[str]:
    """Why ``cls`` is not a usable plugin class (empty when it is)."""
    if not (inspect.isclass(cls) and issubclass(cls, SegmentationModel)):
        return [f"{cls!r} is not a subclass of raysegment.plugin.SegmentationModel"]
    problems = []
    names = [p.name for p in cls.params]
    for required in SegmentationModel.REQUIRED_PARAMS:
        if required not in names:
            problems.append(f"params lacks required {required!r}")
    if len(set(names)) != len(names):
        problems.append("params declares a name twice")
    if not isinstance(cls.task, Task):
        problems.append(f"task {cls.task!r} is not a raysegment.plugin.Task")
    if not isinstance(cls.modality, Modality):
        problems.append(f"modality {cls.modality!r} is not a raysegment.plugin.Modality")
    if cls.build is SegmentationModel.build:
        problems.append("build() is not implemented")
    return problems


class Registry:
    """The installed plugins, keyed by entry-point name."""

    def __init__(self, plugins: Mapping[str, PluginInfo], broken: Mapping[str, BrokenPlugin]) -> None:
        self.plugins = dict(sorted(plugins.items()))
        self.broken = dict(sorted(broken.items()))

    def names(self) -> list[str]:
        return list(self.plugins)

    def get(self, name: str) -> PluginInfo:
        if name in self.plugins:
            return self.plugins[name]
        if name in self.broken:
            b = self.broken[name]
            raise PluginLoadError(f"model {name!r} ({b.distribution}) cannot be loaded: {b.error}")
        installed = ", ".join(self.names()) or "none"
        raise UnknownModelError(f"unknown model {name!r}; installed: {installed}")

    def create(self, name: str, params: Mapping[str, Any] | None = None) -> SegmentationModel:
        return self.get(name).create(params)


def discover(entry_points: list[md.EntryPoint] | None = None) -> Registry:
    """Load every entry point of the group, isolating failures per plugin."""
    eps = list(md.entry_points(group=GROUP)) if entry_points is None else entry_points
    by_name: dict[str, list[md.EntryPoint]] = {}
    for ep in eps:
        by_name.setdefault(ep.name, []).append(ep)

    plugins: dict[str, PluginInfo] = {}
    broken: dict[str, BrokenPlugin] = {}
    for name, group in by_name.items():
        dists = [_dist_of(ep) for ep in group]
        if len(group) > 1:
            listed = " and ".join(f"{d} {v}".strip() for d, v in dists)
            broken[name] = BrokenPlugin(
                name, ", ".join(d for d, _ in dists), f"duplicate model name {name!r} registered by {listed}"
            )
            continue
        ep, (dist, version) = group[0], dists[0]
        try:
            cls = ep.load()
        except Exception as exc:  # any import-time failure is the plugin's, not ours
            broken[name] = BrokenPlugin(name, dist, f"import of {ep.value} failed: {type(exc).__name__}: {exc}")
            continue
        problems = contract_violations(cls)
        if problems:
            broken[name] = BrokenPlugin(name, dist, "breaks the plugin contract: " + "; ".join(problems))
            continue
        plugins[name] = PluginInfo(name=name, distribution=dist, version=version, cls=cls)
    return Registry(plugins, broken)


@functools.lru_cache(maxsize=1)
def get_registry() -> Registry:
    """The process-wide registry, discovered once (workers call this too)."""
    return discover()
