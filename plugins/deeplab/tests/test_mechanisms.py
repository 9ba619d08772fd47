"""Unit tests of each paper mechanism: atrous VGG, ASPP-L sums, v3 ASPP rates/image pooling, v3+ decoder."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from raysegment_deeplab import DeepLabV1, DeepLabV2, DeepLabV3, DeepLabV3Plus
from raysegment_deeplab.deeplabv2 import ASPPL
from raysegment_deeplab.deeplabv3 import ASPP, ImagePooling, SeparableConv2d, aspp_rates
from raysegment_deeplab.deeplabv3plus import Decoder

torch.set_num_threads(1)
SMALL = {"backbone": "resnet18", "in_channels": 3, "num_classes": 5}


def dilations(module: nn.Module) -> list[int]:
    return [m.dilation[0] for m in module.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]


# -- DeepLab-v1 (LargeFOV) ---------------------------------------------------------------------
def test_v1_large_fov_structure() -> None:
    net = DeepLabV1(num_classes=21).build()
    pools = [m for m in net.features if isinstance(m, nn.MaxPool2d)]
    assert [p.stride for p in pools] == [2, 2, 2, 1, 1]  # pool4 and pool5 do not subsample
    assert all(p.kernel_size == 3 and p.padding == 1 for p in pools)
    convs = [m for m in net.features if isinstance(m, nn.Conv2d)]
    assert len(convs) == 13 and [c.dilation[0] for c in convs] == [1] * 10 + [2, 2, 2]  # conv5: rate 2
    head = net.head
    assert head.fc6.kernel_size == (3, 3) and head.fc6.dilation == (12, 12) and head.fc6.out_channels == 1024
    assert head.fc7.kernel_size == (1, 1) and head.fc7.out_channels == 1024
    assert head.fc8.out_channels == 21
    assert isinstance(head.drop, nn.Dropout2d) and head.drop.p == 0.5


def test_v1_output_stride_8_and_full_size_logits() -> None:
    model = DeepLabV1(in_channels=2, num_classes=3, dropout=0.0)
    assert model.output_stride == 8 and model.size_divisor == 8
    net = model.build().eval()
    x = torch.randn(1, 2, 48, 80)
    with torch.no_grad():
        assert net.features(x).shape == (1, 512, 6, 10)
        assert net(x).shape == (1, 3, 48, 80)


def test_v1_learns_a_stride8_pattern() -> None:
    """Gradients reach every part: a target the stride-8 score map can draw (8 x 8 blocks, bright = class 1)
    is fitted quickly. (On the EM membranes of ModelLearns the plain, BN-free VGG16 from random init only
    learns the class prior in the kit's budget; the paper starts from ImageNet weights.)"""
    g = torch.Generator().manual_seed(0)
    blocks = (torch.rand(2, 1, 4, 4, generator=g) > 0.5).float()
    target = nn.functional.interpolate(blocks, scale_factor=8, mode="nearest")[:, 0].long()
    x = 0.3 + 0.4 * target[:, None].float() + 0.1 * torch.randn(2, 1, 32, 32, generator=g)
    model = DeepLabV1(in_channels=1, num_classes=2, dropout=0.0)
    torch.manual_seed(0)
    net = model.build().train()
    optim = torch.optim.Adam(net.parameters(), lr=1e-4)
    losses = []
    for _ in range(12):
        optim.zero_grad()
        loss = model.loss(model.forward(net, x), target)
        loss.backward()
        optim.step()
        losses.append(loss.item())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())
    assert losses[-1] < 0.85 * losses[0], losses


# -- DeepLab-v2 (ASPP-L) -----------------------------------------------------------------------
def test_v2_aspp_l_rates_and_single_conv_branches() -> None:
    net = DeepLabV2(**SMALL).build()
    assert net.aspp.rates == (6, 12, 18, 24)
    assert len(net.aspp.branches) == 4
    for rate, conv in zip((6, 12, 18, 24), net.aspp.branches):
        assert isinstance(conv, nn.Conv2d) and conv.kernel_size == (3, 3)
        assert conv.dilation == (rate, rate) and conv.padding == (rate, rate)
        assert conv.in_channels == 512 and conv.out_channels == 5  # each branch predicts class scores


def test_v2_branches_are_summed() -> None:
    torch.manual_seed(0)
    aspp = ASPPL.single_conv(8, 3)
    x = torch.randn(2, 8, 30, 30)
    parts = [b(x) for b in aspp.branches]
    assert torch.allclose(aspp(x), sum(parts), atol=1e-6)
    # and not any single branch or a concatenation
    assert aspp(x).shape == (2, 3, 30, 30)
    assert not torch.allclose(aspp(x), parts[0])


