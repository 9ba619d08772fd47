"""One kind of registry, used for decoders, scene readers and task specs alike.

A :class:`Table` holds built-in entries, named as ``"module:attribute"`` and
imported on first use, plus entries added with :meth:`Table.register`. Nothing
registers itself as a side effect of being imported, so the import graph stays
acyclic and importing a layer stays cheap; a clash is an error, never an override.
It imports nothing of raysegment.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable, Hashable, Iterator, Mapping
from typing import Generic, TypeVar

__all__ = ["Table"]

V = TypeVar("V")


def _load(target: str) -> object:
    module, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module), attribute)


class Table(Generic[V]):
    """Built-ins (values or ``"module:attribute"`` strings) plus registered entries, keyed by name."""

    def __init__(self, kind: str, builtins: Mapping[Hashable, V | str],
                 describe: Callable[[Hashable], str] = str) -> None:
        self.kind = kind
        self.describe = describe
        self._entries: dict[Hashable, V | str] = dict(builtins)
        self._lock = threading.Lock()

    def register(self, key: Hashable, value: V) -> None:
        """Add ``value`` under ``key``; a key already present (built-in or registered) is an error."""
        with self._lock:
            if key in self._entries:
                owner = self._entries[key]
                name = owner if isinstance(owner, str) else getattr(owner, "__qualname__", repr(owner))
                raise ValueError(f"{self.kind} already registered for {self.describe(key)} ({name})")
            self._entries[key] = value

    def get(self, key: Hashable) -> V | None:
        """The entry for ``key``, importing a built-in on first use; None when there is none."""
        value = self._entries.get(key)
        if isinstance(value, str):
            value = _load(value)  # type: ignore[assignment]
            with self._lock:
                self._entries[key] = value  # type: ignore[assignment]
        return value  # type: ignore[return-value]

    def snapshot(self) -> dict[Hashable, V | str]:
        """A copy of the entries, for :meth:`restore` (tests register and then undo)."""
        with self._lock:
            return dict(self._entries)

    def restore(self, snapshot: Mapping[Hashable, V | str]) -> None:
        """Put back the entries of an earlier :meth:`snapshot`."""
        with self._lock:
            self._entries = dict(snapshot)

    def keys(self) -> list[Hashable]:
        return list(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def __iter__(self) -> Iterator[Hashable]:
        return iter(list(self._entries))
