"""The plugin classes: metadata, parameters, validation, smoke builds, entry points."""

from __future__ import annotations

import importlib.metadata as md
import time

import pytest
import torch
from torch import nn

from raysegment.plugin import Modality, ParamError, Task
from raysegment_classic import FCN, FCN8s, FCN16s, FCN32s, SegNet, SegNetModule

PLUGINS = {"fcn32s": FCN32s, "fcn16s": FCN16s, "fcn8s": FCN8s, "segnet": SegNet}


@pytest.mark.parametrize("name", list(PLUGINS))
def test_metadata(name: str) -> None:
    cls = PLUGINS[name]
    model = cls()
    assert cls.task is Task.SEMANTIC and cls.modality is Modality.IMAGE
    assert cls.summary and "\n" not in cls.summary
    assert ("arXiv:1411.4038" if name.startswith("fcn") else "arXiv:1511.00561") in cls.paper
    assert cls.paper_parameters == (134.0 if name.startswith("fcn") else 29.5)
    assert cls.parameter_note
    assert all(p.help for p in cls.params)
    assert model.size_divisor == 32 and model.output_stride == 32
    assert model.in_channels == 3
    assert model.num_classes == (21 if name.startswith("fcn") else 11)
    assert model.params["width_divisor"] == 1 and model.params["backbone_weights"] == ""
    assert next(p for p in cls.params if p.name == "backbone_weights").loads_weights


def test_fcn_variants() -> None:
    assert [c.variant for c in (FCN32s, FCN16s, FCN8s)] == [32, 16, 8]
    assert FCN8s().params["dropout"] == 0.5 and FCN8s().params["learn_upsampling"] is True


@pytest.mark.parametrize("name", list(PLUGINS))
def test_smoke_build_is_fast_and_complete(name: str) -> None:
    cls = PLUGINS[name]
    model = cls(**cls.smoke_params)
    net = model.build().eval()
    assert isinstance(net, FCN if name.startswith("fcn") else SegNetModule)
    x = torch.rand(1, model.in_channels, 64, 64)
    with torch.no_grad():
        net(x)  # warm-up
        start = time.perf_counter()
        y = model.forward(net, x)
        elapsed = time.perf_counter() - start
    assert y.shape == (1, model.num_classes, 64, 64)
    assert elapsed < 0.5


@pytest.mark.parametrize("name", list(PLUGINS))
def test_plugin_forward_and_postprocess(name: str) -> None:
    model = PLUGINS[name](in_channels="4", num_classes="3", width_divisor="16")
    net = model.build().eval()
    sample = model.example_input(height=64, width=96)
    x = torch.from_numpy(model.preprocess(sample))[None]
    with torch.no_grad():
        out = model.forward(net, x)
    assert out.shape == (1, 3, 64, 96)
    reduced = {k: v[0].numpy() for k, v in model.reduce(out).items()}
    assert model.postprocess(reduced, sample.meta).labels.shape == (64, 96)


def test_fcn_plugin_flags_reach_the_module() -> None:
    net = FCN16s(width_divisor=16, dropout=0.25, learn_upsampling=False).build()
    assert net.variant == 16 and net.drop6.p == 0.25
    assert not net.upscore2.weight.requires_grad
    assert FCN8s(width_divisor=16).build().upscore2.weight.requires_grad


def test_class_names() -> None:
    assert FCN8s(num_classes=2).class_names() == ("class_0", "class_1")
    assert SegNet(num_classes=2, class_names="road, sky").class_names() == ("road", "sky")


@pytest.mark.parametrize("name", list(PLUGINS))
@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"in_channels": 0}, "in_channels"),
        ({"num_classes": 0}, "num_classes"),
        ({"width_divisor": 3}, "width_divisor"),
        ({"width_divisor": 128}, "width_divisor"),
        ({"width_divisor": "wide"}, "width_divisor"),
        ({"class_names": "a,b"}, "class_names"),
        ({"backbone": "resnet50"}, "unknown parameter"),
    ],
)
def test_param_errors(name: str, params: dict[str, object], match: str) -> None:
    with pytest.raises(ParamError, match=match):
        PLUGINS[name](**params)


@pytest.mark.parametrize("dropout", [1.0, -0.1])
def test_fcn_dropout_range(dropout: float) -> None:
    with pytest.raises(ParamError, match="dropout"):
        FCN8s(dropout=dropout)


def test_entry_points_registered() -> None:
    eps = {e.name: e for e in md.entry_points(group="raysegment.models") if e.name in PLUGINS}
    assert set(eps) == set(PLUGINS)
    for name, cls in PLUGINS.items():
        assert eps[name].value == f"raysegment_classic.plugin:{cls.__name__}"
        assert eps[name].load() is cls


def test_no_learned_upsampling_in_segnet_and_no_unpooling_in_fcn() -> None:
    seg = SegNet(**SegNet.smoke_params).build()
    fcn = FCN8s(**FCN8s.smoke_params).build()
    assert not any(isinstance(m, nn.ConvTranspose2d) for m in seg.modules())
    assert not any(isinstance(m, nn.MaxUnpool2d) for m in fcn.modules())
