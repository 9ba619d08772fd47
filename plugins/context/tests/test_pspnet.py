"""PSPNet: the pyramid pooling module, the dilated backbone and the training-only auxiliary loss."""

from __future__ import annotations

import doctest

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import raysegment_context.pspnet as pspnet_module
from raysegment_context import PSPNet, PSPNetModule, PyramidPooling


def test_pyramid_levels_pool_to_the_bins_and_reduce_to_c_over_n() -> None:
    ppm = PyramidPooling(64, (1, 2, 3, 6)).eval()
    pooled: list[tuple[int, ...]] = []
    for level in ppm.levels:
        level[0].register_forward_hook(lambda m, a, out: pooled.append(tuple(out.shape[-2:])))
    x = torch.randn(2, 64, 12, 10)
    with torch.no_grad():
        y = ppm(x)
    assert pooled == [(1, 1), (2, 2), (3, 3), (6, 6)]
    for level in ppm.levels:
        conv = level[1]
        assert isinstance(level[0], nn.AdaptiveAvgPool2d)
        assert conv.kernel_size == (1, 1) and (conv.in_channels, conv.out_channels) == (64, 16)
        assert isinstance(level[2], nn.BatchNorm2d) and isinstance(level[3], nn.ReLU)
    # Concatenation with the input features, every level upsampled to the feature map's size.
    assert y.shape == (2, 64 + 4 * 16, 12, 10) and ppm.out_channels == 128
    assert torch.equal(y[:, :64], x)


def test_levels_are_bilinear_upsamplings_of_the_pooled_maps() -> None:
    ppm = PyramidPooling(8, (1, 2)).eval()
    x = torch.randn(1, 8, 6, 6)
    with torch.no_grad():
        y = ppm(x)
        global_level = ppm.levels[0](x)  # (1, 4, 1, 1): one value per channel, broadcast everywhere
        two = F.interpolate(ppm.levels[1](x), size=(6, 6), mode="bilinear", align_corners=True)
    assert ppm.reduced_channels == 4
    assert torch.allclose(y[:, 8:12], global_level.expand(-1, -1, 6, 6))
    assert torch.allclose(y[:, 12:16], two)


def test_other_bins_split_the_channels_over_their_count() -> None:
    ppm = PyramidPooling(60, (1, 3, 6))
    assert ppm.reduced_channels == 20 and ppm.out_channels == 120
    with pytest.raises(ValueError, match="bins"):
        PyramidPooling(60, (1, 0))


def test_default_build_is_the_papers_head_on_a_dilated_resnet101() -> None:
    with torch.device("meta"):
        net = PSPNet().build()
    assert net.backbone.depth == 101 and net.backbone.output_stride == 8
    assert [b.conv2.dilation[0] for b in net.backbone.layer4] == [4, 4, 4]
    assert net.ppm.bins == (1, 2, 3, 6) and net.ppm.reduced_channels == 512 and net.ppm.out_channels == 4096
    conv, dropout, classifier = net.head[0], net.head[3], net.head[4]
    assert (conv.in_channels, conv.out_channels, conv.kernel_size) == (4096, 512, (3, 3))
    assert isinstance(dropout, nn.Dropout2d) and dropout.p == 0.1
    assert (classifier.in_channels, classifier.out_channels, classifier.kernel_size) == (512, 21, (1, 1))
    assert (net.aux_head[0].in_channels, net.aux_head[0].out_channels) == (1024, 256)  # on layer3
    assert net.aux_head[4].out_channels == 21


def _small(**kw: object) -> PSPNetModule:
    torch.manual_seed(0)
    return PSPNetModule(**{"in_channels": 2, "num_classes": 3, "depth": 18, "head_channels": 8, **kw})


def test_aux_head_runs_in_training_only_on_layer3() -> None:
    net = _small()
    seen: list[torch.Size] = []
    net.aux_head.register_forward_hook(lambda m, args, out: seen.append(args[0].shape))
    x = torch.randn(2, 2, 40, 56)
    with torch.no_grad():
        out = net.eval()(x)
    assert isinstance(out, torch.Tensor) and out.shape == (2, 3, 40, 56)
    assert seen == []
    main, aux = net.train()(x)
    assert main.shape == aux.shape == (2, 3, 40, 56)
    assert seen == [torch.Size([2, 256, 5, 7])]  # layer3 of ResNet-18 at stride 8


def test_loss_adds_the_aux_term_with_weight_0_4() -> None:
    model = PSPNet(backbone="resnet18", in_channels=2, num_classes=3, head_channels=8)
    assert model.aux_loss_weights == (0.4,)
    torch.manual_seed(0)
    main, aux = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    target = torch.randint(0, 3, (2, 8, 8))
    target[0, 0, 0] = 255  # ignored in both terms
    ce = lambda z: F.cross_entropy(z, target, ignore_index=255)  # noqa: E731
    assert torch.allclose(model.loss((main, aux), target), ce(main) + 0.4 * ce(aux))
    assert torch.allclose(model.loss(main, target), ce(main))  # eval-mode output: main logits only
    no_aux = PSPNet(backbone="resnet18", aux_weight=0.0, num_classes=3)
    assert torch.allclose(no_aux.loss((main, aux), target), ce(main))


def test_aux_gradient_reaches_layer3_through_the_aux_head() -> None:
    model = PSPNet(backbone="resnet18", in_channels=1, num_classes=2, head_channels=8)
    net = model.build().train()
    main, aux = net(torch.randn(2, 1, 32, 32))
    (0.4 * aux.sum()).backward()  # the aux term alone
    assert net.aux_head[0].weight.grad is not None and net.aux_head[0].weight.grad.abs().sum() > 0
    assert net.head[0].weight.grad is None  # the main head is not on the aux path
    assert net.backbone.layer3[0].conv1.weight.grad.abs().sum() > 0
    assert net.backbone.layer4[0].conv1.weight.grad is None


def test_plugin_reduce_takes_the_main_logits_of_a_training_tuple() -> None:
    model = PSPNet(backbone="resnet18", num_classes=3)
    main = torch.randn(2, 3, 4, 4)
    assert torch.equal(model.reduce((main, -main))["labels"], model.reduce(main)["labels"])


def test_output_stride_16_and_sizes() -> None:
    model = PSPNet(output_stride=16, backbone="resnet18", head_channels=8)
    assert model.output_stride == model.size_divisor == 16
    assert PSPNet().output_stride == PSPNet().size_divisor == 8
    net = model.build().eval()
    with torch.no_grad():
        assert net(torch.randn(1, 3, 48, 64)).shape == (1, 21, 48, 64)


def test_docstring_example() -> None:
    result = doctest.testmod(pspnet_module, verbose=False)
    assert result.attempted > 0 and result.failed == 0
