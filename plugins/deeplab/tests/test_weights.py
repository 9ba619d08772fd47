"""backbone_weights: torchvision state dicts load into the DeepLab backbones; mismatches name the tensor."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torchvision.models import resnet18
from torchvision.models.vgg import cfgs, make_layers

import raysegment.weights
from raysegment.weights import WeightsError
from raysegment_deeplab import DeepLabV1, DeepLabV2, DeepLabV3, DeepLabV3Plus

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    torch.manual_seed(7)
    state = resnet18(weights=None).state_dict()  # what torchvision's ImageNet file holds, fc included
    path = tmp_path_factory.mktemp("w") / "resnet18.pth"
    torch.save(state, path)
    return path, state


@pytest.mark.parametrize("cls", [DeepLabV2, DeepLabV3, DeepLabV3Plus])
def test_resnet_weights_load_into_backbone(cls: type, resnet18_file: tuple[Path, dict]) -> None:
    path, state = resnet18_file
    net = cls(backbone="resnet18", num_classes=2, backbone_weights=str(path)).build()
    own = net.state_dict()
    for key in ("layer4.1.conv2.weight", "layer1.0.bn1.running_mean", "conv1.weight"):
        assert torch.equal(own[f"backbone.{key}"], state[key])


def test_resnet_weights_fit_other_band_counts(resnet18_file: tuple[Path, dict]) -> None:
    path, state = resnet18_file
    net = DeepLabV3Plus(backbone="resnet18", in_channels=1, backbone_weights=str(path)).build()
    assert torch.allclose(net.state_dict()["backbone.conv1.weight"], state["conv1.weight"].sum(1, keepdim=True))


def test_mismatching_weights_name_the_tensor(resnet18_file: tuple[Path, dict], tmp_path: Path) -> None:
    _, state = resnet18_file
    bad = dict(state)
    bad["layer2.0.conv1.weight"] = torch.zeros(128, 32, 3, 3)
    path = tmp_path / "bad.pth"
    torch.save(bad, path)
    model = DeepLabV3(backbone="resnet18", backbone_weights=str(path))
    with pytest.raises(WeightsError, match=r"layer2\.0\.conv1\.weight") as info:
        model.build()
    assert "\n" not in str(info.value)
    # weights of another depth: the first tensor resnet18 lacks is named
    with pytest.raises(WeightsError, match="layer"):
        DeepLabV2(backbone="resnet50", backbone_weights=str(resnet18_file[0])).build()


def test_backbone_weights_is_a_loads_weights_param() -> None:
    for cls in (DeepLabV1, DeepLabV2, DeepLabV3, DeepLabV3Plus):
        assert cls.param_specs()["backbone_weights"].loads_weights
        assert cls(backbone_weights="/x.pth").weight_sources() == {"backbone_weights": "/x.pth"}


# -- VGG16 (v1, and v2 with backbone=vgg16) -------------------------------------------------------
def vgg16_state(with_classifier: bool) -> dict[str, torch.Tensor]:
    """A torchvision VGG16 state dict; the big classifier tensors are broadcast views that encode indices."""
    torch.manual_seed(3)
    state = {f"features.{k}": v for k, v in make_layers(cfgs["D"]).state_dict().items()}
    if with_classifier:
        state["classifier.0.weight"] = torch.arange(25088.0).view(1, -1).expand(4096, -1)  # = input index
        state["classifier.0.bias"] = torch.arange(4096.0)
        state["classifier.3.weight"] = torch.arange(4096.0).view(-1, 1).expand(-1, 4096)  # = output index
        state["classifier.3.bias"] = torch.arange(4096.0)
        state["classifier.6.weight"] = torch.zeros(1000, 4096)
        state["classifier.6.bias"] = torch.zeros(1000)
    return state


def fake_source(monkeypatch: pytest.MonkeyPatch, state: dict[str, torch.Tensor]) -> None:
    monkeypatch.setattr(raysegment.weights, "read_state_dict", lambda source, storage_options=None: state)


def test_vgg16_features_load_and_fc_weights_are_decimated(monkeypatch: pytest.MonkeyPatch) -> None:
    state = vgg16_state(with_classifier=True)
    fake_source(monkeypatch, state)
    net = DeepLabV1(num_classes=21, backbone_weights="vgg16.pth").build()
    own = net.state_dict()
    assert torch.equal(own["features.28.weight"], state["features.28.weight"])
    fc6 = own["head.fc6.weight"]  # (1024, 512, 3, 3) from (4096, 512, 7, 7): channels ::4, taps 0/3/6
    c, ky, kx = 5, 1, 2
    assert fc6[10, c, ky, kx] == c * 49 + 3 * ky * 7 + 3 * kx
    assert torch.equal(own["head.fc6.bias"], torch.arange(0, 4096, 4.0))
    assert own["head.fc7.weight"].shape == (1024, 1024, 1, 1)
    assert own["head.fc7.weight"][7, 100, 0, 0] == 28  # output channel 7 is source channel 28
    assert own["head.fc8.weight"].shape == (21, 1024, 1, 1)  # never loaded


def test_vgg16_without_classifier_leaves_fc_random(monkeypatch: pytest.MonkeyPatch) -> None:
    state = vgg16_state(with_classifier=False)
    fake_source(monkeypatch, state)
    net = DeepLabV2(backbone="vgg16", in_channels=1, backbone_weights="vgg16.pth").build()
    own = net.state_dict()
    assert torch.allclose(own["backbone.0.weight"], state["features.0.weight"].sum(1, keepdim=True))
    assert torch.equal(own["backbone.26.weight"], state["features.26.weight"])


def test_vgg16_classifier_decimated_into_every_aspp_branch(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_source(monkeypatch, vgg16_state(with_classifier=True))
    own = DeepLabV2(backbone="vgg16", backbone_weights="vgg16.pth").build().state_dict()
    for i in range(4):
        assert torch.equal(own[f"aspp.branches.{i}.fc6.bias"], torch.arange(0, 4096, 4.0))


def test_vgg16_mismatch_names_the_tensor(monkeypatch: pytest.MonkeyPatch) -> None:
    state = vgg16_state(with_classifier=False)
    state["features.10.weight"] = torch.zeros(256, 64, 3, 3)
    fake_source(monkeypatch, state)
    with pytest.raises(WeightsError, match=r"features\.10\.weight"):
        DeepLabV1(backbone_weights="vgg16.pth").build()
    state = vgg16_state(with_classifier=True)
    state["classifier.0.weight"] = torch.zeros(4096, 100)
    fake_source(monkeypatch, state)
    with pytest.raises(WeightsError, match=r"classifier\.0\.weight"):
        DeepLabV1(backbone_weights="vgg16.pth").build()
