"""Pretrained weights: enum names from a local torch hub cache, paths, band adaptation, one-line errors.

Weight files are made here from randomly initialised torchvision modules and saved under a temporary
``$TORCH_HOME/hub/checkpoints`` with the file name of the enum's URL, which is where
``torch.hub.get_dir()`` (read at every call from ``TORCH_HOME``) puts torchvision's downloads.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torchvision
from torchvision.models import get_weight
from torchvision.models import segmentation as tv_seg

from raysegment.weights import WeightsError, expand_input_bands
from raysegment_torchvision import DeepLabV3MobileNetV3Large, FCNResNet50, LRASPPMobileNetV3Large

R50 = "ResNet50_Weights.IMAGENET1K_V1"
MBV3 = "MobileNet_V3_Large_Weights.IMAGENET1K_V1"
DLV3_MBV3 = "DeepLabV3_MobileNet_V3_Large_Weights.COCO_WITH_VOC_LABELS_V1"
LRASPP = "LRASPP_MobileNet_V3_Large_Weights.COCO_WITH_VOC_LABELS_V1"


def cached_file(hub: Path, enum_name: str) -> Path:
    return hub / "checkpoints" / os.path.basename(get_weight(enum_name).url)


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A torch hub cache holding random stand-ins for four torchvision weight files."""
    root = tmp_path_factory.mktemp("torch_home")
    (root / "hub" / "checkpoints").mkdir(parents=True)
    torch.manual_seed(0)
    modules = {
        R50: torchvision.models.resnet50(weights=None),
        MBV3: torchvision.models.mobilenet_v3_large(weights=None),
        # torchvision's published segmentation weights carry the aux head (21 VOC classes)
        DLV3_MBV3: tv_seg.deeplabv3_mobilenet_v3_large(weights=None, weights_backbone=None, aux_loss=True),
        LRASPP: tv_seg.lraspp_mobilenet_v3_large(weights=None, weights_backbone=None),
    }
    for name, module in modules.items():
        for buf in module.buffers():  # non-default BN statistics, so that a skipped tensor would show
            if buf.is_floating_point():
                buf.uniform_(0.5, 1.5)
        torch.save(module.state_dict(), cached_file(root / "hub", name))
    return root


