"""Tests of the Fully Dense U-Net module (paper mechanisms) and its ``denseunet`` plugin class."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from raysegment.plugin import Modality, ParamError, Task
from raysegment_unet import DenseBlock, DenseLayer, DenseUNet, DenseUNet2d

# 1 band, 2 classes, growth rate 16, 5 levels, 4 layers per block; the paper gives no count.
CANONICAL_PARAMS = 39_267_394


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_dense_connectivity_inputs_grow_by_k() -> None:
    """Layer i sees the block input plus the k maps of each earlier layer, and the output keeps them all."""
    c, k, n = 6, 3, 4
    block = DenseBlock(c, k, n).eval()
    seen: list[int] = []
    hooks = [layer.register_forward_hook(lambda m, a, o: seen.append(a[0].shape[1])) for layer in block.layers]
    x = torch.randn(2, c, 8, 8)
    with torch.no_grad():
        out = block(x)
    for h in hooks:
        h.remove()
    with torch.no_grad():
        outputs = [layer(out[:, : c + i * k]) for i, layer in enumerate(block.layers)]
    assert seen == [c + i * k for i in range(n)] == [layer.in_channels for layer in block.layers]
    assert out.shape == (2, c + n * k, 8, 8) and block.out_channels == c + n * k
    assert torch.equal(out[:, :c], x)  # the input is passed on unchanged (concatenated, not summed)
    for i, new in enumerate(outputs):  # and slice i of the output is layer i's k new maps
        assert torch.allclose(out[:, c + i * k: c + (i + 1) * k], new)


def test_dense_layer_bottleneck() -> None:
    """1x1 conv to 4k maps, then 3x3 conv to k, each as the paper's conv-BN-ReLU composite."""
    layer = DenseLayer(20, 4)
    conv1, conv3 = layer[0][0], layer[1][0]
    assert (conv1.kernel_size, conv1.in_channels, conv1.out_channels) == ((1, 1), 20, 16)
    assert (conv3.kernel_size, conv3.in_channels, conv3.out_channels) == ((3, 3), 16, 4)
    assert [type(m) for m in layer[0]] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU]


def test_growth_rate_doubles_and_blocks_double_width() -> None:
    net = DenseUNet2d(1, 2, depth=3, growth_rate=2)
    assert net.growth_rates == [2, 4, 8, 16]
    assert [b.growth_rate for b in net.encoders] == [2, 4, 8]
    assert [b.growth_rate for b in net.decoders] == [8, 4, 2]  # each decoder level mirrors its encoder
    assert [(b.in_channels, b.out_channels) for b in net.encoders] == [(8, 16), (16, 32), (32, 64)]
    assert (net.bottom.in_channels, net.bottom.out_channels) == (64, 128)
    assert [(b.in_channels, b.out_channels) for b in net.decoders] == [(32, 64), (16, 32), (8, 16)]


def test_transitions_and_upsampling() -> None:
    net = DenseUNet2d(1, 2, depth=3, growth_rate=2)
    assert sum(isinstance(m, nn.MaxPool2d) for m in net.modules()) == 1 and net.pool.kernel_size == 2
    for block, transition in zip(net.encoders, net.transitions):  # 1x1 conv between block and pooling
        conv = transition[0]
        assert conv.kernel_size == (1, 1) and conv.in_channels == conv.out_channels == block.out_channels
    widths = [net.bottom.out_channels] + [b.out_channels for b in net.decoders[:-1]]
    for upconv, reducer, width, skip, block in zip(net.upconvs, net.reducers, widths, reversed(net.encoders),
                                                   net.decoders):
        up = upconv[0]
        assert isinstance(up, nn.ConvTranspose2d) and up.kernel_size == (2, 2) and up.stride == (2, 2)
        assert up.in_channels == width and up.out_channels == width // 2
        assert reducer[0].kernel_size == (1, 1)
        assert reducer[0].in_channels == up.out_channels + skip.out_channels  # concatenated skip
        assert reducer[0].out_channels == block.in_channels == 4 * block.growth_rate


def test_no_input_residual_in_segmentation_head() -> None:
    """The paper's regression output adds the input image; class logits must not."""
    net = DenseUNet2d(2, 2, depth=1, growth_rate=2).eval()
    nn.init.zeros_(net.head.weight)
    nn.init.zeros_(net.head.bias)
    with torch.no_grad():
        assert torch.equal(net(torch.randn(1, 2, 8, 8)), torch.zeros(1, 2, 8, 8))


def test_canonical_structure_and_param_count() -> None:
    net = DenseUNet().build()
    assert isinstance(net, DenseUNet2d)
    assert net.growth_rates == [16, 32, 64, 128, 256]
    assert net.stem[0].in_channels == 1 and net.stem[0].out_channels == 64
    assert [b.out_channels for b in net.encoders] + [net.bottom.out_channels] == [128, 256, 512, 1024, 2048]
    assert net.head.in_channels == 128 and net.head.out_channels == 2
    assert n_params(net) == CANONICAL_PARAMS
    assert DenseUNet.paper_parameters is None and "no parameter count" in DenseUNet.parameter_note


# -- the plugin class ------------------------------------------------------------------


def test_plugin_description() -> None:
    model = DenseUNet()
    assert DenseUNet.task is Task.SEMANTIC and DenseUNet.modality is Modality.IMAGE
    assert "arXiv:1808.10848" in DenseUNet.paper and DenseUNet.summary
    assert all(p.help for p in DenseUNet.params)
    assert not any(p.loads_weights for p in DenseUNet.params)  # trained from scratch
    assert model.params == {"in_channels": 1, "num_classes": 2, "depth": 4, "growth_rate": 16,
                            "layers_per_block": 4, "class_names": ""}
    assert model.size_divisor == model.output_stride == 16
    assert DenseUNet(depth="2").size_divisor == 4


def test_plugin_build_and_forward() -> None:
    model = DenseUNet(in_channels=3, num_classes=3, **DenseUNet.smoke_params)
    net = model.build().eval()
    sample = model.example_input(height=16, width=24)
    with torch.no_grad():
        out = model.forward(net, torch.from_numpy(model.preprocess(sample))[None])
    assert out.shape == (1, 3, 16, 24)
    pred = model.postprocess({k: v[0].numpy() for k, v in model.reduce(out).items()}, sample.meta)
    assert pred.labels.shape == (16, 24)
    assert DenseUNet(num_classes=2, class_names="bg, vessel").class_names() == ("bg", "vessel")


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"growth_rate": 0}, "growth_rate"),
        ({"layers_per_block": 0}, "layers_per_block"),
        ({"growth_rate": 1.5}, "growth_rate"),
        ({"class_names": "a"}, "class_names"),
        ({"growth": 8}, "unknown parameter"),
    ],
)
def test_plugin_param_errors(params: dict[str, object], match: str) -> None:
    with pytest.raises(ParamError, match=match):
        DenseUNet(**params)
