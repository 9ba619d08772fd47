"""``backbone_weights``: torchvision VGG16 / VGG16-BN state dicts into FCN and SegNet, never downloaded.

Fast tests use narrow state dicts with torchvision's key names; the ``slow`` ones save real
``torchvision.models.vgg16(weights=None)`` / ``vgg16_bn`` state dicts (528 MB) to a temporary folder.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from raysegment.weights import WeightsError, expand_input_bands
from raysegment_classic import FCN8s, FCN16s, FCN32s, SegNet
from raysegment_classic.vgg import vgg16_features

WIDTH = 16  # 64..512 -> 4..32 channels, 4096 -> 256


def narrow_vgg16_state_dict(batch_norm: bool = False, seed: int = 0) -> dict[str, torch.Tensor]:
    """A torchvision-keyed VGG16(-BN) state dict at 1/16 width: features.*, classifier.0/3/6."""
    torch.manual_seed(seed)
    features = vgg16_features(3, batch_norm=batch_norm, width_divisor=WIDTH)
    for m in features.modules():
        if isinstance(m, nn.BatchNorm2d):  # non-trivial statistics, so a wrong load shows
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.1, 0.1)
    out = {f"features.{k}": v for k, v in features.state_dict().items()}
    c5, fc = 512 // WIDTH, 4096 // WIDTH
    out.update({
        "classifier.0.weight": torch.randn(fc, c5 * 7 * 7) * 0.05, "classifier.0.bias": torch.randn(fc) * 0.1,
        "classifier.3.weight": torch.randn(fc, fc) * 0.05, "classifier.3.bias": torch.randn(fc) * 0.1,
        "classifier.6.weight": torch.randn(1000, fc), "classifier.6.bias": torch.randn(1000),
    })
    return out


def _save(state: dict[str, torch.Tensor], path: Path) -> str:
    torch.save(state, path)
    return str(path)


@pytest.mark.parametrize("plugin", [FCN32s, FCN16s, FCN8s])
def test_fcn_loads_vgg16_keys(plugin: type, tmp_path: Path) -> None:
    state = narrow_vgg16_state_dict()
    path = _save(state, tmp_path / "vgg16.pth")
    net = plugin(width_divisor=WIDTH, backbone_weights=path).build().eval()
    own = net.state_dict()
    for key, tensor in state.items():
        if key.startswith("features."):
            assert torch.equal(own[key], tensor), key
    assert torch.equal(net.fc6.weight, state["classifier.0.weight"].view(256, 32, 7, 7))
    assert torch.equal(net.fc7.weight, state["classifier.3.weight"].view(256, 256, 1, 1))
    assert torch.equal(net.fc6.bias, state["classifier.0.bias"])
    assert torch.equal(net.fc7.bias, state["classifier.3.bias"])
    # the new layers keep the paper's initialisation
    assert not net.score_fr.weight.any()


def test_fc6_conv_computes_the_classifier_on_a_7x7_window(tmp_path: Path) -> None:
    """fc6 as a 7x7 conv = classifier.0 on the flattened (C, 7, 7) pool5 map: the reshape is the right one."""
    state = narrow_vgg16_state_dict()
    net = FCN8s(width_divisor=WIDTH, backbone_weights=_save(state, tmp_path / "v.pth")).build().eval()
    pool5 = torch.randn(2, 32, 7, 7)
    with torch.no_grad():
        conv = net.fc6(pool5)[:, :, 3, 3]  # the centre sees the whole unpadded 7x7 map
        linear = F.linear(pool5.flatten(1), state["classifier.0.weight"], state["classifier.0.bias"])
        assert torch.allclose(conv, linear, atol=1e-5)
        fc7 = net.fc7(conv[:, :, None, None])[:, :, 0, 0]
        assert torch.allclose(fc7, F.linear(conv, state["classifier.3.weight"], state["classifier.3.bias"]), atol=1e-5)


def test_fcn_first_conv_fitted_to_bands(tmp_path: Path) -> None:
    state = narrow_vgg16_state_dict()
    path = _save(state, tmp_path / "v.pth")
    for bands in (1, 4):
        net = FCN32s(in_channels=bands, width_divisor=WIDTH, backbone_weights=path).build()
        assert torch.equal(net.features[0].weight, expand_input_bands(state["features.0.weight"], bands))


def test_segnet_loads_vgg16_bn_encoder(tmp_path: Path) -> None:
    state = narrow_vgg16_state_dict(batch_norm=True)
    path = _save(state, tmp_path / "vgg16_bn.pth")
    torch.manual_seed(1)
    fresh = SegNet(width_divisor=WIDTH).build()
    torch.manual_seed(1)
    net = SegNet(width_divisor=WIDTH, backbone_weights=path).build().eval()
    own = net.state_dict()
    for key, tensor in state.items():
        if key.startswith("features."):
            assert torch.equal(own[key], tensor), key
    for key, tensor in fresh.state_dict().items():  # decoder and classifier untouched
        if key.startswith(("decoder.", "score.")):
            assert torch.equal(own[key], tensor), key
    # the encoder computes what a torchvision-keyed VGG16-BN body with these weights computes
    body = vgg16_features(3, batch_norm=True, width_divisor=WIDTH)
    body.load_state_dict({k[len("features."):]: v for k, v in state.items() if k.startswith("features.")})
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        h = x
        for layer in net.features:
            h = layer(h)[0] if isinstance(layer, nn.MaxPool2d) else layer(h)
        assert torch.allclose(h, body.eval()(x))


def test_mismatch_is_one_line_naming_the_tensor(tmp_path: Path) -> None:
    path = _save(narrow_vgg16_state_dict(), tmp_path / "v.pth")
    with pytest.raises(WeightsError, match=r"features\.0\.weight.*\(8, 3, 3, 3\)") as info:
        FCN8s(width_divisor=8, backbone_weights=path).build()
    assert "\n" not in str(info.value)
    # plain VGG16 into SegNet's VGG16-BN: conv 2 sits at index 3 there, index 2 is a BN-less ReLU
    with pytest.raises(WeightsError, match="'features.2.weight' has no counterpart"):
        SegNet(width_divisor=WIDTH, backbone_weights=path).build()


def test_enum_name_read_from_the_local_cache_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(WeightsError, match="not in the local cache"):
        FCN8s(backbone_weights="VGG16_Weights.IMAGENET1K_V1").build()
    (tmp_path / "checkpoints").mkdir()
    url = torchvision.models.VGG16_Weights.IMAGENET1K_V1.url
    state = narrow_vgg16_state_dict(seed=3)
    _save(state, tmp_path / "checkpoints" / os.path.basename(url))
    net = FCN8s(width_divisor=WIDTH, backbone_weights="VGG16_Weights.IMAGENET1K_V1").build()
    assert torch.equal(net.features[0].weight, state["features.0.weight"])


# -- real torchvision state dicts (full size) -------------------------------------------------


def _torchvision_state(factory: object) -> dict[str, torch.Tensor]:
    """A torchvision model's state dict with cheap random values (its own init of 138M weights takes seconds)."""
    with torch.device("meta"):
        model = factory(weights=None)  # type: ignore[operator]
    model = model.to_empty(device="cpu")
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.is_floating_point():
                t.copy_(torch.rand(t.shape, generator=gen) * 0.02 - 0.01 if "running_var" not in name else 1.0)
            else:
                t.zero_()
    return model.state_dict()


@pytest.mark.slow
def test_real_torchvision_vgg16_into_fcn8s(tmp_path: Path) -> None:
    state = _torchvision_state(torchvision.models.vgg16)
    assert state["classifier.0.weight"].shape == (4096, 25088)
    path = _save(state, tmp_path / "vgg16.pth")
    for bands in (3, 4):
        net = FCN8s(in_channels=bands, backbone_weights=path).build()
        assert torch.equal(net.fc6.weight, state["classifier.0.weight"].view(4096, 512, 7, 7))
        assert torch.equal(net.fc7.weight.flatten(1), state["classifier.3.weight"])
        assert torch.equal(net.features[28].weight, state["features.28.weight"])
        assert torch.equal(net.features[0].weight, expand_input_bands(state["features.0.weight"], bands))
        del net


@pytest.mark.slow
def test_real_torchvision_vgg16_bn_into_segnet(tmp_path: Path) -> None:
    state = _torchvision_state(torchvision.models.vgg16_bn)
    path = _save(state, tmp_path / "vgg16_bn.pth")
    net = SegNet(backbone_weights=path).build()
    own = net.state_dict()
    assert all(torch.equal(own[k], v) for k, v in state.items() if k.startswith("features."))
