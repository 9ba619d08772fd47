"""The adapters: registration, parameters, the mechanism each paper defines, the aux loss, counts."""

from __future__ import annotations

import importlib.metadata as md

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torchvision.models import get_weight
from torchvision.models.segmentation.deeplabv3 import ASPP, ASPPPooling
from torchvision.models.segmentation.fcn import FCNHead

from raysegment.plugin import Modality, ParamError, Sample, Task
from raysegment_torchvision import (
    AUX_WEIGHT,
    DeepLabV3MobileNetV3Large,
    DeepLabV3ResNet50,
    DeepLabV3ResNet101,
    FCNResNet50,
    FCNResNet101,
    LRASPPMobileNetV3Large,
    TorchvisionSegmentation,
    band_statistics,
)

MODELS: dict[str, type[TorchvisionSegmentation]] = {
    "fcn_resnet50": FCNResNet50,
    "fcn_resnet101": FCNResNet101,
    "deeplabv3_resnet50": DeepLabV3ResNet50,
    "deeplabv3_resnet101": DeepLabV3ResNet101,
    "deeplabv3_mobilenet_v3_large": DeepLabV3MobileNetV3Large,
    "lraspp_mobilenet_v3_large": LRASPPMobileNetV3Large,
}
# Default builds (num_classes=21, aux_loss=False), measured; the aux FCN head adds 2,365,205 on the
# ResNets (1024 -> 256 -> 21) and 3,851 on MobileNetV3 (40 -> 10 -> 21).
DEFAULT_COUNTS = {
    "fcn_resnet50": 32_957_013,
    "fcn_resnet101": 51_949_141,
    "deeplabv3_resnet50": 39_638_869,
    "deeplabv3_resnet101": 58_630_997,
    "deeplabv3_mobilenet_v3_large": 11_025_477,
    "lraspp_mobilenet_v3_large": 3_221_538,
}
AUX_COUNTS = {"resnet": 2_365_205, "mobilenet": 3_851}


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def meta_build(cls: type[TorchvisionSegmentation], **params: object) -> nn.Module:
    """The module's structure without allocating or initialising weights."""
    with torch.device("meta"):
        return cls(**params).build()


# -- registration and description --------------------------------------------------------------
def test_entry_points_registered_under_torchvision_names() -> None:
    eps = {e.name: e for e in md.entry_points(group="raysegment.models")
           if e.value.startswith("raysegment_torchvision.")}
    assert set(eps) == set(MODELS)
    for name, cls in MODELS.items():
        assert eps[name].load() is cls


@pytest.mark.parametrize("name", list(MODELS))
def test_description(name: str) -> None:
    cls = MODELS[name]
    assert cls.task is Task.SEMANTIC and cls.modality is Modality.IMAGE
    assert cls.summary and "arXiv:" in cls.paper and all(p.help for p in cls.params)
    model = cls()
    assert model.in_channels == 3 and model.num_classes == 21 and model.size_divisor == 1
    assert model.params.get("aux_loss", False) is False  # torchvision's default
    assert {p.name for p in cls.params if p.loads_weights} == {"weights", "backbone_weights"}
    assert model.output_stride == (8 if "resnet" in name else 16)
    smoke = cls(**cls.smoke_params)
    assert smoke.in_channels == 1 and smoke.params.get("aux_loss", True)  # every part: new first conv, aux head


def test_lraspp_has_no_aux_param() -> None:
    # torchvision's LR-ASPP raises NotImplementedError on aux_loss=True; the plugin does not offer it.
    with pytest.raises(ParamError, match="unknown parameter"):
        LRASPPMobileNetV3Large(aux_loss=True)


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"in_channels": 0}, "in_channels"),
        ({"num_classes": 0}, "num_classes"),
        ({"class_names": "a,b"}, "class_names"),
        ({"aux_loss": "maybe"}, "aux_loss"),
        ({"weights": "w.pt", "backbone_weights": "b.pt"}, "not both"),
        ({"weights": "DeepLabV3_ResNet50_Weights.COCO_WITH_VOC_LABELS_V1"}, "FCN_ResNet50_Weights"),
        ({"backbone_weights": "ResNet101_Weights.IMAGENET1K_V1"}, "ResNet50_Weights"),
        ({"pretrained": True}, "unknown parameter"),
    ],
)
def test_param_errors(params: dict[str, object], match: str) -> None:
    with pytest.raises(ParamError, match=match):
        FCNResNet50(**params)


def test_class_names() -> None:
    assert DeepLabV3MobileNetV3Large(num_classes=2, class_names="bg, cell").class_names() == ("bg", "cell")
    assert LRASPPMobileNetV3Large(num_classes=2).class_names() == ("class_0", "class_1")


