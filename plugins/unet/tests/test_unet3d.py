"""Tests of the 3D U-Net module and of its ``unet3d`` plugin (a volume model)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from raysegment.plugin import InputError, Modality, ParamError, Sample, SegmentationModel, SemanticPrediction
from raysegment.testing import check_model, installed_model
from raysegment_unet import UNet3D, UNet3d
from raysegment_unet.unet3d import PAPER_PARAMETERS

SMOKE = dict(UNet3D.smoke_params)


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_paper_channel_layout() -> None:
    net = UNet3d()  # 3 input channels, 3 classes, as the paper counts
    assert [(b.mid_channels, b.out_channels) for b in net.encoders] == [(32, 64), (64, 128), (128, 256)]
    assert (net.bottom.mid_channels, net.bottom.out_channels) == (256, 512)
    assert all(isinstance(m, nn.MaxPool3d) for m in [net.pool]) and net.pool.kernel_size == 2
    for up, width in zip(net.upconvs, (512, 256, 128)):
        assert up.kernel_size == (2, 2, 2) and up.stride == (2, 2, 2)
        assert up.in_channels == up.out_channels == width
    assert [(b.in_channels, b.out_channels) for b in net.decoders] == [(768, 256), (384, 128), (192, 64)]
    assert net.head.kernel_size == (1, 1, 1) and (net.head.in_channels, net.head.out_channels) == (64, 3)
    convs = [m for m in net.modules() if isinstance(m, nn.Conv3d) and m is not net.head]
    assert len(convs) == 14 and all(m.kernel_size == (3, 3, 3) and m.padding == (1, 1, 1) for m in convs)


def test_param_count_vs_paper() -> None:
    """19,069,955 in the paper = conv weights + one bias per 3x3x3/1x1x1 conv; we trade those biases for BN."""
    net = UNet3d(in_channels=3, num_classes=3)
    convs = [m for m in net.modules() if isinstance(m, (nn.Conv3d, nn.ConvTranspose3d))]
    weights = sum(m.weight.numel() for m in convs)
    paper_biases = sum(m.out_channels for m in convs if isinstance(m, nn.Conv3d))
    assert weights + paper_biases == PAPER_PARAMETERS == 19_069_955
    count = n_params(net)
    assert count == 19_072_291 == PAPER_PARAMETERS + 2_336
    assert abs(count - PAPER_PARAMETERS) / PAPER_PARAMETERS < 0.0002


def test_rejects_bad_input() -> None:
    net = UNet3d(1, 2, depth=2, base_channels=2)
    with pytest.raises(ValueError, match=r"\(B, C, D, H, W\)"):
        net(torch.randn(1, 1, 8, 8))
    with pytest.raises(ValueError, match="base_channels"):
        UNet3d(base_channels=0)


def test_registered_as_unet3d_a_volume_model() -> None:
    info = installed_model("unet3d")
    assert info.cls is UNet3D and info.distribution == "raysegment-unet"
    assert UNet3D.modality is Modality.VOLUME
    model = UNet3D()
    assert model.size_divisor == model.output_stride == 8
    assert UNet3D(depth=2).size_divisor == 4
    tile, overlap = UNet3D.default_tile, UNet3D.default_overlap
    assert len(tile) == len(overlap) == 3 and all(t % 2**5 == 0 and t >= 2 * o for t, o in zip(tile, overlap))


def test_default_build_is_the_papers_network() -> None:
    model = UNet3D()
    assert (model.in_channels, model.num_classes) == (3, 3)
    assert n_params(model.build()) == 19_072_291
    assert round(UNet3D.paper_parameters * 1e6) == PAPER_PARAMETERS
    assert "19,069,955" in UNet3D.parameter_note and "2,336" in UNet3D.parameter_note


def test_bad_params_are_one_line_param_errors() -> None:
    for params in ({"intensity_scale": 0}, {"intensity_scale": -1.0}, {"intensity_scale": float("nan")},
                   {"base_channels": 0}, {"num_classes": 2, "class_names": "a,b,c"}):
        with pytest.raises(ParamError):
            UNet3D(**params)


def test_preprocess_takes_channels_last_volumes_with_a_fixed_scale() -> None:
    rng = np.random.default_rng(0)
    floats = rng.random((5, 6, 7, 2), dtype=np.float32) * 4000
    x = UNet3D(in_channels=2, intensity_scale=0.00025).preprocess(Sample(floats))
    assert x.shape == (2, 5, 6, 7) and x.dtype == np.float32
    np.testing.assert_allclose(x, np.moveaxis(floats, -1, 0) * 0.00025, rtol=1e-6)
    np.testing.assert_array_equal(UNet3D(in_channels=2).preprocess(Sample(floats)), np.moveaxis(floats, -1, 0))
    bytes_ = rng.integers(0, 256, (4, 4, 4, 1), dtype=np.uint8)
    np.testing.assert_allclose(UNet3D(in_channels=1).preprocess(Sample(bytes_))[0], bytes_[..., 0] / 255, rtol=1e-6)
    # A fixed scale: one window's values do not depend on its neighbours' (no per-window statistics).
    model = UNet3D(in_channels=2, intensity_scale=0.5)
    np.testing.assert_array_equal(model.preprocess(Sample(floats[:2]))[:, :2], model.preprocess(Sample(floats))[:, :2])
    with pytest.raises(InputError, match="band"):
        UNet3D(in_channels=1).preprocess(Sample(floats))
    with pytest.raises(InputError, match=r"volumes \(D, H, W, bands\)"):
        UNet3D(in_channels=1).preprocess(Sample(bytes_[0]))  # a 2D image


def test_reduce_and_postprocess_work_on_volumes() -> None:
    model = UNet3D(**SMOKE)
    logits = torch.randn(2, 3, 4, 8, 12)
    reduced = model.reduce(model.logits(logits))
    assert reduced["labels"].shape == (2, 4, 8, 12)
    assert torch.equal(reduced["labels"].long(), logits.argmax(1))
    item = {k: v[0].numpy() for k, v in reduced.items()}
    pred = model.postprocess(item, {"depth": 3, "height": 7, "width": 9})
    assert isinstance(pred, SemanticPrediction)
    assert pred.labels.shape == pred.confidence.shape == (3, 7, 9)
    np.testing.assert_array_equal(pred.labels, item["labels"][:3, :7, :9])


def test_encode_target_takes_label_volumes() -> None:
    model = UNet3D(**SMOKE)
    labels = np.random.default_rng(1).integers(0, 3, (4, 5, 6)).astype(np.uint8)
    for mask in (labels, labels[..., None], labels.astype(np.float32)):  # MSD has a float32 label file
        target = model.encode_target(mask)
        assert target.dtype == np.int64 and target.shape == (4, 5, 6)
        np.testing.assert_array_equal(target, labels)
    with pytest.raises(InputError, match="non-integer"):
        model.encode_target(labels + np.float32(0.5))
    with pytest.raises(InputError, match=r"\[3\]"):
        model.encode_target(np.full((2, 2, 2), 3, np.uint8))
    assert model.encode_target(np.full((2, 2, 2), 255, np.uint8)).max() == 255  # ignored voxels pass


# -- the conformance kit on volume models: it must catch what only volumes can get wrong -----
class _NoDepthCrop(UNet3D):
    def postprocess(self, reduced: Mapping[str, np.ndarray], sample_meta: Mapping[str, Any]) -> SemanticPrediction:
        return SegmentationModel.postprocess(self, reduced, sample_meta)  # crops H and W only


class _MaskAs2D(UNet3D):
    def encode_target(self, mask: np.ndarray) -> np.ndarray:
        return SegmentationModel.encode_target(self, mask)  # reads (D, H, W) as (H, W, C)


class _NoTile(UNet3D):
    default_tile = None


class _SwapsDepthAndWidth(UNet3D):
    def preprocess(self, sample: Sample) -> np.ndarray:
        return np.ascontiguousarray(np.swapaxes(super().preprocess(sample), 1, 3))


@pytest.mark.parametrize(
    ("cls", "check", "fragment"),
    [
        (_NoDepthCrop, "padding", "expected (11, 15, 17)"),
        (_MaskAs2D, "training_step", "encode_target() gave int64 (12, 16)"),
        (_NoTile, "contract", "must set default_tile"),
        (_SwapsDepthAndWidth, "preprocess", "expected (1, 12, 16, 20)"),
    ],
)
def test_kit_names_the_volume_defect(cls: type[UNet3D], check: str, fragment: str) -> None:
    results = {r.name: r for r in check_model(cls, SMOKE)}
    assert not results[check].ok and fragment in results[check].message, results[check].message
    assert results["rle_roundtrip"].ok or results["rle_roundtrip"].message.startswith("skipped")


def test_kit_runs_every_check_on_volumes_for_real() -> None:
    results = {r.name: r for r in check_model("unet3d", SMOKE)}
    assert all(r.ok for r in results.values()), {n: r.message for n, r in results.items() if not r.ok}
    assert results["forward_shapes"].message.startswith("labels (2, 12, 16, 20)")
    assert results["rle_roundtrip"].message.startswith("12 depth slices: ")
    assert results["padding"].message == "11x15x17 padded to 12x16x20 -> labels (11, 15, 17)"