@pytest.fixture
def torch_home(hub: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TORCH_HOME", str(hub))
    assert torch.hub.get_dir() == str(hub / "hub")
    # Nothing may be downloaded, ever.
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", _no_download)
    monkeypatch.setattr(torch.hub, "download_url_to_file", _no_download)
    return hub / "hub"


def _no_download(*args: object, **kwargs: object) -> None:
    raise AssertionError("a download was attempted")


def load(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)


def assert_backbone_equal(module: torch.nn.Module, source: dict[str, torch.Tensor], rename, first: str) -> None:
    own = module.backbone.state_dict()
    checked = 0
    for key, tensor in source.items():
        name = rename(key)
        if name is None or name == first:
            continue
        torch.testing.assert_close(own[name], tensor, rtol=0, atol=0)
        checked += 1
    assert checked == len(own) - 1


# -- backbone weights ---------------------------------------------------------------------------------
def test_resnet50_backbone_by_enum_name(torch_home: Path) -> None:
    model = FCNResNet50(num_classes=2, backbone_weights=R50)
    module = model.build()
    source = load(cached_file(torch_home, R50))
    assert_backbone_equal(module, source, model.backbone_key, "conv1.weight")
    torch.testing.assert_close(module.backbone.conv1.weight, source["conv1.weight"], rtol=0, atol=0)


@pytest.mark.parametrize("bands", [1, 4])
def test_resnet50_backbone_band_adaptation(torch_home: Path, bands: int) -> None:
    path = cached_file(torch_home, R50)
    model = FCNResNet50(in_channels=bands, num_classes=2, backbone_weights=str(path))
    module = model.build()
    rgb = load(path)["conv1.weight"]
    fitted = module.backbone.conv1.weight
    assert fitted.shape == (64, bands, 7, 7)
    torch.testing.assert_close(fitted, expand_input_bands(rgb, bands))
    if bands == 1:
        torch.testing.assert_close(fitted[:, 0], rgb.sum(dim=1))
    else:  # RGB repeated, the repeated band shared: R/2, G, B, R/2
        torch.testing.assert_close(fitted[:, 1:3], rgb[:, 1:3])
        torch.testing.assert_close(fitted[:, 0] + fitted[:, 3], rgb[:, 0])
    with torch.no_grad():
        out = model.forward(module.eval(), torch.randn(1, bands, 32, 32))
    assert out.shape == (1, 2, 32, 32)


def test_mobilenet_backbone_by_enum_name_four_bands(torch_home: Path) -> None:
    model = DeepLabV3MobileNetV3Large(in_channels=4, num_classes=2, backbone_weights=MBV3)
    module = model.build()
    source = load(cached_file(torch_home, MBV3))
    assert_backbone_equal(module, source, model.backbone_key, "0.0.weight")
    torch.testing.assert_close(module.backbone["0"][0].weight, expand_input_bands(source["features.0.0.weight"], 4))


# -- whole-model weights ----------------------------------------------------------------------------
def test_full_weights_by_enum_name_reproduce_torchvision(torch_home: Path) -> None:
    """The published weights' aux head is dropped when aux_loss is off; outputs are torchvision's."""
    torch.manual_seed(0)
    reference = tv_seg.deeplabv3_mobilenet_v3_large(weights=None, weights_backbone=None, aux_loss=True)
    reference.load_state_dict(load(cached_file(torch_home, DLV3_MBV3)))
    model = DeepLabV3MobileNetV3Large(weights=DLV3_MBV3)
    module = model.build().eval()
    assert module.aux_classifier is None
    x = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        torch.testing.assert_close(model.forward(module, x), reference.eval()(x)["out"])


def test_full_weights_load_aux_head(torch_home: Path) -> None:
    source = load(cached_file(torch_home, DLV3_MBV3))
    module = DeepLabV3MobileNetV3Large(aux_loss=True, weights=DLV3_MBV3).build()
    torch.testing.assert_close(module.aux_classifier[0].weight, source["aux_classifier.0.weight"])


def test_full_weights_without_aux_keep_random_aux_head(torch_home: Path, tmp_path: Path) -> None:
    source = {k: v for k, v in load(cached_file(torch_home, DLV3_MBV3)).items() if not k.startswith("aux_")}
    path = tmp_path / "no_aux.pt"
    torch.save(source, path)
    module = DeepLabV3MobileNetV3Large(aux_loss=True, weights=str(path)).build()
    torch.testing.assert_close(module.classifier[4].weight, source["classifier.4.weight"])
    assert module.aux_classifier is not None


def test_full_weights_four_bands(torch_home: Path) -> None:
    module = LRASPPMobileNetV3Large(in_channels=4, weights=LRASPP).build()
    source = load(cached_file(torch_home, LRASPP))
    torch.testing.assert_close(module.backbone["0"][0].weight, expand_input_bands(source["backbone.0.0.weight"], 4))
    torch.testing.assert_close(module.classifier.low_classifier.weight, source["classifier.low_classifier.weight"])


@pytest.mark.parametrize(
    ("cls", "enum_name", "tensor"),
    [(DeepLabV3MobileNetV3Large, DLV3_MBV3, "classifier.4.weight"),
     (LRASPPMobileNetV3Large, LRASPP, "classifier.low_classifier.weight")],
)
def test_classifier_that_does_not_fit_num_classes(torch_home: Path, cls: type, enum_name: str, tensor: str) -> None:
    with pytest.raises(WeightsError, match=rf"'{tensor}' has shape \(21, .*expects \(2, ") as info:
        cls(num_classes=2, weights=enum_name).build()
    assert "\n" not in str(info.value)


def test_backbone_weights_of_another_architecture(torch_home: Path) -> None:
    path = cached_file(torch_home, MBV3)
    with pytest.raises(WeightsError, match="no counterpart"):
        FCNResNet50(backbone_weights=str(path)).build()


def test_enum_not_in_cache_is_an_error_not_a_download(torch_home: Path) -> None:
    with pytest.raises(WeightsError, match="not in the local cache"):
        FCNResNet50(weights="FCN_ResNet50_Weights.COCO_WITH_VOC_LABELS_V1").build()


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="not found"):
        LRASPPMobileNetV3Large(weights=str(tmp_path / "nope.pt")).build()
