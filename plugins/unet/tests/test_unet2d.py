"""Tests of the U-Net module and its plugin class, against the installed distribution."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from raysegment.plugin import Modality, ParamError, Task
from raysegment_unet import UNet, UNet2d

# in=1, classes=2, depth=4, base=64 with padded convs; the paper quotes ~31M.
CANONICAL_PARAMS = 31_030_658


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize(("batch_norm", "dropout"), [(True, 0.0), (False, 0.5), (True, 0.3)])
def test_options_keep_shape_and_train(batch_norm: bool, dropout: float) -> None:
    net = UNet2d(in_channels=3, num_classes=2, depth=2, base_channels=4, batch_norm=batch_norm, dropout=dropout)
    assert any(isinstance(m, nn.BatchNorm2d) for m in net.modules()) == batch_norm
    assert any(isinstance(m, nn.Dropout) for m in net.modules()) == (dropout > 0)
    y = net(torch.randn(2, 3, 32, 32))
    assert y.shape == (2, 2, 32, 32)
    y.mean().backward()
    assert all(p.grad is not None for p in net.parameters())


def test_canonical_param_count() -> None:
    count = n_params(UNet2d(in_channels=1, num_classes=2, depth=4, base_channels=64))
    assert count == CANONICAL_PARAMS
    assert abs(count - 31.03e6) / 31.03e6 < 0.01


def test_canonical_structure() -> None:
    net = UNet(in_channels=1, num_classes=2).build()
    assert isinstance(net, UNet2d)
    assert [e.out_channels for e in net.encoders] == [64, 128, 256, 512]
    assert net.bottleneck.out_channels == 1024
    assert [m.out_channels for m in net.upconvs] == [512, 256, 128, 64]
    assert net.head.kernel_size == (1, 1) and net.head.out_channels == 2
    assert all(m.kernel_size == (3, 3) for m in net.modules() if isinstance(m, nn.Conv2d) and m is not net.head)


def test_skip_connections_concatenated() -> None:
    net = UNet2d(in_channels=1, num_classes=2, depth=3, base_channels=4)
    seen: list[int] = []
    hooks = [d[0].register_forward_hook(lambda m, args, out: seen.append(args[0].shape[1])) for d in net.decoders]
    for upconv, decoder in zip(net.upconvs, net.decoders):
        assert isinstance(upconv, nn.ConvTranspose2d)
        assert upconv.kernel_size == (2, 2) and upconv.stride == (2, 2)
        # decoder input = up-conv output + same-width skip feature map
        assert decoder.in_channels == 2 * upconv.out_channels
        assert decoder[0].in_channels == 2 * decoder[0].out_channels
    net(torch.randn(1, 1, 32, 32))
    for h in hooks:
        h.remove()
    assert seen == [32, 16, 8]


# -- the plugin class ------------------------------------------------------------------


def test_plugin_description() -> None:
    model = UNet()
    assert UNet.task is Task.SEMANTIC and UNet.modality is Modality.IMAGE
    assert "arXiv:1505.04597" in UNet.paper and UNet.summary
    assert all(p.help for p in UNet.params)
    assert model.params == {
        "in_channels": 1,
        "num_classes": 2,
        "depth": 4,
        "base_channels": 64,
        "batch_norm": False,
        "dropout": 0.0,
        "class_names": "",
    }
    assert model.size_divisor == 16
    assert UNet(depth="2").size_divisor == 4


def test_plugin_build_and_forward() -> None:
    model = UNet(in_channels="3", num_classes="4", depth="2", base_channels="4", batch_norm="true")
    net = model.build().eval()
    sample = model.example_input(height=32, width=32)
    x = torch.from_numpy(model.preprocess(sample))[None]
    with torch.no_grad():
        out = model.forward(net, x)
    assert out.shape == (1, 4, 32, 32)
    reduced = {k: v[0].numpy() for k, v in model.reduce(out).items()}
    pred = model.postprocess(reduced, sample.meta)
    assert pred.labels.shape == (32, 32)


def test_class_names() -> None:
    assert UNet(num_classes=3).class_names() == ("class_0", "class_1", "class_2")
    assert UNet(class_names="background, cell").class_names() == ("background", "cell")


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"base_channels": 0}, "base_channels"),
        ({"dropout": 1.0}, "dropout"),
        ({"dropout": -0.1}, "dropout"),
        ({"depth": "deep"}, "depth"),
        ({"depth": 2.5}, "depth"),
        ({"class_names": "a,b,c"}, "class_names"),
        ({"deep": 3}, "unknown parameter"),
        ({"num_class": 3}, "num_classes"),  # the message lists the valid names
    ],
)
def test_plugin_param_errors(params: dict[str, object], match: str) -> None:
    with pytest.raises(ParamError, match=match):
        UNet(**params)


def test_plugin_metadata() -> None:
    assert UNet.paper_parameters == 31.0 and "31,030,658" in UNet.parameter_note
    assert UNet().output_stride == 16 and UNet(depth=2).output_stride == 4
    assert UNet.smoke_params == {"depth": 2, "base_channels": 4}
    assert not any(p.loads_weights for p in UNet.params)
