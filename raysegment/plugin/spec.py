"""Resolving a model choice (name, parameters, checkpoint) once, on the driver.

The resolved :class:`ModelSpec` is small and picklable; Ray stages rebuild
the plugin from it, so every worker sees exactly what the driver validated.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
from collections.abc import Mapping
from typing import Any

import numpy as np

from raysegment.plugin.checkpoint import CheckpointError, load_checkpoint
from raysegment.plugin.contract import SegmentationModel
from raysegment.plugin.normalization import Normalization
from raysegment.plugin.registry import get_registry
from raysegment.plugin.types import InputError, Modality, Sample
from raysegment.uri import redact

__all__ = ["ModelSpec", "resolve_model", "parse_params"]

log = logging.getLogger("raysegment")


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    name: str
    version: str
    params: Mapping[str, Any]
    class_names: tuple[str, ...]
    checkpoint: str | None = None
    checkpoint_sha256: str | None = None
    #: applied to every item before the plugin's ``preprocess`` (stored in the checkpoint)
    normalization: Normalization = Normalization()

    @property
    def label_names(self) -> tuple[str, ...]:
        """Names by output label; a single-class sigmoid model labels 0 as background."""
        return ("background", *self.class_names) if len(self.class_names) == 1 else self.class_names

    def plugin(self) -> SegmentationModel:
        return _plugin(self.name, json.dumps(dict(self.params), sort_keys=True))

    def preprocess(self, sample: Sample) -> Any:
        """The run's normalisation, then the plugin's ``preprocess``: the one way items reach a model."""
        return self.plugin().preprocess(self.normalization.apply(sample))

    def check_takes(self, ndim: int, bands: int, dtype: Any, what: str = "input") -> None:
        """Ask the run's normalisation and the plugin's own ``preprocess`` about one pixel of an
        ``ndim``-D input of ``bands`` bands and ``dtype``, so that a scene the model cannot take is
        one clear error (one row, one report line), not one failed read per window."""
        want = 3 if self.plugin().modality is Modality.VOLUME else 2
        if ndim != want:
            shape = "a volume" if ndim == 3 else f"{ndim}D"
            raise InputError(f"{what} is {shape} but the model takes {'volumes' if want == 3 else '2D images'}")
        self.preprocess(Sample(np.zeros((*(1,) * ndim, bands), dtype=dtype), meta={}))

    def info(self) -> dict[str, Any]:
        """The ``model`` struct of every output row."""
        return {
            "name": self.name,
            "version": self.version,
            "checkpoint_sha256": self.checkpoint_sha256,
            "params": json.dumps(dict(self.params), sort_keys=True),
            "label_names": list(self.label_names),
        }


@functools.lru_cache(maxsize=8)
def _plugin(name: str, params_json: str) -> SegmentationModel:
    return get_registry().create(name, json.loads(params_json))


def parse_params(pairs: list[str] | tuple[str, ...]) -> dict[str, str]:
    """``["k=v", ...]`` -> dict; values stay strings until the plugin coerces them."""
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--param expects key=value, got {pair!r}")
        out[key.strip()] = value.strip()
    return out


def resolve_model(
    name: str | None,
    params: Mapping[str, Any] | None = None,
    checkpoint: str | None = None,
    storage_options: dict[str, Any] | None = None,
    *,
    warn_random: bool = True,
    normalization: Normalization | None = None,
) -> ModelSpec:
    """Validate the model choice before any Ray work starts.

    Checkpoint parameters are the base; explicit ``params`` override them. The normalisation is
    ``normalization`` when given, else the checkpoint's, else the dtype rule.
    Without a checkpoint the model gets random weights, which is only a smoke test.
    """
    ckpt = load_checkpoint(checkpoint, storage_options) if checkpoint else None
    if name is None:
        if ckpt is None or not ckpt.plugin:
            raise ValueError("--model is required (the checkpoint does not name its plugin)")
        name = ckpt.plugin
    info = get_registry().get(name)
    if ckpt is not None and ckpt.plugin and ckpt.plugin != name:
        raise CheckpointError(f"checkpoint {redact(checkpoint or '')} was made by plugin {ckpt.plugin!r}, not {name!r}")
    merged = dict(ckpt.params) if ckpt else {}
    merged.update(params or {})
    resolved = info.cls.resolve_params(merged)
    if ckpt is not None:  # the checkpoint holds every weight: pretrained sources need not be read again
        resolved.update({p.name: p.default for p in info.cls.params if p.loads_weights})
    plugin = info.cls(**resolved)
    explicit = "class_names" in (params or {})
    names = tuple(ckpt.class_names) if ckpt and ckpt.class_names and not explicit else plugin.class_names()
    if len(names) != plugin.num_classes:
        raise CheckpointError(f"checkpoint has {len(names)} class names but num_classes={plugin.num_classes}")
    if ckpt is not None:
        _check_weights(plugin, ckpt.state_dict, checkpoint or "")
    elif plugin.weight_sources():
        plugin.build()  # pretrained weights that do not fit fail here, once, in one line (WeightsError)
    elif warn_random:
        log.warning("no --checkpoint: model %r runs with random weights (smoke test only)", name)
    return ModelSpec(
        name=name,
        version=info.version,
        params=resolved,
        class_names=names,
        checkpoint=checkpoint,
        checkpoint_sha256=ckpt.sha256 if ckpt else None,
        normalization=normalization or (ckpt.normalization if ckpt else Normalization()),
    )


def _check_weights(plugin: SegmentationModel, state_dict: Mapping[str, Any], url: str) -> None:
    from raysegment.plugin.checkpoint import load_weights

    module = plugin.build()
    try:
        load_weights(module, state_dict)
    except CheckpointError as exc:
        raise CheckpointError(f"{redact(url)}: {exc}") from None
