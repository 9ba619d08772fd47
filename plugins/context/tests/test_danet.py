"""DANet: position and channel attention (identity at start, row-stochastic maps), summed branches, loss."""

from __future__ import annotations

import doctest

import torch
import torch.nn.functional as F
from torch import nn

import raysegment_context.danet as danet_module
from raysegment_context import ChannelAttention, DANet, DANetModule, PositionAttention


def test_gammas_start_at_zero_so_both_modules_start_as_identity() -> None:
    torch.manual_seed(0)
    pam, cam = PositionAttention(16), ChannelAttention()
    assert pam.gamma.item() == 0.0 and cam.gamma.item() == 0.0
    assert pam.gamma.requires_grad and cam.gamma.requires_grad
    x = torch.randn(2, 16, 5, 7)
    assert torch.equal(pam(x), x)
    assert torch.equal(cam(x), x)


def test_attention_rows_sum_to_one() -> None:
    torch.manual_seed(0)
    pam = PositionAttention(16)
    x = torch.randn(2, 16, 5, 7)
    a_pos = pam.attention(x)
    a_chan = ChannelAttention.attention(x)
    assert a_pos.shape == (2, 35, 35) and a_chan.shape == (2, 16, 16)
    for a in (a_pos, a_chan):
        assert (a >= 0).all()
        assert torch.allclose(a.sum(dim=-1), torch.ones(a.shape[:2]), atol=1e-5)


def test_pam_widths_and_formula() -> None:
    torch.manual_seed(0)
    pam = PositionAttention(32)
    assert (pam.query.out_channels, pam.key.out_channels, pam.value.out_channels) == (4, 4, 32)
    assert all(c.kernel_size == (1, 1) for c in (pam.query, pam.key, pam.value))
    with torch.no_grad():
        pam.gamma.fill_(0.5)
        x = torch.randn(1, 32, 3, 4)
        q, k, v = (conv(x).flatten(2) for conv in (pam.query, pam.key, pam.value))
        energy = torch.einsum("bci,bcj->bij", q, k)  # S_ij = q_i . k_j over all positions
        attn = torch.softmax(energy, dim=-1)
        out = torch.einsum("bcj,bij->bci", v, attn).view_as(x)  # E_i = sum_j A_ij V_j  (V A^T)
        assert torch.allclose(pam(x), 0.5 * out + x, atol=1e-5)


def test_cam_uses_the_max_minus_affinity_of_the_authors_code() -> None:
    torch.manual_seed(0)
    cam = ChannelAttention()
    x = torch.randn(2, 6, 3, 3)
    flat = x.flatten(2)
    energy = flat @ flat.transpose(1, 2)
    expected = torch.softmax(energy.max(dim=-1, keepdim=True).values - energy, dim=-1)
    attn = ChannelAttention.attention(x)
    assert torch.allclose(attn, expected, atol=1e-6)
    assert torch.allclose(attn, torch.softmax(-energy, dim=-1), atol=1e-6)  # the max is a per-row constant
    with torch.no_grad():
        cam.gamma.fill_(2.0)
        assert torch.allclose(cam(x), 2.0 * (expected @ flat).view_as(x) + x, atol=1e-5)


def test_default_build_widths() -> None:
    with torch.device("meta"):
        net = DANet().build()
    assert net.backbone.depth == 101 and net.backbone.output_stride == 8
    for branch in (net.pam_in, net.cam_in):
        conv = branch[0]
        assert (conv.in_channels, conv.out_channels, conv.kernel_size) == (2048, 512, (3, 3))
        assert isinstance(branch[1], nn.BatchNorm2d) and isinstance(branch[2], nn.ReLU)
    for branch in (net.pam_out, net.cam_out):
        assert (branch[0].in_channels, branch[0].out_channels, branch[0].kernel_size) == (512, 512, (3, 3))
    assert (net.pam.query.out_channels, net.pam.value.out_channels) == (64, 512)
    for head in (net.classifier, net.pam_classifier, net.cam_classifier):
        assert isinstance(head[0], nn.Dropout2d) and head[0].p == 0.1
        assert (head[1].in_channels, head[1].out_channels, head[1].kernel_size) == (512, 21, (1, 1))


def _small() -> DANetModule:
    torch.manual_seed(0)
    return DANetModule(in_channels=2, num_classes=3, depth=18)


def test_branch_outputs_are_summed_before_the_classifier() -> None:
    net = _small().eval()
    got: dict[str, torch.Tensor] = {}
    net.pam_out.register_forward_hook(lambda m, a, out: got.__setitem__("pam", out.clone()))
    net.cam_out.register_forward_hook(lambda m, a, out: got.__setitem__("cam", out.clone()))
    net.classifier.register_forward_hook(lambda m, a, out: got.__setitem__("fused", a[0].clone()))
    with torch.no_grad():
        net(torch.randn(1, 2, 32, 40))
    assert got["fused"].shape == (1, 128, 4, 5)
    assert torch.allclose(got["fused"], got["pam"] + got["cam"])


def test_branch_classifiers_run_in_training_only() -> None:
    net = _small()
    calls: list[str] = []
    net.pam_classifier.register_forward_hook(lambda m, a, out: calls.append("pam"))
    net.cam_classifier.register_forward_hook(lambda m, a, out: calls.append("cam"))
    x = torch.randn(2, 2, 32, 40)
    with torch.no_grad():
        out = net.eval()(x)
    assert isinstance(out, torch.Tensor) and out.shape == (2, 3, 32, 40) and calls == []
    outs = net.train()(x)
    assert len(outs) == 3 and all(o.shape == (2, 3, 32, 40) for o in outs) and calls == ["pam", "cam"]


def test_loss_sums_the_fused_and_both_branch_terms() -> None:
    model = DANet(backbone="resnet18", num_classes=3)
    assert model.aux_loss_weights == (1.0, 1.0)  # SegmentationMultiLosses in the authors' code
    torch.manual_seed(0)
    fused, pam, cam = (torch.randn(2, 3, 8, 8) for _ in range(3))
    target = torch.randint(0, 3, (2, 8, 8))
    ce = lambda z: F.cross_entropy(z, target)  # noqa: E731
    assert torch.allclose(model.loss((fused, pam, cam), target), ce(fused) + ce(pam) + ce(cam))
    assert torch.allclose(model.loss(fused, target), ce(fused))
    half = DANet(backbone="resnet18", num_classes=3, aux_weight=0.5)
    assert torch.allclose(half.loss((fused, pam, cam), target), ce(fused) + 0.5 * (ce(pam) + ce(cam)))


def test_gamma_learns_from_the_loss() -> None:
    net = _small().train()
    fused, pam, cam = net(torch.randn(2, 2, 32, 32))
    (fused.square().mean() + pam.square().mean() + cam.square().mean()).backward()
    assert net.pam.gamma.grad is not None and net.pam.gamma.grad.abs() > 0
    assert net.cam.gamma.grad is not None and net.cam.gamma.grad.abs() > 0


def test_docstring_example() -> None:
    result = doctest.testmod(danet_module, verbose=False)
    assert result.attempted > 0 and result.failed == 0
