"""Tests of the SegNet module: VGG16-BN encoder, unpooling with the encoder's indices, shapes, size."""

from __future__ import annotations

import doctest

import pytest
import torch
from torch import nn

import raysegment_classic.segnet as segnet_module
from raysegment_classic.segnet import SegNet, decoder_channels

# in_channels=3, num_classes=11 (CamVid); the paper quotes 29.5M.
CANONICAL_PARAMS = 29_449_355


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_canonical_param_count(on_meta) -> None:
    count = n_params(on_meta(lambda: SegNet(in_channels=3, num_classes=11)))
    assert count == CANONICAL_PARAMS
    assert abs(count - 29.5e6) / 29.5e6 < 0.01


def test_encoder_is_vgg16_bn_with_indices(on_meta) -> None:
    net = on_meta(SegNet)
    convs = [m for m in net.features if isinstance(m, nn.Conv2d)]
    pools = [m for m in net.features if isinstance(m, nn.MaxPool2d)]
    assert [c.out_channels for c in convs] == [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
    assert sum(isinstance(m, nn.BatchNorm2d) for m in net.features) == 13
    assert len(pools) == 5 and all(p.kernel_size == 2 and p.stride == 2 and p.return_indices for p in pools)
    assert not any(isinstance(m, nn.Linear) for m in net.modules())


def test_decoder_mirrors_encoder_without_learned_upsampling(on_meta) -> None:
    net = on_meta(SegNet)
    assert decoder_channels() == [[512, 512, 512], [512, 512, 256], [256, 256, 128], [128, 64], [64, -1]]
    assert not any(isinstance(m, (nn.ConvTranspose2d, nn.Upsample)) for m in net.modules())
    assert isinstance(net.unpool, nn.MaxUnpool2d) and net.unpool.kernel_size == (2, 2)
    outs = [[m.out_channels for m in stage if isinstance(m, nn.Conv2d)] for stage in net.decoder]
    assert outs == [[512, 512, 512], [512, 512, 256], [256, 256, 128], [128, 64], [64]]
    for stage in net.decoder:  # conv + BN + ReLU blocks
        kinds = [type(m) for m in stage]
        assert kinds == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU] * (len(stage) // 3)
    assert net.score.kernel_size == (3, 3) and net.score.out_channels == 11  # conv1_1_D


def test_unpooling_hand_made() -> None:
    """Each pooled value goes back to the position of its maximum; every other position is zero."""
    net = SegNet(in_channels=1, num_classes=2, width_divisor=64)
    pool = next(m for m in net.features if isinstance(m, nn.MaxPool2d))
    x = torch.tensor([[1.0, 2.0, 0.0, 0.0],
                      [0.0, 0.5, 0.0, 7.0],
                      [3.0, 0.0, 0.0, 4.0],
                      [0.0, 0.0, 5.0, 0.0]]).view(1, 1, 4, 4)
    pooled, idx = pool(x)
    assert pooled.flatten().tolist() == [2.0, 7.0, 3.0, 5.0]
    up = net.unpool(pooled, idx, output_size=x.shape[-2:])
    want = torch.tensor([[0.0, 2.0, 0.0, 0.0],
                         [0.0, 0.0, 0.0, 7.0],
                         [3.0, 0.0, 0.0, 0.0],
                         [0.0, 0.0, 5.0, 0.0]]).view(1, 1, 4, 4)
    assert torch.equal(up, want)


def test_decoder_unpools_with_the_matching_encoder_indices() -> None:
    """The deepest decoder stage uses pool5's indices, ..., the last uses pool1's; its output is sparse."""
    torch.manual_seed(0)
    net = SegNet(in_channels=2, num_classes=3, width_divisor=16).eval()
    pooled: list[torch.Tensor] = []
    unpooled: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    hooks = [m.register_forward_hook(lambda m, args, out: pooled.append(out[1]))
             for m in net.features if isinstance(m, nn.MaxPool2d)]
    hooks.append(net.unpool.register_forward_hook(lambda m, args, out: unpooled.append((args[0], args[1], out))))
    with torch.no_grad():
        net(torch.randn(2, 2, 64, 96))
    for h in hooks:
        h.remove()
    assert len(pooled) == len(unpooled) == 5
    for (x, idx, out), enc_idx in zip(unpooled, reversed(pooled)):
        assert idx is enc_idx  # the very tensor the encoder stored
        assert out.shape[-2:] == (2 * x.shape[-2], 2 * x.shape[-1])
        flat, flat_idx = out.flatten(2), idx.flatten(2)
        assert torch.equal(flat.gather(2, flat_idx), x.flatten(2))  # values at the argmax positions
        mask = torch.zeros_like(flat, dtype=torch.bool).scatter_(2, flat_idx, True)
        assert not flat[~mask].any()  # zero everywhere else: 3 of every 4 positions
        assert mask.float().mean().item() == pytest.approx(0.25)


@pytest.mark.parametrize(("h", "w"), [(32, 32), (64, 96), (96, 64), (33, 47)])
def test_output_is_exactly_the_input_size(h: int, w: int) -> None:
    net = SegNet(in_channels=3, num_classes=4, width_divisor=16).eval()
    with torch.no_grad():
        y = net(torch.randn(2, 3, h, w))
    assert y.shape == (2, 4, h, w)
    assert torch.isfinite(y).all()


def test_rejects_too_small_input() -> None:
    with pytest.raises(ValueError, match="at least 32x32"):
        SegNet(1, 2, width_divisor=16)(torch.randn(1, 1, 16, 64))


def test_gradients_reach_every_parameter() -> None:
    net = SegNet(in_channels=1, num_classes=2, width_divisor=16)
    out = net(torch.randn(2, 1, 64, 64))
    nn.functional.cross_entropy(out, torch.randint(0, 2, (2, 64, 64))).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())


def test_width_divisor_validation() -> None:
    with pytest.raises(ValueError, match="width_divisor"):
        SegNet(width_divisor=5)


def test_docstring_example() -> None:
    result = doctest.testmod(segnet_module, verbose=False)
    assert result.attempted > 0 and result.failed == 0
