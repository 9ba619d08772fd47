"""RefineNet: residual conv units, multi-resolution fusion, chained residual pooling and the 4-cascade."""

from __future__ import annotations

import doctest

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import raysegment_context.refinenet as refinenet_module
from raysegment_context import (
    ChainedResidualPooling,
    MultiResolutionFusion,
    RefineNet,
    RefineNetBlock,
    RefineNetModule,
    ResidualConvUnit,
)


def _dirac_(conv: nn.Conv2d) -> None:
    with torch.no_grad():
        nn.init.dirac_(conv.weight)
        if conv.bias is not None:
            conv.bias.zero_()


@pytest.mark.parametrize("blocks", [1, 2, 4])
def test_crp_has_the_requested_chain_of_5x5_stride_1_pools_and_3x3_convs(blocks: int) -> None:
    crp = ChainedResidualPooling(6, blocks)
    assert len(crp.pools) == len(crp.convs) == blocks
    assert all(p.kernel_size == 5 and p.stride == 1 and p.padding == 2 for p in crp.pools)
    assert all(c.kernel_size == (3, 3) and c.in_channels == c.out_channels == 6 for c in crp.convs)
    assert crp(torch.randn(1, 6, 7, 9)).shape == (1, 6, 7, 9)


def test_crp_sums_every_block_of_the_chain_after_one_relu() -> None:
    crp = ChainedResidualPooling(3, 2)
    for conv in crp.convs:
        _dirac_(conv)  # identity convs: out = r + pool(r) + pool(pool(r)), r = relu(x)
    x = torch.randn(2, 3, 9, 9)
    r = x.clamp(min=0)
    pool = lambda t: F.max_pool2d(t, 5, stride=1, padding=2)  # noqa: E731
    with torch.no_grad():
        assert torch.allclose(crp(x), r + pool(r) + pool(pool(r)))
        for conv in crp.convs:
            conv.weight.zero_()
        assert torch.equal(crp(x), r)  # with zero convs only the (rectified) identity path is left


def test_rcu_is_residual_relu_conv_relu_conv_without_batch_norm() -> None:
    rcu = ResidualConvUnit(4)
    x = torch.randn(1, 4, 5, 5)
    with torch.no_grad():
        ref = x + rcu.conv2(F.relu(rcu.conv1(F.relu(x))))
        assert torch.allclose(rcu(x), ref)
        rcu.conv2.weight.zero_()
        rcu.conv2.bias.zero_()
        assert torch.equal(rcu(x), x)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in rcu.modules())


def test_fusion_convs_to_the_smallest_width_upsample_to_the_largest_resolution_and_sum() -> None:
    fusion = MultiResolutionFusion([32, 16])
    assert fusion.out_channels == 16
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in fusion.convs] == [(32, 16, (3, 3)), (16, 16, (3, 3))]
    coarse, fine = torch.randn(1, 32, 4, 6), torch.randn(1, 16, 8, 12)
    with torch.no_grad():
        out = fusion([coarse, fine])
        expected = F.interpolate(fusion.convs[0](coarse), size=(8, 12), mode="bilinear") + fusion.convs[1](fine)
        assert out.shape == (1, 16, 8, 12)
        assert torch.allclose(out, expected, atol=1e-6)
        # The order of the inputs does not decide the target size: the largest resolution does.
        swapped = MultiResolutionFusion([16, 32])
        assert swapped([fine, coarse]).shape == (1, 16, 8, 12)


def test_single_input_passes_through_fusion_unchanged() -> None:
    fusion = MultiResolutionFusion([8])
    x = torch.randn(1, 8, 3, 3)
    assert len(fusion.convs) == 0 and fusion([x]) is x


