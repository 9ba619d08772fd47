"""The ESP module's mechanism: reduce, 5 dilated branches (rates 1..16), HFF, residual."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from raysegment_espnet.esp import BN_EPS, ESP, InputProjection, StridedESP, pyramid_widths


def _neutral_norm(module: nn.Module) -> None:
    """BatchNorm as identity / sqrt(1 + eps) in eval mode, PReLU as identity."""
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
            m.running_mean.zero_()
            m.running_var.fill_(1.0)
        elif isinstance(m, nn.PReLU):
            nn.init.ones_(m.weight)


@pytest.mark.parametrize(("n_out", "expected"), [(64, (5, 12, 16)), (128, (5, 25, 28)), (40, (5, 8, 8)),
                                                 (20, (5, 4, 4)), (7, (5, 1, 3)), (2, (2, 1, 1)), (1, (1, 1, 1))])
def test_branch_widths(n_out: int, expected: tuple[int, int, int]) -> None:
    """d = N // K and the rate-1 branch takes the remainder, so the widths add up to N."""
    k, d, n1 = pyramid_widths(n_out)
    assert (k, d, n1) == expected
    assert n1 + (k - 1) * d == n_out


@pytest.mark.parametrize("cls", [ESP, StridedESP])
def test_five_dilated_branches(cls: type) -> None:
    module = cls(64, 64)
    branches = module.branches()
    assert module.rates == (1, 2, 4, 8, 16)
    assert [b.conv.dilation for b in branches] == [(r, r) for r in (1, 2, 4, 8, 16)]
    assert [b.conv.padding for b in branches] == [(r, r) for r in (1, 2, 4, 8, 16)]  # 'same' size
    assert all(b.conv.kernel_size == (3, 3) and b.conv.stride == (1, 1) for b in branches)
    assert [b.conv.in_channels for b in branches] == [12] * 5  # all read the reduced d = 64 // 5 map
    assert [b.conv.out_channels for b in branches] == [16, 12, 12, 12, 12]
    assert module.c1.conv.in_channels == 64 and module.c1.conv.out_channels == 12


def test_reduction_pointwise_vs_strided() -> None:
    plain, strided = ESP(64, 64).c1.conv, StridedESP(19, 64).c1.conv
    assert plain.kernel_size == (1, 1) and plain.stride == (1, 1)
    assert strided.kernel_size == (3, 3) and strided.stride == (2, 2) and strided.padding == (1, 1)
    y = StridedESP(19, 64)(torch.randn(2, 19, 16, 24))
    assert y.shape == (2, 64, 8, 12)


def _identity_like(module: ESP | StridedESP, scales: list[float]) -> None:
    """Reduction keeps the first d input channels; branch k multiplies by scales[k] (centre tap)."""
    with torch.no_grad():
        for p in module.parameters():
            p.zero_()
        w = module.c1.conv.weight  # (d, N, kh, kw)
        for i in range(w.shape[0]):
            w[i, i, w.shape[2] // 2, w.shape[3] // 2] = 1.0
        for branch, s in zip(module.branches(), scales):
            bw = branch.conv.weight  # (out, d, 3, 3)
            for o in range(bw.shape[0]):
                bw[o, o % bw.shape[1], 1, 1] = s


def test_hff_output_is_cumulative_sums() -> None:
    """With identity-like weights the pyramid gives [y1, y2, y2+y4, y2+y4+y8, y2+y4+y8+y16]."""
    module = ESP(10, 10)  # d = n1 = 2
    scales = [1.0, 2.0, 3.0, 5.0, 7.0]
    _identity_like(module, scales)
    x = torch.randn(1, 10, 9, 11)
    r = x[:, :2]
    y = [s * r for s in scales]
    expected = torch.cat([y[0], y[1], y[1] + y[2], y[1] + y[2] + y[3], y[1] + y[2] + y[3] + y[4]], 1)
    with torch.no_grad():
        got = module.pyramid(x)
    torch.testing.assert_close(got, expected)
    plain = torch.cat(y, 1)  # a pyramid without HFF would give this
    assert not torch.allclose(got, plain)


def test_esp_forward_is_residual_plus_hff() -> None:
    module = ESP(10, 10).eval()
    _identity_like(module, [1.0, 2.0, 3.0, 5.0, 7.0])
    _neutral_norm(module)
    x = torch.randn(2, 10, 8, 8)
    with torch.no_grad():
        got = module(x)
        expected = (x + module.pyramid(x)) / (1.0 + BN_EPS) ** 0.5
    torch.testing.assert_close(got, expected)


def test_residual_only_in_non_strided_module() -> None:
    """Zero convolutions: the plain module still passes its input through, the strided one cannot."""
    plain, strided = ESP(20, 20).eval(), StridedESP(20, 20).eval()
    assert plain.residual is True and strided.residual is False
    for module in (plain, strided):
        _neutral_norm(module)
        with torch.no_grad():
            for m in module.modules():
                if isinstance(m, nn.Conv2d):
                    m.weight.zero_()
    x = torch.randn(2, 20, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(plain(x), x / (1.0 + BN_EPS) ** 0.5)
        assert torch.count_nonzero(strided(x)) == 0


def test_residual_defaults_to_matching_shapes() -> None:
    assert ESP(40, 20).residual is False  # the decoder's module: 2C -> C
    assert ESP(64, 64).residual is True
    assert ESP(64, 64, residual=False).residual is False
    with pytest.raises(ValueError, match="n_in == n_out"):
        ESP(40, 20, residual=True)
    assert ESP(40, 20)(torch.randn(1, 40, 8, 8)).shape == (1, 20, 8, 8)


def test_few_channels_lower_branch_count() -> None:
    """An ESP module narrower than K (decoder with num_classes < 5) keeps one channel per branch."""
    module = ESP(4, 2)
    assert module.rates == (1, 2)
    assert module(torch.randn(1, 4, 8, 8)).shape == (1, 2, 8, 8)


def test_input_projection_is_average_pyramid() -> None:
    x = torch.randn(1, 3, 17, 24)
    once = torch.nn.functional.avg_pool2d(x, 3, stride=2, padding=1)
    twice = torch.nn.functional.avg_pool2d(once, 3, stride=2, padding=1)
    torch.testing.assert_close(InputProjection(1)(x), once)
    torch.testing.assert_close(InputProjection(2)(x), twice)
    assert once.shape[-2:] == (9, 12)  # ceil(H / 2), as a 3x3 stride-2 padded conv gives
