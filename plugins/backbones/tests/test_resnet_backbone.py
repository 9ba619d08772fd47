"""The shared ResNet backbone: output strides, multi-grid rates, band adaptation and weight loading."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.models import resnet18

from raysegment.weights import WeightsError
from raysegment_backbones import ResNetBackbone, resnet


@pytest.mark.parametrize("output_stride", [8, 16, 32])
@pytest.mark.parametrize("depth", [18, 50])
def test_feature_strides_match_declared(depth: int, output_stride: int) -> None:
    body = ResNetBackbone(depth, in_channels=2, output_stride=output_stride).eval()
    with torch.no_grad():
        feats = body(torch.zeros(1, 2, 64, 96))
    for name, feat in feats.items():
        assert feat.shape[1] == body.channels[name], name
        assert feat.shape[-2:] == (64 // body.strides[name], 96 // body.strides[name]), name
    assert body.strides["layer4"] == output_stride


def test_multi_grid_multiplies_the_last_stage_rates() -> None:
    body = ResNetBackbone(50, output_stride=16, multi_grid=(1, 2, 4))
    rates = [blk.conv2.dilation[0] for blk in body.layer4]
    assert rates == [2, 4, 8]  # rate 2 at OS 16 times the grid (DeepLab-v3, Sec. 3.2)
    assert all(blk.conv2.padding == blk.conv2.dilation for blk in body.layer4)
    assert [blk.conv2.dilation[0] for blk in body.layer3] == [1] * len(body.layer3)


def test_dilation_keeps_the_receptive_field_size_of_the_strided_net() -> None:
    # At OS 8 the layer3/4 kernels are dilated by 2 and 4: same parameters as the strided ResNet.
    dense = ResNetBackbone(18, output_stride=8)
    plain = ResNetBackbone(18, output_stride=32)
    assert sum(p.numel() for p in dense.parameters()) == sum(p.numel() for p in plain.parameters())


def test_torchvision_weights_load_and_rgb_kernels_expand_to_more_bands(tmp_path) -> None:
    torch.manual_seed(0)
    ref = resnet18(weights=None)
    path = tmp_path / "resnet18.pth"
    torch.save(ref.state_dict(), path)
    body = resnet(18, in_channels=5, weights=str(path))
    assert torch.equal(body.layer3[1].conv2.weight, ref.layer3[1].conv2.weight)
    w = body.conv1.weight
    assert w.shape[1] == 5
    # RGB kernels repeated cyclically (R G B R G), each shared by its copies: equal bands give RGB's activations.
    assert torch.allclose(w.sum(dim=1), ref.conv1.weight.sum(dim=1), atol=1e-6)
    assert torch.allclose(w[:, 3], ref.conv1.weight[:, 0] / 2)
    assert torch.allclose(w[:, 2], ref.conv1.weight[:, 2])


def test_mismatching_weights_name_the_tensor(tmp_path) -> None:
    state = resnet18(weights=None).state_dict()
    path = tmp_path / "bad.pth"
    torch.save({**state, "layer2.0.conv1.weight": torch.zeros(1, 1, 3, 3)}, path)
    with pytest.raises(WeightsError, match="layer2.0.conv1.weight"):
        resnet(18, weights=str(path))
    with pytest.raises(WeightsError, match="layer1.0.conv1.weight"):
        torch.save({k: v for k, v in state.items() if k != "layer1.0.conv1.weight"}, path)
        resnet(18, weights=str(path))


def test_enum_name_reads_the_local_cache_only(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(WeightsError, match="not in the local cache"):
        resnet(18, weights="ResNet18_Weights.IMAGENET1K_V1")
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    ref = resnet18(weights=None)
    torch.save(ref.state_dict(), cache / "resnet18-f37072fd.pth")
    body = resnet(18, weights="ResNet18_Weights.IMAGENET1K_V1")
    assert torch.equal(body.conv1.weight, ref.conv1.weight)


def test_bad_arguments_are_value_errors() -> None:
    for kwargs in ({"depth": 20}, {"depth": 18, "output_stride": 4}, {"depth": 18, "in_channels": 0}):
        with pytest.raises(ValueError):
            ResNetBackbone(**kwargs)
    assert isinstance(ResNetBackbone(18).layer1, nn.Sequential)
