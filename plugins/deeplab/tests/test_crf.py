"""The dense-CRF post-processing: it sharpens along image edges, and the plugin hooks carry what it needs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import raysegment_deeplab.plugin as plugin_module
from raysegment.plugin import ParamError, SemanticPrediction
from raysegment_deeplab import DeepLabV1, DeepLabV2, DeepLabV3, DeepLabV3Plus
from raysegment_deeplab.plugin import image_uint8

torch.set_num_threads(1)
needs_crf = pytest.mark.skipif(not plugin_module.crf_available(), reason="pydensecrf2 ([crf] extra) not installed")


def edge_scene(h: int = 32, w: int = 48, edge: int = 24, centre: float = 18.0,
               blur: float = 6.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An image with a vertical step edge at ``edge`` and a blurry, misplaced class-1 probability ramp."""
    image = np.zeros((h, w, 3), np.uint8)
    image[:, edge:] = 255
    cols = np.arange(w, dtype=np.float32)
    p1 = np.broadcast_to(1.0 / (1.0 + np.exp(-(cols - centre) / blur)), (h, w))
    probs = np.stack([1.0 - p1, p1]).astype(np.float32)
    truth = np.zeros((h, w), np.int64)
    truth[:, edge:] = 1
    return image, probs, truth


@needs_crf
def test_crf_snaps_blurry_probabilities_to_the_image_edge() -> None:
    from raysegment_deeplab.crf import dense_crf

    image, probs, truth = edge_scene()
    before = probs.argmax(0)
    q = dense_crf(probs, image, iterations=10)
    after = q.argmax(0)
    assert q.shape == probs.shape and np.allclose(q.sum(0), 1.0, atol=1e-4)
    assert (before != truth).mean() > 0.1  # the unaries put the boundary 6 columns off the edge
    assert (after == truth).all()  # the bilateral kernel moves it onto the edge
    assert q.max(0).mean() > probs.max(0).mean() + 0.1  # and the map is sharper
    # Without the appearance kernel the boundary stays where the unaries put it.
    smooth = dense_crf(probs, image, iterations=10, bilateral_weight=0.0).argmax(0)
    assert (smooth != truth).mean() > 0.1


@needs_crf
def test_crf_takes_any_band_count() -> None:
    from raysegment_deeplab.crf import dense_crf

    image, probs, truth = edge_scene()
    for bands in (1, 5):
        q = dense_crf(probs, np.ascontiguousarray(np.repeat(image[..., :1], bands, axis=2)), iterations=5)
        assert (q.argmax(0) == truth).all()


@needs_crf
def test_crf_hooks_forward_reduce_postprocess() -> None:
    model = DeepLabV2(backbone="resnet18", num_classes=3, crf=True, crf_iterations=2)
    net = model.build()
    sample = model.example_input(height=30, width=37)  # padded to 32 x 40 below, as the predictor does
    x = torch.from_numpy(model.preprocess(sample))
    x = torch.nn.functional.pad(x[None], (0, 3, 0, 2), mode="reflect")
    assert model.size_divisor == 8
    out = model.forward(net.train(), x)
    assert isinstance(out, torch.Tensor)  # training: plain logits, the default loss applies
    assert model.loss(model.forward(net, torch.cat([x, x])), torch.zeros(2, 32, 40, dtype=torch.long)).ndim == 0
    with torch.inference_mode():
        out = model.forward(net.eval(), x)
        assert set(out) == {"logits", "image"}
        reduced = model.reduce(out)
    assert reduced["probs"].dtype == torch.float16 and reduced["probs"].shape == (1, 3, 32, 40)
    assert reduced["image"].dtype == torch.uint8 and reduced["image"].shape == (1, 32, 40, 3)
    assert torch.equal(reduced["image"][0, :30, :37], torch.from_numpy(sample.data))  # back to the 8-bit input
    assert reduced["labels"].shape == (1, 32, 40)
    pred = model.postprocess({k: v[0].numpy() for k, v in reduced.items()}, sample.meta)
    assert isinstance(pred, SemanticPrediction)
    assert pred.labels.shape == (30, 37) and pred.confidence.shape == (30, 37)
    assert pred.labels.max() < 3 and ((pred.confidence > 0) & (pred.confidence <= 1.0 + 1e-6)).all()


@needs_crf
@pytest.mark.parametrize("cls", [DeepLabV1, DeepLabV3, DeepLabV3Plus])
def test_crf_allowed_on_every_model(cls: type) -> None:
    model = cls(crf=True, crf_theta_alpha=30.0, crf_gaussian_weight=0.0)
    assert model.params["crf"] and model.params["crf_theta_alpha"] == 30.0


def test_crf_off_uses_default_hooks() -> None:
    model = DeepLabV3(backbone="resnet18", num_classes=2)
    net = model.build().eval()
    with torch.inference_mode():
        reduced = model.reduce(model.forward(net, torch.rand(1, 3, 32, 32)))
    assert set(reduced) == {"labels", "confidence"}


def test_crf_missing_package_is_a_param_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(plugin_module, "crf_available", lambda: False)
    with pytest.raises(ParamError, match=r"raysegment-deeplab\[crf\]"):
        DeepLabV1(crf=True)
    DeepLabV1(crf=False)  # only crf=True needs it


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"crf_iterations": 0}, "crf_iterations"),
        ({"crf_theta_alpha": 0.0}, "crf_theta_alpha"),
        ({"crf_theta_beta": -1.0}, "crf_theta_beta"),
        ({"crf_bilateral_weight": -1.0}, "crf_bilateral_weight"),
        ({"crf": "maybe"}, "crf"),
    ],
)
def test_crf_param_errors(params: dict[str, object], match: str) -> None:
    with pytest.raises(ParamError, match=match):
        DeepLabV2(**params)


def test_crf_paper_kernel_defaults() -> None:
    v1, v2 = DeepLabV1().params, DeepLabV2().params
    assert v1["crf"] is False and v1["crf_iterations"] == 10
    assert (v1["crf_bilateral_weight"], v1["crf_theta_alpha"], v1["crf_theta_beta"]) == (4.0, 121.0, 5.0)
    assert (v1["crf_gaussian_weight"], v1["crf_theta_gamma"]) == (3.0, 3.0)
    assert (v2["crf_bilateral_weight"], v2["crf_theta_alpha"], v2["crf_theta_beta"]) == (4.0, 67.0, 3.0)
    assert (v2["crf_gaussian_weight"], v2["crf_theta_gamma"]) == (3.0, 1.0)


def test_image_uint8_rescaling() -> None:
    unit = torch.tensor([0.0, 0.5, 1.0]).view(1, 1, 1, 3)
    assert image_uint8(unit).flatten().tolist() == [0, 128, 255]  # [0, 1] data: times 255
    wide = torch.tensor([-2.0, 0.0, 2.0]).view(1, 1, 1, 3)
    assert image_uint8(wide).flatten().tolist() == [0, 128, 255]  # other data: min-max stretched
    both = image_uint8(torch.cat([unit, wide]))
    assert both.shape == (2, 1, 3, 1) and both[0].flatten().tolist() == [0, 128, 255]
