"""What the four U-Nets share, tested once for all of them: the skeleton's padded shapes and skips
(:mod:`raysegment_unet.skeleton`), the shared parameters' errors, the doc examples, the entry points.

Each model's own mechanisms are tested in its own file.
"""

from __future__ import annotations

import doctest
import importlib.metadata as md
from collections.abc import Callable
from types import ModuleType

import pytest
import torch
from torch import nn

import raysegment_unet.denseunet as denseunet_module
import raysegment_unet.resunet as resunet_module
import raysegment_unet.unet2d as unet2d_module
import raysegment_unet.unet3d as unet3d_module
from raysegment.plugin import ParamError, SegmentationModel
from raysegment_unet import DenseUNet, DenseUNet2d, ResUNet, ResUNet2d, UNet, UNet2d, UNet3D, UNet3d

PLUGINS: dict[str, type[SegmentationModel]] = {"unet": UNet, "resunet": ResUNet, "denseunet": DenseUNet,
                                               "unet3d": UNet3D}


def _unet2d(c: int, k: int, depth: int, base: int) -> nn.Module:
    return UNet2d(in_channels=c, num_classes=k, depth=depth, base_channels=base)


@pytest.mark.parametrize(
    ("network", "args", "size"),
    [
        # UNet2d(in_channels, num_classes, depth, base_channels)
        (_unet2d, (1, 2, 1, 4), (32, 32)),
        (_unet2d, (3, 5, 2, 8), (32, 48)),
        (_unet2d, (4, 1, 3, 4), (16, 40)),
        (_unet2d, (2, 3, 4, 4), (32, 32)),
        (_unet2d, (1, 2, 5, 4), (32, 64)),
        # ResUNet2d(in_channels, num_classes, depth, base_channels)
        (ResUNet2d, (3, 1, 3, 4), (32, 32)),
        (ResUNet2d, (1, 2, 1, 4), (16, 24)),
        (ResUNet2d, (5, 4, 2, 4), (32, 16)),
        (ResUNet2d, (2, 3, 4, 2), (32, 48)),
        # DenseUNet2d(in_channels, num_classes, depth, growth_rate, layers_per_block)
        (DenseUNet2d, (1, 2, 2, 2, 4), (32, 32)),
        (DenseUNet2d, (3, 1, 1, 2, 2), (16, 24)),
        (DenseUNet2d, (4, 5, 3, 1, 3), (16, 32)),
        (DenseUNet2d, (2, 3, 2, 3, 1), (12, 20)),
        # UNet3d(in_channels, num_classes, depth, base_channels): 'same' padding gives the full padded
        # size, unlike the paper's valid convs
        (UNet3d, (1, 2, 1, 2), (4, 6, 8)),
        (UNet3d, (3, 3, 2, 2), (8, 12, 16)),
        (UNet3d, (2, 1, 3, 1), (8, 8, 16)),
    ],
)
def test_output_shape(network: Callable[..., nn.Module], args: tuple[int, ...], size: tuple[int, ...]) -> None:
    in_channels, num_classes = args[:2]
    net = network(*args).eval()
    with torch.no_grad():
        y = net(torch.randn(2, in_channels, *size))
    assert y.shape == (2, num_classes, *size)
    assert torch.isfinite(y).all()


@pytest.mark.parametrize(
    ("make", "shape"),
    [(lambda: UNet2d(in_channels=1, num_classes=2, depth=2, base_channels=4), (1, 1, 32, 32)),
     (lambda: UNet3d(1, 2, depth=2, base_channels=2), (1, 1, 8, 8, 8))],
    ids=["unet2d", "unet3d"],
)
def test_skip_carries_information(make: Callable[[], nn.Module], shape: tuple[int, ...]) -> None:
    """Perturbing the finest skip alone must change the output."""
    torch.manual_seed(0)
    net = make().eval()
    x = torch.randn(*shape)
    with torch.no_grad():
        ref = net(x)
        handle = net.encoders[0].register_forward_hook(lambda m, args, out: out + 1.0)
        changed = net(x)
        handle.remove()
    assert not torch.allclose(ref, changed)


@pytest.mark.parametrize(
    ("net", "shape", "divisor"),
    [(UNet2d(in_channels=1, num_classes=2, depth=3, base_channels=4), (1, 1, 32, 36), 8),
     (ResUNet2d(3, 1, depth=3, base_channels=2), (1, 3, 32, 36), 8),
     (DenseUNet2d(1, 2, depth=2, growth_rate=1), (1, 1, 16, 18), 4),
     (UNet3d(1, 2, depth=2, base_channels=2), (1, 1, 8, 8, 6), 4)],
    ids=["unet2d", "resunet", "denseunet", "unet3d"],
)
def test_rejects_size_not_multiple(net: nn.Module, shape: tuple[int, ...], divisor: int) -> None:
    with pytest.raises(ValueError, match=f"multiple of {divisor}"):
        net(torch.randn(*shape))


@pytest.mark.parametrize("module", [unet2d_module, resunet_module, denseunet_module, unet3d_module],
                         ids=lambda m: m.__name__)
def test_docstring_example(module: ModuleType) -> None:
    result = doctest.testmod(module, verbose=False)
    assert result.attempted > 0
    assert result.failed == 0


@pytest.mark.parametrize("params", [{"depth": 0}, {"in_channels": 0}, {"num_classes": 0}], ids=str)
@pytest.mark.parametrize("name", PLUGINS)
def test_shared_param_errors(name: str, params: dict[str, object]) -> None:
    """Each model's own parameters are tested in its file; these every U-Net has."""
    (key,) = params
    with pytest.raises(ParamError, match=key):
        PLUGINS[name](**params)


@pytest.mark.parametrize("name", PLUGINS)
def test_entry_point_registered(name: str) -> None:
    (ep,) = [e for e in md.entry_points(group="raysegment.models") if e.name == name]
    assert ep.value == f"raysegment_unet.plugin:{PLUGINS[name].__name__}"
    assert ep.load() is PLUGINS[name]
