"""What a registered model is, measured: the facts ``models show`` prints and ``docs/models.md`` tabulates.

One function computes them from the registry, so the CLI and the generated
docs cannot disagree, and the parameter count is counted, not copied.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import torch

from raysegment.plugin.registry import PluginInfo, get_registry

__all__ = ["ModelCard", "model_card", "model_cards", "count_parameters"]


@dataclasses.dataclass(frozen=True)
class ModelCard:
    name: str
    distribution: str
    version: str
    task: str
    modality: str
    summary: str
    paper: str
    params: list[dict[str, Any]]
    parameters: int  # trainable + frozen parameters of the default build
    paper_parameters_m: float | None
    parameter_note: str
    output_stride: int | None
    size_divisor: int
    in_channels: int  # default
    weights_params: list[str]  # parameters that load pretrained weights
    smoke_params: dict[str, Any]

    @property
    def bands(self) -> str:
        """Input bands: every model takes any count through ``in_channels``."""
        adapt = "; RGB weights expanded" if self.weights_params else ""
        return f"any (in_channels, default {self.in_channels}){adapt}"


def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _build_counted(info: PluginInfo) -> int:
    """Parameter count of the default build; on the meta device where the builder allows (no memory, no init)."""
    plugin = info.create()
    try:
        with torch.device("meta"):
            return count_parameters(plugin.build())
    except Exception:  # a builder that copies real tensors during init: build for real
        return count_parameters(plugin.build())


def model_card(name: str) -> ModelCard:
    info = get_registry().get(name)
    cls = info.cls
    plugin = info.create()
    stride = plugin.output_stride
    return ModelCard(
        name=info.name,
        distribution=info.distribution,
        version=info.version,
        task=cls.task.value,
        modality=cls.modality.value,
        summary=cls.summary,
        paper=cls.paper,
        params=[
            {"name": p.name, "type": p.type.__name__, "default": p.default, "help": p.help,
             "choices": list(p.choices) if p.choices else None, "loads_weights": p.loads_weights}
            for p in cls.params
        ],
        parameters=_build_counted(info),
        paper_parameters_m=cls.paper_parameters,
        parameter_note=cls.parameter_note,
        output_stride=int(stride) if stride is not None else None,
        size_divisor=int(plugin.size_divisor),
        in_channels=plugin.in_channels,
        weights_params=[p.name for p in cls.params if p.loads_weights],
        smoke_params=dict(cls.smoke_params),
    )


def model_cards() -> Iterator[ModelCard]:
    """Cards of every working plugin, by name."""
    for name in sorted(get_registry().plugins):
        yield model_card(name)
