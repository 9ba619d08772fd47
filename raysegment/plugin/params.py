"""Model parameters: ``Param`` declares one, with its type, default and choices, and
parses CLI strings; ``ParamError`` is the one-line error of a bad value.

Part of the plugin contract (re-exported by :mod:`raysegment.plugin`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

__all__ = ["Param", "ParamError"]


class ParamError(ValueError):
    """A model parameter is unknown or has a value of the wrong type."""


_BOOL_TRUE = {"1", "true", "yes", "on"}
_BOOL_FALSE = {"0", "false", "no", "off"}


@dataclasses.dataclass(frozen=True)
class Param:
    """One constructor parameter of a model, with its type and default."""

    name: str
    type: type
    default: Any
    help: str = ""
    choices: tuple[Any, ...] | None = None
    #: The value names weights to load at build time (a path, an fsspec URL or a torchvision
    #: weight-enum name). The driver builds the model once when it is set, so weights that do not
    #: fit fail there, in one line, instead of in every actor.
    loads_weights: bool = False

    def coerce(self, value: Any) -> Any:
        """Turn a CLI string (or a Python value) into this parameter's type."""
        try:
            if self.type is bool:
                if isinstance(value, bool):
                    out: Any = value
                elif str(value).lower() in _BOOL_TRUE:
                    out = True
                elif str(value).lower() in _BOOL_FALSE:
                    out = False
                else:
                    raise ValueError(value)
            elif self.type is int:
                if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                    raise ValueError(value)
                out = int(value)
            elif self.type is float:
                if isinstance(value, bool):
                    raise ValueError(value)
                out = float(value)
            else:
                out = self.type(value)
        except (TypeError, ValueError):
            raise ParamError(
                f"parameter {self.name!r} expects {self.type.__name__}, got {value!r}"
            ) from None
        if self.choices is not None and out not in self.choices:
            raise ParamError(f"parameter {self.name!r} must be one of {list(self.choices)}, got {out!r}")
        return out
