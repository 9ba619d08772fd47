"""Pretrained weights for plugins: read them from anywhere, fit them to any band count.

Plugins build torchvision backbones with ``weights=None`` and take pretrained
weights only from a path, an fsspec URL, or a torchvision weight-enum name that
is already in the local torch hub cache: these machines never download. Every
read goes through :func:`raysegment.plugin.checkpoint.load_checkpoint`, so it is
``torch.load(weights_only=True)``.

Multispectral input is common, so the first convolution of an RGB-pretrained
network is expanded by :func:`expand_input_bands`: one band takes the sum of the
RGB kernels (a grey image then gives the activations an RGB image of the same
intensity would), and two bands take R+B and G; N > 3 bands repeat the RGB kernels cyclically, each kernel
divided by the number of bands that copy it (3/N when N is a multiple of 3), so
N equal bands give exactly the activations of the equal-intensity RGB image.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from raysegment.plugin.checkpoint import CheckpointError, load_checkpoint
from raysegment.uri import redact

__all__ = ["WeightsError", "read_state_dict", "torchvision_weights_file", "expand_input_bands", "load_pretrained"]

_ENUM_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*_Weights\.[A-Za-z0-9_]+$")


class WeightsError(CheckpointError):
    """Weights that cannot be found, read, or fitted to the module (one line, first bad tensor named)."""


def torchvision_weights_file(name: str) -> str:
    """Where the torch hub cache keeps the file of a weight-enum name such as ``ResNet50_Weights.IMAGENET1K_V1``.

    Resolves the name with torchvision (no network) and checks that the file is
    there; a missing file is an error that says how to get it, never a download.
    """
    from torchvision.models import get_weight

    try:
        weight = get_weight(name)
    except (ValueError, KeyError, AttributeError) as exc:
        raise WeightsError(f"unknown torchvision weights {name!r}: {exc}") from None
    cache = os.path.join(torch.hub.get_dir(), "checkpoints")
    path = os.path.join(cache, os.path.basename(weight.url))
    if not os.path.isfile(path):
        raise WeightsError(
            f"torchvision weights {name} are not in the local cache ({path}); this machine does not download: "
            f"fetch {weight.url} elsewhere and pass its path or URL, or copy it into {cache}"
        )
    return path


def read_state_dict(source: str, storage_options: dict[str, Any] | None = None) -> dict[str, torch.Tensor]:
    """A state_dict from a path, an fsspec URL, a raysegment checkpoint, or a cached torchvision enum name."""
    if _ENUM_NAME.match(source):
        source = torchvision_weights_file(source)
    try:
        return load_checkpoint(source, storage_options, kind="weights").state_dict
    except WeightsError:
        raise
    except CheckpointError as exc:
        raise WeightsError(str(exc)) from None


def expand_input_bands(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """Fit an (O, I, kh, kw) first-conv kernel to ``in_channels`` input bands (see module docstring)."""
    have = int(weight.shape[1])
    if in_channels == have:
        return weight
    if in_channels < 1:
        raise WeightsError(f"cannot fit a first conv to {in_channels} input bands")
    if in_channels < have:  # fold: band j takes the kernels of inputs j, j + N, ... (1 band: their sum)
        return torch.stack([weight[:, j::in_channels].sum(dim=1) for j in range(in_channels)], dim=1)
    index = torch.arange(in_channels) % have
    copies = torch.bincount(index, minlength=have).to(weight.dtype)
    return weight[:, index] / copies[index].view(1, -1, 1, 1)


def load_pretrained(
    module: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    *,
    source: str = "",
    first_conv: str | None = None,
    skip: Sequence[str] = (),
    rename: Callable[[str], str | None] | None = None,
) -> None:
    """Load ``state_dict`` into ``module``: renamed, head skipped, first conv fitted, otherwise exact.

    Every module tensor outside ``skip`` must be provided with its exact shape;
    the first one that is not is named in a :class:`WeightsError`, with
    ``source`` (credentials in it are redacted).
    """
    where = f"{redact(source)}: " if source else ""
    own = module.state_dict()
    skipped = tuple(skip)
    fitted: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        name = rename(key) if rename is not None else key
        if name is None or (skipped and name.startswith(skipped)):
            continue
        if name not in own:
            raise WeightsError(f"{where}weights tensor {key!r} has no counterpart {name!r} in the model")
        if name == first_conv and tensor.ndim == 4:
            tensor = expand_input_bands(tensor, int(own[name].shape[1]))
        if tuple(tensor.shape) != tuple(own[name].shape):
            raise WeightsError(
                f"{where}weights tensor {key!r} has shape {tuple(tensor.shape)}, "
                f"the model's {name!r} expects {tuple(own[name].shape)}"
            )
        fitted[name] = tensor
    missing = [k for k in own if k not in fitted and not (skipped and k.startswith(skipped))]
    if missing:
        raise WeightsError(f"{where}weights lack the model's tensor {missing[0]!r} ({len(missing)} missing)")
    module.load_state_dict(fitted, strict=False)
