"""The plugin classes: metadata, parameters and their errors, pretrained backbone weights, parameter counts."""

from __future__ import annotations

import importlib.metadata as md
from pathlib import Path

import pytest
import torch
from torchvision.models import resnet18, resnet34

from raysegment.plugin import Modality, ParamError, Task
from raysegment.weights import WeightsError
from raysegment_context import DANet, PSPNet, RefineNet

PLUGINS = {"pspnet": PSPNet, "refinenet": RefineNet, "danet": DANet}
ARXIV = {"pspnet": "arXiv:1612.01105", "refinenet": "arXiv:1611.06612", "danet": "arXiv:1809.02983"}

# Default builds (ResNet-101, torchvision stem, 21 VOC classes), counted on the meta device.
DEFAULT_PARAMETERS = {
    "pspnet": 67_949_930,  # 42.50M backbone + 4.20M pyramid + 18.89M head + 2.37M aux head (training only)
    "refinenet": 109_758_293,  # 42.50M backbone + 13.57M stage reductions + 53.33M RefineNets + 2.37M final
    "danet": 66_457_857,  # 42.50M backbone + 23.93M attention head (incl. 2 x 10,773 training-only classifiers)
}
RESNET101_BODY = 42_500_160  # torchvision resnet101 without fc


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("name", PLUGINS)
def test_metadata(name: str) -> None:
    cls = PLUGINS[name]
    model = cls()
    assert cls.task is Task.SEMANTIC and cls.modality is Modality.IMAGE
    assert ARXIV[name] in cls.paper and cls.summary
    assert all(p.help for p in cls.params)
    assert cls.paper_parameters is None and "no parameter count" in cls.parameter_note
    assert model.params["in_channels"] == 3 and model.params["num_classes"] == 21
    assert model.params["backbone"] == "resnet101" and model.params["backbone_weights"] == ""
    assert [p.name for p in cls.params if p.loads_weights] == ["backbone_weights"]
    assert model.class_names()[0] == "class_0" and len(model.class_names()) == 21
    smoke = cls(**cls.smoke_params)
    assert smoke.params["backbone"] == "resnet18"


@pytest.mark.parametrize("name", PLUGINS)
def test_default_parameter_count(name: str) -> None:
    with torch.device("meta"):
        net = PLUGINS[name]().build()
    assert n_params(net) == DEFAULT_PARAMETERS[name]
    assert n_params(net.backbone) == RESNET101_BODY


def test_refinenet_with_the_released_models_four_crp_blocks() -> None:
    with torch.device("meta"):
        net = RefineNet(crp_blocks=4).build()
    # two more 3x3 convs per block: 512-wide in RefineNet-4, 256-wide in the other three
    assert n_params(net) - DEFAULT_PARAMETERS["refinenet"] == 2 * 512 * 512 * 9 + 3 * 2 * 256 * 256 * 9


@pytest.mark.parametrize("name", PLUGINS)
def test_strides(name: str) -> None:
    model = PLUGINS[name]()
    assert (model.output_stride, model.size_divisor) == ((32, 32) if name == "refinenet" else (8, 8))


@pytest.mark.parametrize("name", PLUGINS)
def test_any_band_count_builds_the_first_conv_for_it(name: str) -> None:
    cls = PLUGINS[name]
    model = cls(**{**cls.smoke_params, "in_channels": 5})
    net = model.build().eval()
    assert net.backbone.conv1.in_channels == 5
    with torch.no_grad():
        assert net(torch.randn(1, 5, 64, 64)).shape == (1, model.num_classes, 64, 64)


@pytest.fixture(scope="module")
def resnet18_weights(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    torch.manual_seed(1)
    state = resnet18(weights=None).state_dict()  # torchvision key names, fc included (skipped on load)
    path = tmp_path_factory.mktemp("weights") / "resnet18.pth"
    torch.save(state, path)
    return path, state


@pytest.mark.parametrize("name", PLUGINS)
def test_backbone_weights_load_from_a_torchvision_state_dict(name: str, resnet18_weights) -> None:
    path, state = resnet18_weights
    cls = PLUGINS[name]
    model = cls(**{**cls.smoke_params, "in_channels": 3, "backbone_weights": str(path)})
    assert model.weight_sources() == {"backbone_weights": str(path)}
    net = model.build()
    body = net.backbone.state_dict()
    for key in ("conv1.weight", "layer3.1.conv2.weight", "layer4.0.downsample.1.running_var"):
        assert torch.equal(body[key], state[key]), key


@pytest.mark.parametrize("name", PLUGINS)
def test_rgb_weights_are_expanded_to_more_bands(name: str, resnet18_weights) -> None:
    path, state = resnet18_weights
    cls = PLUGINS[name]
    net = cls(**{**cls.smoke_params, "in_channels": 4, "backbone_weights": str(path)}).build()
    w = net.backbone.conv1.weight
    assert w.shape[1] == 4
    assert torch.allclose(w.sum(dim=1), state["conv1.weight"].sum(dim=1), atol=1e-6)


@pytest.mark.parametrize("name", PLUGINS)
def test_weights_of_another_backbone_name_the_first_mismatching_tensor(name: str, tmp_path: Path) -> None:
    path = tmp_path / "resnet34.pth"
    torch.save(resnet34(weights=None).state_dict(), path)
    cls = PLUGINS[name]
    with pytest.raises(WeightsError, match=r"layer1\.2\.|has no counterpart"):
        cls(**{**cls.smoke_params, "backbone_weights": str(path)}).build()


@pytest.mark.parametrize(
    ("name", "params", "match"),
    [
        ("pspnet", {"bins": "1,x"}, "bins"),
        ("pspnet", {"bins": "0,2"}, "bins"),
        ("pspnet", {"bins": ""}, "bins"),
        ("pspnet", {"head_channels": 0}, "head_channels"),
        ("pspnet", {"dropout": 1.0}, "dropout"),
        ("pspnet", {"aux_weight": -1}, "aux_weight"),
        ("pspnet", {"output_stride": 32}, "output_stride"),
        ("refinenet", {"crp_blocks": 0}, "crp_blocks"),
        ("refinenet", {"width": 0}, "width"),
        ("danet", {"dropout": -0.1}, "dropout"),
        ("danet", {"aux_weight": -0.5}, "aux_weight"),
        ("danet", {"backbone": "vgg16"}, "backbone"),
        ("danet", {"in_channels": 0}, "in_channels"),
        ("refinenet", {"num_classes": 0}, "num_classes"),
        ("refinenet", {"class_names": "a,b"}, "class_names"),
        ("pspnet", {"crp_blocks": 2}, "unknown parameter"),
    ],
)
def test_param_errors(name: str, params: dict[str, object], match: str) -> None:
    with pytest.raises(ParamError, match=match):
        PLUGINS[name](**params)


def test_params_coerce_from_cli_strings() -> None:
    model = PSPNet(bins="1, 3", head_channels="16", output_stride="16", backbone="resnet34")
    assert model.params["head_channels"] == 16 and model.output_stride == 16 and model.depth == 34
    assert RefineNet(crp_blocks="4").params["crp_blocks"] == 4
    assert DANet(num_classes=2, class_names="background, object").class_names() == ("background", "object")


def test_entry_points_registered() -> None:
    eps = {e.name: e for e in md.entry_points(group="raysegment.models")}
    for name, cls in PLUGINS.items():
        assert eps[name].value == f"raysegment_context.plugin:{cls.__name__}"
        assert eps[name].load() is cls
        assert eps[name].dist is not None and eps[name].dist.name == "raysegment-context"
