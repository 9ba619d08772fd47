"""Shared fixtures: paper-size builds without paying for 134M random initialisations."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import torch
from torch import nn


@pytest.fixture
def on_meta(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[Callable[[], nn.Module]], nn.Module]]:
    """``on_meta(lambda: FCN())`` builds a module on the meta device: shapes only, no memory, no init cost.

    ``kaiming_normal_`` on meta tensors would import torch._dynamo (seconds), so it is a no-op here.
    """
    monkeypatch.setattr(torch.nn.init, "kaiming_normal_", lambda tensor, *args, **kwargs: tensor)

    def build(factory: Callable[[], nn.Module]) -> nn.Module:
        with torch.device("meta"):
            return factory()

    yield build