def test_v2_net_sums_branch_scores_then_upsamples() -> None:
    torch.manual_seed(0)
    net = DeepLabV2(**SMALL).build().eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        feat = net.backbone(x)["layer4"]
        summed = sum(b(feat) for b in net.aspp.branches)
        want = nn.functional.interpolate(summed, size=(64, 64), mode="bilinear", align_corners=False)
        assert torch.allclose(net(x), want, atol=1e-5)


def test_v2_vgg16_backbone_uses_large_fov_branches() -> None:
    model = DeepLabV2(backbone="vgg16", in_channels=1, num_classes=4)
    net = model.build()
    assert [b.fc6.dilation[0] for b in net.aspp.branches] == [6, 12, 18, 24]
    assert all(b.fc6.out_channels == 1024 and b.fc8.out_channels == 4 for b in net.aspp.branches)
    assert model.output_stride == 8
    with torch.no_grad():
        assert net.eval()(torch.randn(1, 1, 32, 40)).shape == (1, 4, 32, 40)


def test_v2_default_is_resnet101_at_os8() -> None:
    model = DeepLabV2()
    assert model.params["backbone"] == "resnet101" and model.output_stride == 8 and model.size_divisor == 8


# -- atrous backbone: output stride ------------------------------------------------------------
@pytest.mark.parametrize(("os_", "cls"), [(8, DeepLabV3), (16, DeepLabV3), (8, DeepLabV2), (16, DeepLabV2)])
def test_output_stride_feature_sizes(os_: int, cls: type) -> None:
    net = cls(**SMALL, output_stride=os_).build().eval()
    with torch.no_grad():
        feats = net.backbone(torch.randn(1, 3, 64, 96))
        assert feats["layer4"].shape[-2:] == (64 // os_, 96 // os_)
        assert feats["layer1"].shape[-2:] == (16, 24)
        assert net(torch.randn(1, 3, 64, 96)).shape == (1, 5, 64, 96)


# -- DeepLab-v3 --------------------------------------------------------------------------------
def test_v3_aspp_rates_double_at_os8() -> None:
    assert aspp_rates(16) == (6, 12, 18) and aspp_rates(8) == (12, 24, 36)
    for os_, rates in ((16, [6, 12, 18]), (8, [12, 24, 36])):
        model = DeepLabV3(**SMALL, output_stride=os_)
        assert model.output_stride == os_ and model.size_divisor == os_
        aspp = model.build().aspp
        assert list(aspp.rates) == rates
        assert dilations(aspp) == rates  # only the three atrous branches have 3x3 kernels


def test_v3_aspp_branches() -> None:
    aspp = DeepLabV3(**SMALL).build().aspp
    assert isinstance(aspp, ASPP) and len(aspp.branches) == 5
    one = aspp.branches[0][0]
    assert one.kernel_size == (1, 1) and one.out_channels == 256
    for branch in aspp.branches[1:4]:  # plain (not separable) 3x3 atrous conv + BN + ReLU
        assert isinstance(branch[0], nn.Conv2d) and branch[0].groups == 1 and branch[0].out_channels == 256
        assert isinstance(branch[1], nn.BatchNorm2d)
    assert aspp.project[0].in_channels == 5 * 256 and aspp.project[0].out_channels == 256
    assert isinstance(aspp.project[1], nn.BatchNorm2d)
    assert not any(isinstance(m, SeparableConv2d) for m in aspp.modules())


def test_v3_image_pooling_branch() -> None:
    torch.manual_seed(0)
    aspp = DeepLabV3(**SMALL).build().aspp.eval()
    pool = aspp.branches[-1]
    assert isinstance(pool, ImagePooling) and isinstance(pool.pool, nn.AdaptiveAvgPool2d)
    assert pool.conv[0].kernel_size == (1, 1) and isinstance(pool.conv[1], nn.BatchNorm2d)
    x = torch.randn(1, 512, 4, 6)
    with torch.no_grad():
        y = pool(x)
        assert y.shape == (1, 256, 4, 6)
        assert torch.allclose(y, y[..., :1, :1].expand_as(y))  # one image-level vector, broadcast
        # image-level: any change anywhere changes the branch everywhere
        x2 = x.clone()
        x2[..., 0, 0] += 10
        assert not torch.allclose(pool(x2)[..., 3, 5], y[..., 3, 5])


def test_v3_multi_grid_rates_in_block4() -> None:
    with torch.device("meta"):  # structure only
        for os_, want in ((16, [2, 4, 8]), (8, [4, 8, 16])):
            net = DeepLabV3(backbone="resnet50", output_stride=os_).build()
            assert [b.conv2.dilation[0] for b in net.backbone.layer4] == want
            assert [b.conv2.stride[0] for b in net.backbone.layer4] == [1, 1, 1]
        net = DeepLabV3(backbone="resnet50", multi_grid="1,1,1").build()
    assert [b.conv2.dilation[0] for b in net.backbone.layer4] == [2, 2, 2]


def test_v3_head_is_1x1_classifier() -> None:
    net = DeepLabV3(**SMALL).build()
    assert net.classifier.kernel_size == (1, 1) and net.classifier.in_channels == 256
    assert net.classifier.out_channels == 5


# -- DeepLab-v3+ -------------------------------------------------------------------------------
def test_v3plus_separable_atrous_convs_in_aspp_and_decoder() -> None:
    net = DeepLabV3Plus(**SMALL).build()
    atrous = net.aspp.branches[1:4]
    assert all(isinstance(b, SeparableConv2d) for b in atrous)
    assert [b.depthwise.dilation[0] for b in atrous] == [6, 12, 18]
    for sep in [*atrous, *net.decoder.refine]:
        dw, bn1, pw, bn2, act = sep
        assert dw.groups == dw.in_channels == dw.out_channels and dw.kernel_size == (3, 3)
        assert isinstance(bn1, nn.BatchNorm2d) and pw.kernel_size == (1, 1) and isinstance(bn2, nn.BatchNorm2d)
        assert isinstance(act, nn.ReLU)
    assert [s.pointwise.out_channels for s in net.decoder.refine] == [256, 256]
    assert isinstance(net.aspp.branches[-1], ImagePooling)
    assert net.backbone.output_stride == 16


def test_v3plus_low_level_48_channel_projection() -> None:
    net = DeepLabV3Plus(**SMALL).build().eval()
    reduce = net.decoder.reduce[0]
    assert reduce.kernel_size == (1, 1) and reduce.in_channels == 64 and reduce.out_channels == 48  # resnet18 layer1
    with torch.device("meta"):
        assert DeepLabV3Plus(backbone="resnet50").build().decoder.reduce[0].in_channels == 256
    seen: dict[str, tuple[int, ...]] = {}

    def record(module: nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        seen["in"] = tuple(args[0].shape)

    hook = net.decoder.refine.register_forward_hook(record)
    with torch.no_grad():
        out = net(torch.randn(1, 3, 64, 96))
    hook.remove()
    assert seen["in"] == (1, 256 + 48, 16, 24)  # encoder upsampled 4x to stride 4, concatenated with 48 channels
    assert out.shape == (1, 5, 64, 96)


def test_v3plus_low_level_path_carries_information() -> None:
    torch.manual_seed(0)
    dec = Decoder(low_level_channels=8, encoder_channels=16, num_classes=2).eval()
    enc, low = torch.randn(1, 16, 4, 4), torch.randn(1, 8, 16, 16)
    with torch.no_grad():
        ref = dec(enc, low)
        assert ref.shape == (1, 2, 16, 16)
        assert not torch.allclose(dec(enc, low + 1.0), ref)


def test_v3plus_os8_option() -> None:
    net = DeepLabV3Plus(**SMALL, output_stride=8).build().eval()
    assert net.aspp.rates == (12, 24, 36)
    with torch.no_grad():
        assert net(torch.randn(1, 3, 32, 40)).shape == (1, 5, 32, 40)


# -- default builds: measured parameter counts (no paper figure except v1's 20.5M) --------------
DEFAULT_COUNTS = {
    DeepLabV1: 20_505_429,  # paper Table 2: 20.5M
    DeepLabV2: 44_048_532,
    DeepLabV3: 58_040_661,
    DeepLabV3Plus: 45_688_261,
}


@pytest.mark.parametrize("cls", list(DEFAULT_COUNTS))
def test_default_parameter_count(cls: type) -> None:
    with torch.device("meta"):  # shapes only: no memory, no initialisation time
        net = cls().build()
    count = sum(p.numel() for p in net.parameters())
    assert count == DEFAULT_COUNTS[cls]
    if cls.paper_parameters is not None:
        assert abs(count / 1e6 - cls.paper_parameters) / cls.paper_parameters < 0.01
    assert f"{count:,}" in cls.parameter_note
