"""Tests of the Deep Residual U-Net module (paper mechanisms) and its ``resunet`` plugin class."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from raysegment.plugin import Modality, ParamError, Task
from raysegment_unet import ResidualUnit, ResUNet, ResUNet2d

# 3 bands, 1 class, filters 64/128/256/512 (the paper's Table 1); the paper quotes 7.8M.
CANONICAL_PARAMS = 8_219_585
CANONICAL_3X3_WEIGHTS = 7_780_032  # what the paper's 7.8M matches


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def canonical() -> ResUNet2d:
    net = ResUNet().build()
    assert isinstance(net, ResUNet2d)
    return net


def test_preactivation_order() -> None:
    """Units after the first run BN-ReLU-conv-BN-ReLU-conv; the first (on the raw image) conv-BN-ReLU-conv."""
    net = ResUNet2d(3, 1, depth=3, base_channels=4)
    pre = [nn.BatchNorm2d, nn.ReLU, nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.Conv2d]
    for unit in [*net.encoders[1:], net.bridge, *net.decoders]:
        assert [type(m) for m in unit.residual] == pre
        assert unit.residual[0].num_features == unit.in_channels  # BN acts on the unit's input
    assert [type(m) for m in net.encoders[0].residual] == pre[2:]
    # The call order, not just the declaration order: BN sees the input before any conv does.
    unit, calls = net.encoders[1], []
    hooks = [m.register_forward_hook(lambda m, a, o: calls.append(type(m).__name__)) for m in unit.residual]
    unit(torch.randn(1, 4, 8, 8))
    for h in hooks:
        h.remove()
    assert calls == ["BatchNorm2d", "ReLU", "Conv2d", "BatchNorm2d", "ReLU", "Conv2d"]


def test_strided_conv_downsampling_not_pooling() -> None:
    net = ResUNet2d(3, 1, depth=3, base_channels=4)
    assert not any(isinstance(m, (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d)) for m in net.modules())
    assert net.encoders[0].stride == 1
    for unit in [*net.encoders[1:], net.bridge]:
        first_conv = next(m for m in unit.residual if isinstance(m, nn.Conv2d))
        assert first_conv.stride == (2, 2) and first_conv.kernel_size == (3, 3)
        assert unit.shortcut[0].stride == (2, 2) and unit.shortcut[0].kernel_size == (1, 1)
    sizes: list[tuple[int, int]] = []
    hooks = [u.register_forward_hook(lambda m, a, o: sizes.append(tuple(o.shape[-2:])))
             for u in [*net.encoders, net.bridge]]
    net(torch.randn(1, 3, 32, 32))
    for h in hooks:
        h.remove()
    assert sizes == [(32, 32), (16, 16), (8, 8), (4, 4)]  # level 1 at full resolution, then halving


def test_identity_shortcut() -> None:
    unit = ResidualUnit(8, 8).eval()
    assert isinstance(unit.shortcut, nn.Identity)
    x = torch.randn(2, 8, 12, 12)
    assert unit(x).shape == x.shape
    nn.init.zeros_(unit.residual[-1].weight)  # F(x) = 0 leaves exactly the identity mapping
    with torch.no_grad():
        assert torch.equal(unit(x), x)


@pytest.mark.parametrize(("c_in", "c_out", "stride"), [(8, 16, 2), (8, 4, 1), (8, 8, 2)])
def test_projection_shortcut_shapes(c_in: int, c_out: int, stride: int) -> None:
    unit = ResidualUnit(c_in, c_out, stride=stride)
    assert isinstance(unit.shortcut[0], nn.Conv2d) and unit.shortcut[0].kernel_size == (1, 1)
    x = torch.randn(2, c_in, 16, 16)
    assert unit.shortcut(x).shape == unit.residual(x).shape == (2, c_out, 16 // stride, 16 // stride)


def test_decoder_upsamples_and_concatenates() -> None:
    net = ResUNet2d(3, 1, depth=3, base_channels=4)
    assert [(u.in_channels, u.out_channels) for u in net.decoders] == [(32 + 16, 16), (16 + 8, 8), (8 + 4, 4)]
    assert all(u.stride == 1 for u in net.decoders)
    assert net.head.kernel_size == (1, 1)


def test_canonical_structure_and_param_count() -> None:
    net = canonical()
    assert net.widths == [64, 128, 256, 512]
    assert net.encoders[0].residual[0].in_channels == 3 and net.head.out_channels == 1
    count = n_params(net)
    assert count == CANONICAL_PARAMS
    weights_3x3 = sum(m.weight.numel() for m in net.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3))
    assert weights_3x3 == CANONICAL_3X3_WEIGHTS
    assert abs(weights_3x3 - 7.8e6) / 7.8e6 < 0.005  # the paper's figure: its 3x3 convs
    assert abs(count - 7.8e6) / 7.8e6 < 0.06  # plus the 1x1 projection shortcuts
    assert ResUNet.paper_parameters == 7.8 and "shortcut" in ResUNet.parameter_note


# -- the plugin class ------------------------------------------------------------------


def test_plugin_description() -> None:
    model = ResUNet()
    assert ResUNet.task is Task.SEMANTIC and ResUNet.modality is Modality.IMAGE
    assert "arXiv:1711.10684" in ResUNet.paper and ResUNet.summary
    assert all(p.help for p in ResUNet.params)
    assert not any(p.loads_weights for p in ResUNet.params)  # trained from scratch
    assert model.params == {"in_channels": 3, "num_classes": 1, "depth": 3, "base_channels": 64, "class_names": ""}
    assert model.size_divisor == model.output_stride == 8
    assert ResUNet(depth="2").size_divisor == 4
    assert ResUNet.smoke_params == {"depth": 2, "base_channels": 4}


def test_plugin_single_class_sigmoid() -> None:
    model = ResUNet(in_channels=4, **ResUNet.smoke_params)
    net = model.build().eval()
    x = torch.from_numpy(model.preprocess(model.example_input(32, 16)))[None]
    with torch.no_grad():
        out = model.forward(net, x)
    assert out.shape == (1, 1, 32, 16)
    reduced = model.reduce(out)
    assert torch.equal(reduced["labels"][0], (torch.sigmoid(out[0, 0]) > 0.5).to(torch.uint8))
    assert model.class_names() == ("class_0",)
    assert ResUNet(class_names="road").class_names() == ("road",)


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"base_channels": 0}, "base_channels"),
        ({"depth": "x"}, "depth"),
        ({"class_names": "a,b"}, "class_names"),
        ({"backbone_weights": "x.pt"}, "unknown parameter"),
    ],
)
def test_plugin_param_errors(params: dict[str, object], match: str) -> None:
    with pytest.raises(ParamError, match=match):
        ResUNet(**params)