# -- parameter counts -------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(MODELS))
def test_parameter_counts(name: str) -> None:
    """Default build measured; with aux heads, exactly torchvision's documented count (= paper_parameters)."""
    cls = MODELS[name]
    default = n_params(meta_build(cls))
    assert default == DEFAULT_COUNTS[name]
    full = n_params(meta_build(cls, aux_loss=True)) if "aux_loss" in cls.param_specs() else default
    documented = get_weight(f"{cls.weights_enum}.COCO_WITH_VOC_LABELS_V1").meta["num_params"]
    assert full == documented
    assert cls.paper_parameters is not None and abs(cls.paper_parameters * 1e6 - documented) < 1
    aux = 0 if name.startswith("lraspp") else AUX_COUNTS["resnet" if "resnet" in name else "mobilenet"]
    assert full - default == aux
    assert f"{default:,}" in cls.parameter_note


# -- architecture: what each paper defines ---------------------------------------------------------
def test_fcn_head_on_layer4() -> None:
    module = meta_build(FCNResNet50, num_classes=5, aux_loss=True)
    assert isinstance(module.classifier, FCNHead)
    assert module.classifier[0].in_channels == 2048 and module.classifier[-1].out_channels == 5
    assert module.backbone.return_layers == {"layer4": "out", "layer3": "aux"}
    assert isinstance(module.aux_classifier, FCNHead) and module.aux_classifier[0].in_channels == 1024


@pytest.mark.parametrize("cls", [DeepLabV3ResNet50, DeepLabV3ResNet101, DeepLabV3MobileNetV3Large])
def test_deeplabv3_aspp(cls: type[TorchvisionSegmentation]) -> None:
    """ASPP: a 1x1 conv, 3x3 atrous convs at rates 12, 24, 36, and image-level pooling, projected to 256."""
    aspp = meta_build(cls).classifier[0]
    assert isinstance(aspp, ASPP)
    one, *atrous, pool = aspp.convs
    assert one[0].kernel_size == (1, 1)
    assert [c[0].dilation for c in atrous] == [(12, 12), (24, 24), (36, 36)]
    assert all(c[0].kernel_size == (3, 3) and c[0].padding == c[0].dilation for c in atrous)
    assert isinstance(pool, ASPPPooling) and isinstance(pool[0], nn.AdaptiveAvgPool2d)
    assert aspp.project[0].in_channels == 5 * 256


@pytest.mark.parametrize("cls", [FCNResNet50, DeepLabV3ResNet101])
def test_resnet_dilated_to_output_stride_8(cls: type[TorchvisionSegmentation]) -> None:
    module = meta_build(cls)
    body = module.backbone
    strides = [m.stride[0] for m in (body.layer3[0].conv2, body.layer4[0].conv2)]
    assert strides == [1, 1]  # replace_stride_with_dilation=[False, True, True]
    assert body.layer3[-1].conv2.dilation == (2, 2) and body.layer4[-1].conv2.dilation == (4, 4)