def test_refinenet_block_adapts_each_input_with_two_rcus() -> None:
    block = RefineNetBlock([32, 16], crp_blocks=3)
    assert [len(a) for a in block.adaptive] == [2, 2]
    assert all(isinstance(u, ResidualConvUnit) for a in block.adaptive for u in a)
    assert block.adaptive[0][0].conv1.in_channels == 32 and block.adaptive[1][0].conv1.in_channels == 16
    assert block.out_channels == 16 and len(block.crp.convs) == 3 and isinstance(block.output, ResidualConvUnit)
    out = block(torch.randn(1, 32, 2, 3), torch.randn(1, 16, 4, 6))
    assert out.shape == (1, 16, 4, 6)


def test_default_build_is_4_cascaded_with_512_and_256_paths_on_an_undilated_resnet101() -> None:
    model = RefineNet()
    assert model.output_stride == model.size_divisor == 32
    with torch.device("meta"):
        net = model.build()
    assert net.backbone.depth == 101 and net.backbone.output_stride == 32
    assert all(b.conv2.dilation == (1, 1) for b in net.backbone.layer4)
    assert {s: c.out_channels for s, c in net.reduce.items()} == {
        "layer1": 256, "layer2": 256, "layer3": 256, "layer4": 512}
    assert {s: c.in_channels for s, c in net.reduce.items()} == {
        "layer1": 256, "layer2": 512, "layer3": 1024, "layer4": 2048}
    assert len(net.refine4.adaptive) == 1 and net.refine4.out_channels == 512
    for block in (net.refine3, net.refine2, net.refine1):
        assert len(block.adaptive) == 2 and block.out_channels == 256
    assert [c.in_channels for c in net.refine3.fusion.convs] == [256, 512]
    for block in (net.refine4, net.refine3, net.refine2, net.refine1):
        assert len(block.crp.convs) == 2  # the paper's 2 pooling blocks
    assert len(net.final) == 2 and net.classifier.kernel_size == (1, 1) and net.classifier.out_channels == 21
    decoder = [net.reduce, net.refine4, net.refine3, net.refine2, net.refine1, net.final]
    assert not any(isinstance(m, nn.BatchNorm2d) for part in decoder for m in part.modules())


def test_crp_blocks_param_reaches_every_block() -> None:
    with torch.device("meta"):
        net = RefineNet(crp_blocks=4, backbone="resnet18", width=8).build()
    assert [len(b.crp.convs) for b in (net.refine4, net.refine3, net.refine2, net.refine1)] == [4, 4, 4, 4]


def test_cascade_resolutions_and_prediction_at_a_quarter() -> None:
    torch.manual_seed(0)
    net = RefineNetModule(in_channels=2, num_classes=3, depth=18, width=4).eval()
    sizes: dict[str, tuple[int, ...]] = {}
    for name in ("refine4", "refine3", "refine2", "refine1", "classifier"):
        getattr(net, name).register_forward_hook(lambda m, a, out, n=name: sizes.__setitem__(n, tuple(out.shape[1:])))
    with torch.no_grad():
        out = net(torch.randn(1, 2, 64, 96))
    assert sizes == {"refine4": (8, 2, 3), "refine3": (4, 4, 6), "refine2": (4, 8, 12), "refine1": (4, 16, 24),
                     "classifier": (3, 16, 24)}
    assert out.shape == (1, 3, 64, 96)


def test_every_stage_reaches_the_output() -> None:
    net = RefineNetModule(in_channels=1, num_classes=2, depth=18, width=4)
    net(torch.randn(1, 1, 64, 64)).sum().backward()
    for stage in ("layer1", "layer2", "layer3", "layer4"):
        assert net.reduce[stage].weight.grad.abs().sum() > 0, stage


def test_rejects_size_not_multiple_of_32() -> None:
    net = RefineNetModule(in_channels=1, num_classes=2, depth=18, width=4)
    with pytest.raises(ValueError, match="multiple of 32"):
        net(torch.randn(1, 1, 64, 48))


def test_docstring_example() -> None:
    result = doctest.testmod(refinenet_module, verbose=False)
    assert result.attempted > 0 and result.failed == 0
