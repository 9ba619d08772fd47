"""ESPNet-A/B/C and ESPNet: structure, input reinforcement, output stride, parameter counts, plugins."""

from __future__ import annotations

import importlib.metadata as md
import time

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from raysegment.plugin import Modality, ParamError, Task
from raysegment_espnet import ESP, ESPNet, ESPNetA, ESPNetB, ESPNetC, ESPNetEncoder, ESPNetWithDecoder, StridedESP

PLUGINS = {"espnet": ESPNet, "espnet_c": ESPNetC, "espnet_b": ESPNetB, "espnet_a": ESPNetA}
# Default builds (in_channels=3, num_classes=20, p=2, q=8), measured.
DEFAULT_COUNTS = {"espnet": 365_109, "espnet_c": 349_449, "espnet_b": 348_384, "espnet_a": 330_272}
PAPER_ESPNET = 0.364e6
TOLERANCE = 0.01  # ours is 0.3% above the paper's rounded 0.364M


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _inputs_of(module: nn.Module, net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    seen: list[torch.Tensor] = []
    handle = module.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    with torch.no_grad():
        net(x)
    handle.remove()
    return seen[0]


# -- parameter counts -------------------------------------------------------------------------------------------
def test_espnet_param_count_matches_paper() -> None:
    count = n_params(ESPNetWithDecoder())
    assert count == DEFAULT_COUNTS["espnet"]
    assert abs(count - PAPER_ESPNET) / PAPER_ESPNET < TOLERANCE
    assert ESPNet.paper_parameters == 0.364


@pytest.mark.parametrize("name", sorted(PLUGINS))
def test_default_build_counts(name: str) -> None:
    assert n_params(PLUGINS[name]().build()) == DEFAULT_COUNTS[name]


def test_decoder_is_light() -> None:
    """The decoder adds under 5% to ESPNet-C (15,660 of 365,109 parameters)."""
    assert n_params(ESPNetWithDecoder()) - n_params(ESPNetEncoder()) == 15_660


# -- encoder structure ------------------------------------------------------------------------------------------
def test_encoder_levels() -> None:
    enc = ESPNetEncoder(in_channels=3, num_classes=20, p=2, q=8)
    assert enc.level1.conv.stride == (2, 2) and enc.level1.conv.out_channels == 16
    assert isinstance(enc.level2_0, StridedESP) and isinstance(enc.level3_0, StridedESP)
    assert len(enc.level2) == 2 and len(enc.level3) == 8  # alpha_2, alpha_3
    assert all(isinstance(m, ESP) and m.residual and m.n_out == 64 for m in enc.level2)
    assert all(isinstance(m, ESP) and m.residual and m.n_out == 128 for m in enc.level3)
    assert enc.channels == (19, 131, 256)
    assert enc.classifier.conv.kernel_size == (1, 1) and enc.classifier.conv.in_channels == 256


@pytest.mark.parametrize(("variant", "channels"), [("a", (16, 64, 128)), ("b", (16, 128, 256)), ("c", (19, 131, 256))])
def test_variant_widths(variant: str, channels: tuple[int, int, int]) -> None:
    enc = ESPNetEncoder(in_channels=3, num_classes=4, p=1, q=1, variant=variant)
    assert enc.channels == channels
    assert enc.level2_0.n_in == channels[0] and enc.level3_0.n_in == channels[1]
    assert hasattr(enc, "sample1") == (variant == "c")
    assert hasattr(enc, "b2") == (variant != "a")
    feats = enc.features(torch.randn(1, 3, 32, 40))
    assert [f.shape[1] for f in feats] == list(channels)
    assert [f.shape[-2:] for f in feats] == [(16, 20), (8, 10), (4, 5)]


def test_input_reinforcement_concatenates_downsampled_image() -> None:
    enc = ESPNetEncoder(in_channels=2, num_classes=3, p=1, q=1, variant="c").eval()
    x = torch.randn(1, 2, 32, 48)
    half = F.avg_pool2d(x, 3, stride=2, padding=1)
    quarter = F.avg_pool2d(half, 3, stride=2, padding=1)
    at_b1 = _inputs_of(enc.b1, enc, x)  # level 1: [conv stem (16), image / 2]
    assert at_b1.shape == (1, 18, 16, 24)
    torch.testing.assert_close(at_b1[:, 16:], half)
    at_b2 = _inputs_of(enc.b2, enc, x)  # level 2: [last ESP (64), strided ESP (64), image / 4]
    assert at_b2.shape == (1, 130, 8, 12)
    torch.testing.assert_close(at_b2[:, 128:], quarter)


def test_feature_sharing_concatenates_strided_and_last_esp() -> None:
    enc = ESPNetEncoder(in_channels=3, num_classes=3, p=1, q=1, variant="b").eval()
    x = torch.randn(1, 3, 32, 32)
    outs: dict[str, torch.Tensor] = {}
    hooks = [getattr(enc, n).register_forward_hook(lambda m, a, o, n=n: outs.__setitem__(n, o))
             for n in ("level2_0", "level3_0")]
    hooks += [enc.level2[-1].register_forward_hook(lambda m, a, o: outs.__setitem__("level2", o)),
              enc.level3[-1].register_forward_hook(lambda m, a, o: outs.__setitem__("level3", o))]
    at_b2 = _inputs_of(enc.b2, enc, x)
    at_b3 = _inputs_of(enc.b3, enc, x)
    for h in hooks:
        h.remove()
    torch.testing.assert_close(at_b2, torch.cat([outs["level2"], outs["level2_0"]], 1))  # reference order
    torch.testing.assert_close(at_b3, torch.cat([outs["level3_0"], outs["level3"]], 1))


@pytest.mark.parametrize("variant", ["a", "b", "c"])
def test_encoder_output_stride_8_and_bilinear_upsampling(variant: str) -> None:
    enc = ESPNetEncoder(in_channels=3, num_classes=5, p=1, q=1, variant=variant).eval()
    x = torch.randn(2, 3, 64, 96)
    seen: list[torch.Tensor] = []
    handle = enc.classifier.register_forward_hook(lambda m, a, o: seen.append(o))
    with torch.no_grad():
        y = enc(x)
    handle.remove()
    assert seen[0].shape == (2, 5, 8, 12)  # 1/8
    torch.testing.assert_close(y, F.interpolate(seen[0], size=(64, 96), mode="bilinear", align_corners=False))


def test_encoder_takes_any_size() -> None:
    assert ESPNetEncoder(in_channels=1, num_classes=2, p=1, q=1).eval()(torch.randn(1, 1, 37, 50)).shape == (1, 2, 37, 50)


# -- ESPNet (decoder) -------------------------------------------------------------------------------------------
def test_decoder_structure() -> None:
    net = ESPNetWithDecoder(in_channels=3, num_classes=20)
    esp = net.combine_l2_l3[1]
    assert isinstance(esp, ESP) and (esp.n_in, esp.n_out, esp.residual) == (40, 20, False)
    assert net.level3_C.conv.in_channels == 131 and net.level3_C.conv.out_channels == 20
    assert net.conv.conv.in_channels == 20 + 19 and net.conv.conv.kernel_size == (3, 3)
    for up in (net.up_l3[0], net.up_l2[0], net.classifier):
        assert isinstance(up, nn.ConvTranspose2d) and up.kernel_size == (2, 2) and up.stride == (2, 2)


def test_decoder_resolutions() -> None:
    net = ESPNetWithDecoder(in_channels=1, num_classes=3, p=1, q=1).eval()
    sizes: dict[str, tuple[int, ...]] = {}
    mods = {"class_map": net.encoder.classifier, "up_l3": net.up_l3, "up_l2": net.up_l2, "merge": net.conv}
    hooks = [m.register_forward_hook(lambda m, a, o, k=k: sizes.__setitem__(k, tuple(o.shape))) for k, m in mods.items()]
    with torch.no_grad():
        y = net(torch.randn(1, 1, 64, 96))
    for h in hooks:
        h.remove()
    assert sizes == {"class_map": (1, 3, 8, 12), "up_l3": (1, 3, 16, 24), "up_l2": (1, 3, 32, 48),
                     "merge": (1, 3, 32, 48)}
    assert y.shape == (1, 3, 64, 96)


def test_level1_and_level2_features_reach_output() -> None:
    """Perturbing a skip (level-1 or level-2 features) alone changes the logits."""
    torch.manual_seed(0)
    net = ESPNetWithDecoder(in_channels=1, num_classes=2, p=1, q=1).eval()
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        ref = net(x)
        for module in (net.level3_C, net.encoder.b1):
            handle = module.register_forward_hook(lambda m, a, o: o + 1.0)
            assert not torch.allclose(ref, net(x))
            handle.remove()


def test_decoder_rejects_sizes_not_multiple_of_8() -> None:
    with pytest.raises(ValueError, match="multiples of 8"):
        ESPNetWithDecoder(in_channels=1, num_classes=2, p=1, q=1)(torch.randn(1, 1, 32, 36))


@pytest.mark.parametrize("name", sorted(PLUGINS))
def test_gradients_reach_every_parameter(name: str) -> None:
    net = PLUGINS[name](in_channels=2, num_classes=3, p=1, q=1).build().train()
    net(torch.randn(2, 2, 32, 32)).logsumexp(1).mean().backward()
    assert [n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum()] == []


def test_reference_layer_names() -> None:
    """The authors' state-dict keys, so their released Cityscapes weights load with --checkpoint."""
    shapes = {k: tuple(v.shape) for k, v in ESPNetWithDecoder().state_dict().items()}
    expected = {
        "encoder.level1.conv.weight": (16, 3, 3, 3),
        "encoder.level1.act.weight": (16,),
        "encoder.b1.bn.running_var": (19,),
        "encoder.level2_0.c1.conv.weight": (12, 19, 3, 3),
        "encoder.level2_0.d1.conv.weight": (16, 12, 3, 3),
        "encoder.level2_0.bn.weight": (64,),
        "encoder.level2_0.act.weight": (64,),
        "encoder.level2.1.c1.conv.weight": (12, 64, 1, 1),
        "encoder.level2.1.d16.conv.weight": (12, 12, 3, 3),
        "encoder.level2.1.bn.act.weight": (64,),
        "encoder.b2.bn.weight": (131,),
        "encoder.level3_0.c1.conv.weight": (25, 131, 3, 3),
        "encoder.level3.7.d1.conv.weight": (28, 25, 3, 3),
        "encoder.b3.act.weight": (256,),
        "encoder.classifier.conv.weight": (20, 256, 1, 1),
        "level3_C.conv.weight": (20, 131, 1, 1),
        "br.running_mean": (20,),
        "conv.conv.weight": (20, 39, 3, 3),
        "up_l3.0.weight": (20, 20, 2, 2),
        "combine_l2_l3.0.bn.weight": (40,),
        "combine_l2_l3.1.c1.conv.weight": (4, 40, 1, 1),
        "combine_l2_l3.1.bn.bn.weight": (20,),
        "up_l2.0.weight": (20, 20, 2, 2),
        "up_l2.1.act.weight": (20,),
        "classifier.weight": (20, 20, 2, 2),
    }
    assert {k: shapes.get(k) for k in expected} == expected
    assert not [k for k in shapes if "sample" in k]  # the pooling pyramid holds no state


# -- the plugin classes -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(PLUGINS))
def test_plugin_description(name: str) -> None:
    cls = PLUGINS[name]
    model = cls()
    assert cls.task is Task.SEMANTIC and cls.modality is Modality.IMAGE
    assert "arXiv:1803.06815" in cls.paper and cls.summary and cls.parameter_note
    assert all(p.help for p in cls.params)
    assert model.params == {"in_channels": 3, "num_classes": 20, "p": 2, "q": 8, "class_names": ""}
    assert model.size_divisor == 8 and model.output_stride == 8
    assert not any(p.loads_weights for p in cls.params)  # trained from scratch: weights via --checkpoint
    assert isinstance(model.build(), ESPNetWithDecoder if name == "espnet" else ESPNetEncoder)


@pytest.mark.parametrize(("name", "variant"), [("espnet_c", "c"), ("espnet_b", "b"), ("espnet_a", "a")])
def test_plugin_variants(name: str, variant: str) -> None:
    assert PLUGINS[name](p=1, q=1).build().variant == variant


@pytest.mark.parametrize("name", sorted(PLUGINS))
def test_smoke_params_are_fast(name: str) -> None:
    cls = PLUGINS[name]
    model = cls(**cls.smoke_params)
    net = model.build().eval()
    x = torch.randn(1, model.in_channels, 64, 64)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            net(x)
            start = time.perf_counter()
            y = net(x)
            elapsed = time.perf_counter() - start
    finally:
        torch.set_num_threads(threads)
    assert y.shape == (1, model.num_classes, 64, 64)
    assert elapsed < 0.5


def test_class_names() -> None:
    assert ESPNet(num_classes=2).class_names() == ("class_0", "class_1")
    assert ESPNetC(num_classes=2, class_names="cell, membrane").class_names() == ("cell", "membrane")


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"p": 0}, "'p'"),
        ({"q": 0}, "'q'"),
        ({"in_channels": 0}, "in_channels"),
        ({"num_classes": 0}, "num_classes"),
        ({"q": "many"}, "'q'"),
        ({"class_names": "a,b"}, "class_names"),
        ({"backbone_weights": "x.pt"}, "unknown parameter"),
    ],
)
@pytest.mark.parametrize("name", sorted(PLUGINS))
def test_plugin_param_errors(name: str, params: dict[str, object], match: str) -> None:
    with pytest.raises(ParamError, match=match):
        PLUGINS[name](**params)


def test_entry_points_registered() -> None:
    eps = {e.name: e for e in md.entry_points(group="raysegment.models") if e.name.startswith("espnet")}
    assert sorted(eps) == sorted(PLUGINS)
    for name, cls in PLUGINS.items():
        assert eps[name].load() is cls