def _feature_sizes(cls: type[TorchvisionSegmentation], size: int = 64) -> dict[str, int]:
    torch.manual_seed(0)
    module = cls(in_channels=3, num_classes=2).build().eval()
    with torch.no_grad():
        features = module.backbone(torch.randn(1, 3, size, size))
    return {k: size // v.shape[-1] for k, v in features.items()}


@pytest.mark.parametrize("cls", [FCNResNet50, DeepLabV3MobileNetV3Large, LRASPPMobileNetV3Large])
def test_output_stride_measured(cls: type[TorchvisionSegmentation]) -> None:
    """The classifier's input is at 1/output_stride of the input size."""
    sizes = _feature_sizes(cls)
    coarsest = sizes.get("out", sizes.get("high"))
    assert coarsest == cls().output_stride


def test_lraspp_head() -> None:
    """LR-ASPP: stride-16 features through 1x1 conv-BN-ReLU, gated by a pooled sigmoid, plus a stride-8 classifier."""
    assert _feature_sizes(LRASPPMobileNetV3Large) == {"low": 8, "high": 16}
    head = meta_build(LRASPPMobileNetV3Large, num_classes=3).classifier
    assert isinstance(head.scale[0], nn.AdaptiveAvgPool2d) and isinstance(head.scale[-1], nn.Sigmoid)
    assert head.cbr[0].kernel_size == (1, 1) and head.cbr[0].out_channels == 128
    assert head.low_classifier.in_channels == 40 and head.low_classifier.out_channels == 3
    assert head.high_classifier.in_channels == 128 and head.high_classifier.out_channels == 3


def test_lraspp_gate_modulates_high_branch() -> None:
    """Zeroing the gate's conv makes it sigmoid(0) = 0.5: the high branch is then exactly halved."""
    torch.manual_seed(0)
    head = LRASPPMobileNetV3Large(num_classes=2).build().eval().classifier
    low, high = torch.randn(1, 40, 8, 8), torch.randn(1, 960, 4, 4)
    with torch.no_grad():
        head.scale[1].weight.zero_()
        out = head({"low": low, "high": high})
        x = F.interpolate(head.cbr(high) * 0.5, size=(8, 8), mode="bilinear", align_corners=False)
        want = head.low_classifier(low) + head.high_classifier(x)
    torch.testing.assert_close(out, want)


# -- input normalisation ----------------------------------------------------------------------------
def test_band_statistics() -> None:
    mean, std = band_statistics(3)
    np.testing.assert_allclose(mean, [0.485, 0.456, 0.406])
    np.testing.assert_allclose(std, [0.229, 0.224, 0.225])
    mean, std = band_statistics(4)
    np.testing.assert_allclose(mean, [0.485, 0.456, 0.406, 0.485])
    mean, std = band_statistics(1)
    np.testing.assert_allclose(mean, [np.mean([0.485, 0.456, 0.406])], rtol=1e-6)


def test_preprocess_normalises_per_band() -> None:
    data = np.full((4, 5, 2), 255, np.uint8)
    x = DeepLabV3MobileNetV3Large(in_channels=2).preprocess(Sample(data, meta={"height": 4, "width": 5}))
    assert x.dtype == np.float32 and x.shape == (2, 4, 5)
    np.testing.assert_allclose(x[:, 0, 0], [(1 - 0.485) / 0.229, (1 - 0.456) / 0.224], rtol=1e-5)
    raw = DeepLabV3MobileNetV3Large(in_channels=2, normalize=False).preprocess(Sample(data))
    np.testing.assert_allclose(raw, 1.0)


# -- the auxiliary loss ------------------------------------------------------------------------------
def test_aux_loss_in_training() -> None:
    """Training returns (out, aux); the loss is CE(out) + 0.5 CE(aux) and trains both heads."""
    torch.manual_seed(0)
    model = DeepLabV3MobileNetV3Large(in_channels=3, num_classes=3, aux_loss=True)
    module = model.build().train()
    x, target = torch.randn(2, 3, 32, 32), torch.randint(0, 3, (2, 32, 32))
    target[:, :2, :2] = model.ignore_index
    main, aux = out = model.forward(module, x)
    assert aux.shape == main.shape == (2, 3, 32, 32)
    assert model.aux_loss_weights == (AUX_WEIGHT,)
    loss = model.loss(out, target)
    want = F.cross_entropy(main, target, ignore_index=255) + AUX_WEIGHT * F.cross_entropy(
        aux, target, ignore_index=255)
    torch.testing.assert_close(loss, want)
    assert AUX_WEIGHT == 0.5
    loss.backward()
    assert module.aux_classifier[0].weight.grad.abs().sum() > 0
    assert module.classifier[-1].weight.grad.abs().sum() > 0


def test_no_aux_head_by_default() -> None:
    model = DeepLabV3MobileNetV3Large(num_classes=2)
    module = model.build().train()
    assert module.aux_classifier is None
    out = model.forward(module, torch.randn(2, 3, 32, 32))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 2, 32, 32)


def test_aux_head_ignored_at_inference() -> None:
    """Eval returns the "out" logits of torchvision's forward, without running the aux head at all."""
    torch.manual_seed(0)
    model = DeepLabV3MobileNetV3Large(num_classes=3, aux_loss=True)
    module = model.build().eval()
    calls: list[int] = []
    handle = module.aux_classifier.register_forward_hook(lambda *args: calls.append(1))
    x = torch.randn(1, 3, 40, 48)
    with torch.no_grad():
        out = model.forward(module, x)
        handle.remove()
        ref = module(x)["out"]
    assert calls == []
    assert isinstance(out, torch.Tensor) and out.shape == (1, 3, 40, 48)
    torch.testing.assert_close(out, ref)


def test_any_input_size() -> None:
    """size_divisor is 1: logits come back at the input's exact size."""
    model = LRASPPMobileNetV3Large(in_channels=1, num_classes=2)
    module = model.build().eval()
    with torch.no_grad():
        assert model.forward(module, torch.randn(1, 1, 37, 51)).shape == (1, 2, 37, 51)


# -- band adaptation without weights -----------------------------------------------------------------
@pytest.mark.parametrize(("cls", "key"), [(FCNResNet101, "backbone.conv1.weight"),
                                          (DeepLabV3MobileNetV3Large, "backbone.0.0.weight"),
                                          (LRASPPMobileNetV3Large, "backbone.0.0.weight")])
@pytest.mark.parametrize("bands", [1, 4])
def test_first_conv_takes_any_band_count(cls: type[TorchvisionSegmentation], key: str, bands: int) -> None:
    module = meta_build(cls, in_channels=bands)
    weight = module.state_dict()[key]
    assert weight.shape[1] == bands
    assert weight.shape[0] == (64 if "conv1" in key else 16)
