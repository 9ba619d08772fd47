"""Checkpoints: one self-describing file that both training and inference use.

A checkpoint records the plugin name and version, its parameters, the class
names and the training metrics next to the weights, so ``infer --checkpoint``
needs nothing else. Loading always goes through ``torch.load(weights_only=True)``
so a checkpoint from an untrusted bucket cannot run code.

When that safe load refuses a file, PyTorch's own message advises re-running with
``weights_only=False``: the one thing never to do with a file of unknown origin. So
the refusal is reworded (:func:`unsafe_load_reason`): what the file is (empty,
truncated, a plain pickle, not a PyTorch file at all, or one that names a Python
object), and what to pass instead; torch's advice is dropped.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import pickle
import re
import warnings
from collections.abc import Mapping
from typing import Any

import fsspec
import torch
from torch import nn

from raysegment.errors import InputSpecError, StorageError
from raysegment.plugin.normalization import Normalization
from raysegment.uri import filesystem, redact, refuse_credentials, storage_step

__all__ = ["FORMAT", "Checkpoint", "CheckpointError", "load_checkpoint", "save_checkpoint", "load_weights",
           "unsafe_load_reason"]

FORMAT = "raysegment.checkpoint/1"
#: torch's text that must not reach the user: the advice to load unsafely, or to allow-list globals.
_UNSAFE_ADVICE = re.compile(r"weights_only|safe_globals|add_safe_globals|trust|file an issue|documentation|"
                            r"re-running|do those steps|two options", re.IGNORECASE)
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_GLOBAL = re.compile(r"GLOBAL ([A-Za-z_][\w.]*)")
_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_START = b"\x80"  # the PROTO opcode: every pickle of protocol 2 or later, and torch's legacy format
_ENFORCE = re.compile(r"\[enforce fail at [^\]]*\]\s*\.?\s*")  # c10's source location: no help to a user


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the model."""


@dataclasses.dataclass
class Checkpoint:
    state_dict: dict[str, torch.Tensor]
    plugin: str | None = None
    plugin_version: str | None = None
    params: dict[str, Any] = dataclasses.field(default_factory=dict)
    class_names: list[str] | None = None
    metrics: dict[str, Any] = dataclasses.field(default_factory=dict)
    sha256: str = ""
    normalization: Normalization = Normalization()  # what the model was trained on; infer applies it


def save_checkpoint(
    url: str,
    *,
    state_dict: Mapping[str, torch.Tensor],
    plugin: str,
    plugin_version: str,
    params: Mapping[str, Any],
    class_names: list[str] | tuple[str, ...],
    metrics: Mapping[str, Any] | None = None,
    storage_options: dict[str, Any] | None = None,
    normalization: Normalization | None = None,
) -> str:
    """Write a checkpoint to any fsspec URL; returns its sha256."""
    payload = {
        "format": FORMAT,
        "plugin": plugin,
        "plugin_version": plugin_version,
        "params": dict(params),
        "class_names": list(class_names),
        "metrics": dict(metrics or {}),
        "normalization": (normalization or Normalization()).to_json(),
        "state_dict": {k: v.detach().cpu() for k, v in state_dict.items()},
    }
    buf = io.BytesIO()
    torch.save(payload, buf)
    data = buf.getvalue()
    refuse_credentials(url)
    with storage_step("write", url, what="checkpoint"), fsspec.open(url, "wb", **(storage_options or {})) as f:
        f.write(data)
    return hashlib.sha256(data).hexdigest()


