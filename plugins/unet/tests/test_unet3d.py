"""Tests of the 3D U-Net module (not registered as a model: the pipeline has no volumes yet)."""

from __future__ import annotations

import doctest
import importlib.metadata as md

import pytest
import torch
from torch import nn

import raysegment_unet.unet3d as unet3d_module
from raysegment_unet import UNet3d
from raysegment_unet.unet3d import PAPER_PARAMETERS


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize(
    ("in_channels", "num_classes", "depth", "base", "size"),
    [(1, 2, 1, 2, (4, 6, 8)), (3, 3, 2, 2, (8, 12, 16)), (2, 1, 3, 1, (8, 8, 16))],
)
def test_output_shape(in_channels: int, num_classes: int, depth: int, base: int, size: tuple[int, int, int]) -> None:
    net = UNet3d(in_channels, num_classes, depth, base).eval()
    with torch.no_grad():
        y = net(torch.randn(2, in_channels, *size))
    assert y.shape == (2, num_classes, *size)  # 'same' padding: full padded size, unlike the paper's valid convs
    assert torch.isfinite(y).all()


def test_paper_channel_layout() -> None:
    net = UNet3d()  # 3 input channels, 3 classes, as the paper counts
    assert [(b.mid_channels, b.out_channels) for b in net.encoders] == [(32, 64), (64, 128), (128, 256)]
    assert (net.bottom.mid_channels, net.bottom.out_channels) == (256, 512)
    assert all(isinstance(m, nn.MaxPool3d) for m in [net.pool]) and net.pool.kernel_size == 2
    for up, width in zip(net.upconvs, (512, 256, 128)):
        assert up.kernel_size == (2, 2, 2) and up.stride == (2, 2, 2)
        assert up.in_channels == up.out_channels == width
    assert [(b.in_channels, b.out_channels) for b in net.decoders] == [(768, 256), (384, 128), (192, 64)]
    assert net.head.kernel_size == (1, 1, 1) and (net.head.in_channels, net.head.out_channels) == (64, 3)
    convs = [m for m in net.modules() if isinstance(m, nn.Conv3d) and m is not net.head]
    assert len(convs) == 14 and all(m.kernel_size == (3, 3, 3) and m.padding == (1, 1, 1) for m in convs)


def test_param_count_vs_paper() -> None:
    """19,069,955 in the paper = conv weights + one bias per 3x3x3/1x1x1 conv; we trade those biases for BN."""
    net = UNet3d(in_channels=3, num_classes=3)
    convs = [m for m in net.modules() if isinstance(m, (nn.Conv3d, nn.ConvTranspose3d))]
    weights = sum(m.weight.numel() for m in convs)
    paper_biases = sum(m.out_channels for m in convs if isinstance(m, nn.Conv3d))
    assert weights + paper_biases == PAPER_PARAMETERS == 19_069_955
    count = n_params(net)
    assert count == 19_072_291 == PAPER_PARAMETERS + 2_336
    assert abs(count - PAPER_PARAMETERS) / PAPER_PARAMETERS < 0.0002


def test_skips_are_concatenated_and_carry_information() -> None:
    torch.manual_seed(0)
    net = UNet3d(1, 2, depth=2, base_channels=2).eval()
    x = torch.randn(1, 1, 8, 8, 8)
    with torch.no_grad():
        ref = net(x)
        handle = net.encoders[0].register_forward_hook(lambda m, a, o: o + 1.0)
        changed = net(x)
        handle.remove()
    assert not torch.allclose(ref, changed)


def test_rejects_bad_input() -> None:
    net = UNet3d(1, 2, depth=2, base_channels=2)
    with pytest.raises(ValueError, match="multiple of 4"):
        net(torch.randn(1, 1, 8, 8, 6))
    with pytest.raises(ValueError, match=r"\(B, C, D, H, W\)"):
        net(torch.randn(1, 1, 8, 8))
    with pytest.raises(ValueError, match="base_channels"):
        UNet3d(base_channels=0)


def test_not_registered_yet() -> None:
    values = [e.value for e in md.entry_points(group="raysegment.models")]
    assert not any("unet3d" in v or "UNet3d" in v for v in values)


def test_docstring_example() -> None:
    result = doctest.testmod(unet3d_module, verbose=False)
    assert result.attempted > 0 and result.failed == 0
