"""Tests of the FCN module: bilinear transposed convs, zero-initialised skips, fusion, shapes, size."""

from __future__ import annotations

import doctest

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import raysegment_classic.fcn as fcn_module
from raysegment_classic.fcn import FCN, FixedBilinearUpsample, bilinear_kernel, learned_bilinear_upsample

# Default builds (VOC: in_channels=3, num_classes=21); the paper quotes 134M for all three.
CANONICAL_PARAMS = {32: 134_346_581, 16: 134_364_410, 8: 134_376_863}


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _interior(t: torch.Tensor, border: int) -> torch.Tensor:
    return t[..., border:-border, border:-border]


def test_bilinear_kernel_is_the_reference_filter() -> None:
    k = bilinear_kernel(2)
    ramp = torch.tensor([0.25, 0.75, 0.75, 0.25])
    assert torch.allclose(k, ramp[:, None] * ramp[None, :])
    assert bilinear_kernel(16).shape == (32, 32)
    # a transposed conv spreads each input pixel over f x f outputs in total
    for f in (2, 8, 32):
        assert bilinear_kernel(f).sum().item() == pytest.approx(f * f)


@pytest.mark.parametrize("factor", [2, 8, 16, 32])
@pytest.mark.parametrize("kind", ["constant", "ramp", "random"])
def test_fixed_upsampling_equals_bilinear_interpolation(factor: int, kind: str) -> None:
    """Kernel 2f, stride f, pad f/2 = F.interpolate(bilinear, align_corners=False) away from the border."""
    torch.manual_seed(0)
    shape = (2, 3, 5, 6)
    if kind == "constant":
        x = torch.full(shape, 1.7)
    elif kind == "ramp":
        x = torch.arange(30, dtype=torch.float32).view(1, 1, 5, 6).expand(shape).clone()
    else:
        x = torch.randn(shape)
    up = FixedBilinearUpsample(3, factor)
    got = up(x)
    want = F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=False)
    assert got.shape == want.shape == (2, 3, 5 * factor, 6 * factor)
    assert torch.allclose(_interior(got, factor), _interior(want, factor), atol=1e-5)


def test_fixed_upsampling_is_frozen_and_not_a_parameter() -> None:
    up = FixedBilinearUpsample(4, 8)
    assert list(up.parameters()) == []
    assert "weight" not in up.state_dict()  # non-persistent: not a weight, not checkpointed
    assert up.weight.shape == (4, 1, 16, 16)
    with pytest.raises(ValueError, match="even"):
        FixedBilinearUpsample(4, 3)


def test_fixed_upsampling_keeps_classes_apart() -> None:
    up = FixedBilinearUpsample(3, 2)
    x = torch.zeros(1, 3, 4, 4)
    x[:, 1] = 1.0
    y = up(x)
    assert y[:, 0].abs().max() == 0 and y[:, 2].abs().max() == 0


def test_learned_2x_upsampling_starts_bilinear() -> None:
    up = learned_bilinear_upsample(3)
    assert isinstance(up, nn.ConvTranspose2d)
    assert up.kernel_size == (4, 4) and up.stride == (2, 2) and up.padding == (1, 1) and up.bias is None
    w = up.weight.detach()
    for i in range(3):
        for j in range(3):
            assert torch.equal(w[i, j], bilinear_kernel(2) if i == j else torch.zeros(4, 4))
    x = torch.randn(1, 3, 6, 7)
    with torch.no_grad():
        got = up(x)
    want = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
    assert torch.allclose(_interior(got, 2), _interior(want, 2), atol=1e-5)


@pytest.mark.parametrize("variant", [32, 16, 8])
def test_output_is_exactly_the_input_size(variant: int) -> None:
    net = FCN(in_channels=2, num_classes=3, variant=variant, width_divisor=16).eval()
    for h, w in ((32, 32), (64, 96), (96, 64)):
        with torch.no_grad():
            y = net(torch.randn(2, 2, h, w))
        assert y.shape == (2, 3, h, w)
    with pytest.raises(ValueError, match="multiples of 32"):
        net(torch.randn(1, 2, 64, 48))


def test_fully_convolutional_vgg16_head(on_meta) -> None:
    net = on_meta(FCN)  # paper widths
    assert isinstance(net.fc6, nn.Conv2d) and net.fc6.kernel_size == (7, 7)
    assert (net.fc6.in_channels, net.fc6.out_channels) == (512, 4096)
    assert isinstance(net.fc7, nn.Conv2d) and net.fc7.kernel_size == (1, 1)
    assert (net.fc7.in_channels, net.fc7.out_channels) == (4096, 4096)
    assert net.drop6.p == net.drop7.p == 0.5
    assert net.score_fr.kernel_size == (1, 1) and net.score_fr.out_channels == 21
    assert not any(isinstance(m, nn.Linear) for m in net.modules())
    convs = [m for m in net.features if isinstance(m, nn.Conv2d)]
    assert len(convs) == 13 and all(c.kernel_size == (3, 3) for c in convs)
    assert sum(isinstance(m, nn.MaxPool2d) for m in net.features) == 5


@pytest.mark.parametrize("variant", [32, 16, 8])
def test_canonical_param_count(variant: int, on_meta) -> None:
    count = n_params(on_meta(lambda: FCN(in_channels=3, num_classes=21, variant=variant)))
    assert count == CANONICAL_PARAMS[variant]
    assert abs(count - 134e6) / 134e6 < 0.01


