"""The plugin classes: metadata, parameters and their validation, registration."""

from __future__ import annotations

import importlib.metadata as md

import pytest

from raysegment.plugin import Modality, ParamError, Task
from raysegment_deeplab import DeepLabV1, DeepLabV2, DeepLabV3, DeepLabV3Plus

ALL = {"deeplabv1": DeepLabV1, "deeplabv2": DeepLabV2, "deeplabv3": DeepLabV3, "deeplabv3plus": DeepLabV3Plus}
ARXIV = {DeepLabV1: "1412.7062", DeepLabV2: "1606.00915", DeepLabV3: "1706.05587", DeepLabV3Plus: "1802.02611"}


@pytest.mark.parametrize("cls", list(ALL.values()))
def test_metadata(cls: type) -> None:
    assert cls.task is Task.SEMANTIC and cls.modality is Modality.IMAGE
    assert cls.summary and f"arXiv:{ARXIV[cls]}" in cls.paper and cls.parameter_note
    assert all(p.help for p in cls.params)
    model = cls()
    assert model.in_channels == 3 and model.num_classes == 21  # PASCAL VOC
    assert model.size_divisor == model.output_stride
    assert cls(**cls.smoke_params).params["in_channels"] == 1


def test_canonical_defaults() -> None:
    assert DeepLabV1().output_stride == 8 and DeepLabV1().params["dropout"] == 0.5
    v2 = DeepLabV2().params
    assert (v2["backbone"], v2["output_stride"]) == ("resnet101", 8)
    for cls in (DeepLabV3, DeepLabV3Plus):
        p = cls().params
        assert (p["backbone"], p["output_stride"], p["multi_grid"]) == ("resnet101", 16, "1,2,4")
    assert DeepLabV3(output_stride=8).size_divisor == 8


def test_class_names() -> None:
    assert DeepLabV3(num_classes=2, class_names="bg, cell").class_names() == ("bg", "cell")
    assert DeepLabV1(num_classes=2).class_names() == ("class_0", "class_1")


@pytest.mark.parametrize(
    ("cls", "params", "match"),
    [
        (DeepLabV3, {"backbone": "resnet152"}, "backbone"),
        (DeepLabV3, {"backbone": "vgg16"}, "backbone"),
        (DeepLabV2, {"backbone": "vgg16", "output_stride": 16}, "output_stride"),
        (DeepLabV3, {"output_stride": 32}, "output_stride"),
        (DeepLabV3, {"multi_grid": "1,two"}, "multi_grid"),
        (DeepLabV3Plus, {"multi_grid": "1,0,2"}, "multi_grid"),
        (DeepLabV1, {"in_channels": 0}, "in_channels"),
        (DeepLabV2, {"num_classes": 0}, "num_classes"),
        (DeepLabV1, {"dropout": 1.0}, "dropout"),
        (DeepLabV3, {"dropout": -0.1}, "dropout"),
        (DeepLabV3, {"num_classes": 2, "class_names": "a,b,c"}, "class_names"),
        (DeepLabV1, {"backbone": "resnet18"}, "unknown parameter"),
        (DeepLabV1, {"output_stride": 16}, "unknown parameter"),
    ],
)
def test_param_errors(cls: type, params: dict[str, object], match: str) -> None:
    with pytest.raises(ParamError, match=match):
        cls(**params)


def test_entry_points_registered() -> None:
    eps = {e.name: e for e in md.entry_points(group="raysegment.models") if e.name in ALL}
    assert set(eps) == set(ALL)
    for name, cls in ALL.items():
        assert eps[name].value == f"raysegment_deeplab.plugin:{cls.__name__}"
        assert eps[name].load() is cls
        assert eps[name].dist.metadata["Name"] == "raysegment-deeplab"