def load_checkpoint(url: str, storage_options: dict[str, Any] | None = None, *, kind: str = "checkpoint") -> Checkpoint:
    """Read a raysegment checkpoint, or a bare ``state_dict``, from any fsspec URL.

    ``kind`` ("checkpoint", "weights") is what the messages call the file.
    """
    shown = redact(url)
    try:
        fs, path = filesystem(url, storage_options)
        with storage_step("read", url, what=kind):
            data = fs.cat_file(path)
    except FileNotFoundError:
        raise CheckpointError(f"{kind} not found: {shown}") from None
    except (IsADirectoryError, NotADirectoryError):
        raise CheckpointError(f"{kind} {shown} is a directory, not a file: name the checkpoint file in it") from None
    except (InputSpecError, StorageError) as exc:
        raise CheckpointError(str(exc) if isinstance(exc, StorageError) else f"{kind} {exc}") from exc
    digest = hashlib.sha256(data).hexdigest()
    try:
        with warnings.catch_warnings():  # torch's note on the pickle protocol: noise beside a refusal
            warnings.filterwarnings("ignore", message=".*pickle protocol", category=UserWarning)
            obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(
            f"{kind} {shown} is not a raysegment/PyTorch checkpoint that loads safely (weights_only): "
            f"{unsafe_load_reason(exc, data)}; raysegment never loads pickles that can run code. Pass a checkpoint "
            "written by `raysegment train`, or a state_dict saved with torch.save(model.state_dict(), path)"
        ) from None
    if isinstance(obj, Mapping) and obj.get("format") == FORMAT:
        return Checkpoint(
            state_dict=dict(obj["state_dict"]),
            plugin=obj.get("plugin"),
            plugin_version=obj.get("plugin_version"),
            params=dict(obj.get("params") or {}),
            class_names=list(obj["class_names"]) if obj.get("class_names") else None,
            metrics=dict(obj.get("metrics") or {}),
            sha256=digest,
            normalization=Normalization.from_json(obj.get("normalization")),
        )
    if isinstance(obj, Mapping) and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return Checkpoint(state_dict=dict(obj), sha256=digest)
    raise CheckpointError(f"{kind} {shown} is neither a raysegment checkpoint nor a state_dict (a mapping of "
                          "names to tensors)")


def unsafe_load_reason(exc: BaseException, data: bytes) -> str:
    """Why ``torch.load(weights_only=True)`` refused ``data``, in a few words and without torch's
    advice to load it unsafely (``weights_only=False``) or to allow-list what it names."""
    text = _ANSI.sub("", str(exc))
    named = _GLOBAL.search(text)
    if not data:
        return "the file is empty"
    if named:
        return f"it refers to the Python object {named.group(1)}, which only a load that runs code could create"
    if data.startswith(_ZIP_MAGIC):  # the format torch.save writes
        if isinstance(exc, EOFError) or any(w in text for w in ("central directory", "seek", "EOF", "truncated")):
            return f"the file is truncated or corrupt ({_plain_reason(text) or 'its zip archive is incomplete'})"
        return f"it is a zip archive, but not one torch.save wrote ({_plain_reason(text) or type(exc).__name__})"
    if data[:1] != _PICKLE_START:  # judged by the bytes: the unpickler fails on noise in many ways
        return "it is not a PyTorch file (neither the zip archive torch.save writes nor a pickle)"
    if isinstance(exc, EOFError):
        return "the file ends early (truncated)"
    if isinstance(exc, pickle.UnpicklingError):
        return "it is a plain Python pickle, not a file written by torch.save"
    return f"it starts like a pickle but does not read as one ({_plain_reason(text) or type(exc).__name__})"


def _plain_reason(text: str) -> str:
    """The first sentence of torch's text that gives no advice (to load unsafely, to allow-list, to file an issue)."""
    parts = re.split(r"(?<=[.!?])\s+|\n+", _ENFORCE.sub("", text))
    kept = [p.strip().rstrip(".") for p in parts if p.strip() and not _UNSAFE_ADVICE.search(p)]
    return kept[0][:200] if kept else ""


def load_weights(module: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> None:
    """Strictly load weights, naming the first tensor that does not fit."""
    own = module.state_dict()
    for name, tensor in state_dict.items():
        if name not in own:
            raise CheckpointError(f"checkpoint tensor {name!r} does not exist in the model")
        if tuple(own[name].shape) != tuple(tensor.shape):
            raise CheckpointError(
                f"checkpoint tensor {name!r} has shape {tuple(tensor.shape)}, model expects {tuple(own[name].shape)}"
            )
    missing = [k for k in own if k not in state_dict]
    if missing:
        raise CheckpointError(f"checkpoint lacks model tensor {missing[0]!r} ({len(missing)} missing)")
    module.load_state_dict(state_dict, strict=True)
