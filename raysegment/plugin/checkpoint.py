"""Checkpoints: one self-describing file that both training and inference use.

A checkpoint records the plugin name and version, its parameters, the class
names and the training metrics next to the weights, so ``infer --checkpoint``
needs nothing else. Loading always goes through ``torch.load(weights_only=True)``
so a checkpoint from an untrusted bucket cannot run code.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
from collections.abc import Mapping
from typing import Any

import fsspec
import torch
from torch import nn

from raysegment.plugin.normalization import Normalization
from raysegment.uri import redact

__all__ = ["FORMAT", "Checkpoint", "CheckpointError", "load_checkpoint", "save_checkpoint", "load_weights"]

FORMAT = "raysegment.checkpoint/1"


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
    with fsspec.open(url, "wb", **(storage_options or {})) as f:
        f.write(data)
    return hashlib.sha256(data).hexdigest()


def load_checkpoint(url: str, storage_options: dict[str, Any] | None = None) -> Checkpoint:
    """Read a raysegment checkpoint, or a bare ``state_dict``, from any fsspec URL."""
    try:
        with fsspec.open(url, "rb", **(storage_options or {})) as f:
            data = f.read()
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint not found: {redact(url)}") from None
    except Exception as exc:
        raise CheckpointError(f"cannot read checkpoint {redact(url)}: {type(exc).__name__}: {exc}") from None
    digest = hashlib.sha256(data).hexdigest()
    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"cannot load checkpoint {redact(url)} with weights_only=True: {first}") from None
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
    raise CheckpointError(f"{redact(url)} is neither a raysegment checkpoint nor a state_dict")


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