@pytest.mark.parametrize("variant", [32, 16, 8])
def test_scoring_layers_start_at_zero(variant: int) -> None:
    net = FCN(in_channels=1, num_classes=4, variant=variant, width_divisor=16)
    scores = [name for name, m in net.named_children() if name.startswith("score_")]
    expected = {32: ["score_fr"], 16: ["score_fr", "score_pool4"], 8: ["score_fr", "score_pool4", "score_pool3"]}
    assert scores == expected[variant]
    for name in scores:
        conv = getattr(net, name)
        assert conv.kernel_size == (1, 1)
        assert not conv.weight.any() and not conv.bias.any()
    with torch.no_grad():
        assert not net.eval()(torch.randn(1, 1, 64, 64)).any()  # all-zero scores -> all-zero logits


def test_skip_layers_by_variant() -> None:
    n32, n16, n8 = (FCN(1, 2, v, width_divisor=16) for v in (32, 16, 8))
    assert not hasattr(n32, "score_pool4") and not hasattr(n32, "upscore2") and not hasattr(n32, "score_pool3")
    assert hasattr(n16, "score_pool4") and hasattr(n16, "upscore2") and not hasattr(n16, "score_pool3")
    assert hasattr(n8, "score_pool3") and hasattr(n8, "upscore_pool4")
    assert [n.upscore.factor for n in (n32, n16, n8)] == [32, 16, 8]
    assert not any(isinstance(m, nn.ConvTranspose2d) for m in n32.modules())
    assert sum(isinstance(m, nn.ConvTranspose2d) for m in n8.modules()) == 2


def _fused_inputs(net: FCN, x: torch.Tensor) -> dict[str, tuple[int, ...]]:
    """Shapes seen by each scoring / upsampling layer during a forward pass."""
    seen: dict[str, tuple[int, ...]] = {}
    hooks = [
        getattr(net, name).register_forward_hook(
            lambda m, args, out, name=name: seen.__setitem__(name, tuple(args[0].shape))
        )
        for name in ("score_fr", "score_pool4", "score_pool3", "upscore2", "upscore_pool4", "upscore")
        if hasattr(net, name)
    ]
    with torch.no_grad():
        net(x)
    for h in hooks:
        h.remove()
    return seen


def test_skips_tap_pool4_and_pool3_at_their_strides() -> None:
    net = FCN(in_channels=1, num_classes=2, variant=8, width_divisor=16).eval()
    seen = _fused_inputs(net, torch.randn(1, 1, 128, 64))
    assert seen["score_fr"] == (1, 256, 4, 2)  # fc7, stride 32
    assert seen["score_pool4"] == (1, 32, 8, 4)  # pool4, stride 16
    assert seen["upscore2"] == (1, 2, 4, 2)
    assert seen["score_pool3"] == (1, 16, 16, 8)  # pool3, stride 8
    assert seen["upscore_pool4"] == (1, 2, 8, 4)
    assert seen["upscore"] == (1, 2, 16, 8)  # fuse_pool3 -> 8x
    assert _fused_inputs(FCN(1, 2, 32, width_divisor=16).eval(), torch.randn(1, 1, 128, 64))["upscore"] == (1, 2, 4, 2)


@pytest.mark.parametrize(("variant", "skip"), [(16, "score_pool4"), (8, "score_pool4"), (8, "score_pool3")])
def test_skip_scores_are_added_to_the_upsampled_coarse_scores(variant: int, skip: str) -> None:
    """fuse = upsampled coarse scores + skip scores: a constant skip bias shifts the logits by exactly that."""
    torch.manual_seed(0)
    net = FCN(in_channels=1, num_classes=2, variant=variant, width_divisor=16).eval()
    with torch.no_grad():
        nn.init.normal_(net.score_fr.weight, std=0.1)
        x = torch.randn(1, 1, 64, 64)
        ref = net(x)
        getattr(net, skip).bias.copy_(torch.tensor([1.0, -2.0]))
        shifted = net(x)
    delta = shifted - ref
    # the skip bias reaches the output through bilinear upsamplings only, which keep a constant (inside)
    interior = delta[..., 16:-16, 16:-16]
    assert torch.allclose(interior[:, 0], torch.tensor(1.0), atol=1e-4)
    assert torch.allclose(interior[:, 1], torch.tensor(-2.0), atol=1e-4)


def test_learn_upsampling_flag() -> None:
    learned = FCN(1, 2, 8, width_divisor=16)
    frozen = FCN(1, 2, 8, width_divisor=16, learn_upsampling=False)
    assert learned.upscore2.weight.requires_grad and learned.upscore_pool4.weight.requires_grad
    assert not frozen.upscore2.weight.requires_grad and not frozen.upscore_pool4.weight.requires_grad


def test_gradients_reach_every_trainable_parameter() -> None:
    torch.manual_seed(0)
    net = FCN(in_channels=1, num_classes=2, variant=8, width_divisor=16, dropout=0.0)
    target = torch.randint(0, 2, (2, 64, 64))
    for _ in range(2):  # the zero-initialised scores block the body's gradient for one step
        net.zero_grad()
        F.cross_entropy(net(torch.rand(2, 1, 64, 64)), target).backward()
        with torch.no_grad():
            for p in net.parameters():
                p -= 0.01 * p.grad.sign()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())


def test_width_divisor_validation() -> None:
    with pytest.raises(ValueError, match="width_divisor"):
        FCN(width_divisor=3)
    with pytest.raises(ValueError, match="variant"):
        FCN(variant=4)


def test_docstring_example() -> None:
    result = doctest.testmod(fcn_module, verbose=False)
    assert result.attempted > 0 and result.failed == 0
