"""Input normalisation: each mode's numbers, its one-line mistakes, and the checkpoint round trip into infer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import SMALL_UNET

from raysegment.infer.stages import decode_batch
from raysegment.io.decoders import DecodeLimits
from raysegment.io.payload import unpack
from raysegment.plugin import InputError, Sample
from raysegment.plugin.checkpoint import load_checkpoint, save_checkpoint
from raysegment.plugin.normalization import Normalization, StatsNeeded, needs_stats
from raysegment.plugin.spec import resolve_model

GRID = np.linspace(0, 100, 201)


def _stats(*bands: np.ndarray) -> dict:
    """Statistics JSON as `raysegment stats` writes it, computed exactly with numpy."""
    return {"items": 3, "bands": [{"count": b.size, "mean": float(b.mean()), "std": float(b.std()),
                                   "percentiles": np.percentile(b, GRID).tolist()} for b in bands]}


def test_dtype_is_the_default_and_leaves_the_sample_alone() -> None:
    sample = Sample(np.arange(12, dtype=np.uint16).reshape(2, 2, 3))
    assert Normalization.resolve(None).apply(sample) is sample and Normalization.resolve("dtype").mode == "dtype"
    assert not needs_stats(None) and not needs_stats("minmax:0:1") and needs_stats("zscore")


def test_minmax_stretches_each_band_and_clips() -> None:
    norm = Normalization.resolve("minmax:0:2000,1000:3000")
    data = np.array([[[0, 1000], [1000, 2000]], [[2000, 3000], [4000, 500]]], dtype=np.uint16)  # (2, 2, 2)
    out = norm.apply(Sample(data)).data
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[..., 0], [[0.0, 0.5], [1.0, 1.0]])  # 4000 clipped to 1
    np.testing.assert_allclose(out[..., 1], [[0.0, 0.5], [1.0, 0.0]])  # 500 below LO: clipped to 0


def test_percentile_maps_the_datasets_cut_points_to_0_and_1() -> None:
    band = np.random.default_rng(0).gamma(2.0, 300.0, 20_000)  # skewed like 12-bit reflectance
    norm = Normalization.resolve("percentile:2:98", _stats(band))
    lo, hi = np.percentile(band, [2, 98])
    assert norm.offset[0] == pytest.approx(lo) and norm.offset[0] + norm.scale[0] == pytest.approx(hi)
    out = norm.apply(Sample(band.reshape(100, 200).astype(np.uint16))).data
    assert out.min() == 0.0 and out.max() == 1.0 and abs(float(np.median(out)) - 0.5) < 0.25
    default = Normalization.resolve("percentile", _stats(band))
    assert default.offset == norm.offset and "2:98 of 3 items" in default.source


def test_zscore_gives_zero_mean_unit_std_per_band() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.normal(4000, 300, 5000), rng.normal(20, 5, 5000)
    norm = Normalization.resolve("zscore", _stats(a, b))
    out = norm.apply(Sample(np.stack([a, b], axis=-1).reshape(50, 100, 2))).data
    np.testing.assert_allclose(out.reshape(-1, 2).mean(axis=0), [0, 0], atol=1e-3)
    np.testing.assert_allclose(out.reshape(-1, 2).std(axis=0), [1, 1], atol=1e-3)


@pytest.mark.parametrize("text, message", [
    ("sigmoid", "must be one of dtype, minmax, percentile, zscore"),
    ("minmax", "needs LO:HI per band"),
    ("minmax:0", "expects LO:HI pairs"),
    ("minmax:5:5", "zero or negative spread"),
    ("minmax:a:b", "expects numbers"),
    ("percentile:98:2", "0 <= P_LO < P_HI <= 100"),
    ("percentile:2", "0 <= P_LO < P_HI <= 100"),
    ("zscore:1", "takes no values"),
    ("dtype:1", "takes no values"),
])
def test_mistakes_are_one_line(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as err:
        Normalization.resolve(text, _stats(np.arange(10.0)))
    assert "\n" not in str(err.value)


def test_a_mode_that_needs_statistics_says_where_they_come_from() -> None:
    with pytest.raises(StatsNeeded, match="pass --stats FILE"):
        Normalization.resolve("percentile:1:99")
    with pytest.raises(ValueError, match="band with no value"):
        Normalization.resolve("zscore", {"items": 0, "bands": [{"count": 0, "mean": None, "std": None}]})


def test_another_band_count_is_an_error_row_not_a_broadcast() -> None:
    norm = Normalization.resolve("minmax:0:1,0:1,0:1")
    with pytest.raises(InputError, match="input has 1 band.* normalisation .* is for 3"):
        norm.apply(Sample(np.zeros((4, 4, 1), dtype=np.uint8)))
    one = Normalization.resolve("minmax:0:255")  # one pair serves every band
    assert one.apply(Sample(np.full((2, 2, 3), 255, dtype=np.uint8))).data.max() == 1.0


def test_json_round_trip() -> None:
    norm = Normalization.resolve("zscore", _stats(np.arange(100.0), np.arange(50.0)))
    assert Normalization.from_json(json.loads(json.dumps(norm.to_json()))) == norm
    assert Normalization.from_json(None) == Normalization()  # checkpoints made before normalisation


def test_the_checkpoint_carries_it_into_infers_decode_stage(tmp_path: Path) -> None:
    import torch

    spec = resolve_model("unet", SMALL_UNET, warn_random=False)
    torch.manual_seed(0)
    norm = Normalization.resolve("minmax:100:4195")  # 12-bit data stored as uint16
    path = tmp_path / "model.pt"
    save_checkpoint(str(path), state_dict=spec.plugin().build().state_dict(), plugin="unet", plugin_version="0",
                    params=dict(spec.params), class_names=list(spec.class_names), normalization=norm)
    assert load_checkpoint(str(path)).normalization == norm
    from_ckpt = resolve_model(None, checkpoint=str(path))
    assert from_ckpt.normalization == norm  # infer needs no flag

    from PIL import Image

    pixels = np.array([[100, 2147, 4195, 60000]] * 4, dtype=np.uint16)
    Image.fromarray(pixels).save(tmp_path / "scene.png")
    batch = {"uri": np.array([str(tmp_path / "scene.png")], dtype=object), "index": np.arange(1),
             "shard": np.zeros(1, dtype=np.int32)}
    image = unpack(decode_batch(batch, spec=from_ckpt, limits=DecodeLimits())["payload"][0])["image"]
    np.testing.assert_allclose(image[0, 0], [0.0, 2047 / 4095, 1.0, 1.0], rtol=1e-6)
    plain = unpack(decode_batch(batch, spec=spec, limits=DecodeLimits())["payload"][0])["image"]
    np.testing.assert_allclose(plain[0, 0], pixels[0] / 65535, rtol=1e-6)  # the dtype rule: nearly black
