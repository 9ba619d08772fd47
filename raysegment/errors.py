"""The error-row policy: what an expected failure is, and the one line an error row shows.

Every stage (decode, predict, encode, tiled merge, training data, evaluation)
turns the failure of one item into that item's error row and goes on; this module
is where the row's text comes from, so every stage words failures the same way.
It is the bottom layer: it imports nothing of raysegment.
"""

from __future__ import annotations

__all__ = ["InputSpecError", "ItemError", "describe_error", "exception_text", "stage_failed"]


class InputSpecError(ValueError):
    """The input spec names nothing usable: missing, empty, or a bad manifest."""


class ItemError(ValueError):
    """An expected failure of one item (a bad file, an input the model cannot take).

    Its message is already the clear line for the error row, so no type name is added.
    """


def describe_error(exc: BaseException) -> str:
    """One clear line for an error row; expected failures need no type name."""
    if isinstance(exc, ItemError):
        return str(exc)
    if isinstance(exc, FileNotFoundError):
        return f"file not found: {exc}"
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def stage_failed(stage: str, exc: BaseException) -> str:
    """The error-row text for an item that a later stage (``inference``, ``postprocess``) failed."""
    return f"{stage} failed: {describe_error(exc)}"


def exception_text(exc: BaseException) -> str:
    """``Type: message`` (the whole message), for wrapping a library's exception in a clearer one."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
