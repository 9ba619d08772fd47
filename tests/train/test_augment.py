"""Joint image/mask augmentations: alignment, label sets, reproducibility, dtypes."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy import ndimage

from raysegment.train.augment import AugmentConfig, augment, augment_volume, elastic_deform, elastic_field, rng_for

EXAMPLE_SPEC = "flip,rot90,crop=256,scale=0.8-1.2,gamma=0.8-1.25,brightness=0.1,elastic=10"
OFF = AugmentConfig.none()


def _only(**fields) -> AugmentConfig:
    """A config with just the named ops on (none of the defaults)."""
    return dataclasses.replace(OFF, **fields)


def _sample(height: int = 48, width: int = 64, dtype: type = np.uint8, channels: int = 3):
    """A random image, a 3-label mask and a weight map."""
    gen = np.random.default_rng(0)
    top = np.iinfo(dtype).max if np.issubdtype(dtype, np.integer) else 1.0
    image = (gen.random((height, width, channels)) * top).astype(dtype)
    mask = gen.integers(0, 3, (height, width)).astype(np.uint8)
    weight = gen.random((height, width)).astype(np.float32)
    return image, mask, weight


def _square_scene(size: int = 96, lo: int = 28, hi: int = 68):
    """An image bright exactly where mask == 1 (a square), dark elsewhere."""
    mask = np.zeros((size, size), np.uint8)
    mask[lo:hi, lo:hi] = 1
    image = np.repeat((mask * 200 + 20)[..., None], 3, axis=2).astype(np.uint8)
    return image, mask


def _bright_fraction(image: np.ndarray, mask: np.ndarray) -> float:
    """Share of mask==1 pixels whose image is bright (above the mid value)."""
    return float((image[..., 0][mask == 1] > 120).mean())


# --- geometry: exact ops ------------------------------------------------------


def test_flips_match_numpy_and_move_mask_with_image() -> None:
    image, mask, weight = _sample()
    variants = [lambda a: a, np.fliplr, np.flipud, lambda a: np.flipud(np.fliplr(a))]
    seen = set()
    for index in range(16):
        out = augment(image, mask, rng_for(0, 0, index), _only(flip=True), weight)
        hits = [i for i, op in enumerate(variants) if np.array_equal(out[0], op(image))]
        assert len(hits) == 1
        op = variants[hits[0]]
        assert np.array_equal(out[1], op(mask)) and np.array_equal(out[2], op(weight))
        seen.add(hits[0])
    assert seen == {0, 1, 2, 3}


def test_rot90_matches_numpy_and_swaps_shape() -> None:
    image, mask, weight = _sample()
    seen = set()
    for index in range(16):
        out = augment(image, mask, rng_for(0, 0, index), _only(rotate90=True), weight)
        ks = [k for k in range(4) if np.array_equal(out[0], np.rot90(image, k))]
        assert len(ks) == 1
        k = ks[0]
        assert np.array_equal(out[1], np.rot90(mask, k))
        assert np.array_equal(out[2], np.rot90(weight, k))
        seen.add(k)
    assert seen == {0, 1, 2, 3}


# --- crop ----------------------------------------------------------------------


def test_crop_of_large_input_is_a_window() -> None:
    image, mask, weight = _sample(40, 50)
    out = augment(image, mask, rng_for(1, 0, 0), _only(crop=(16, 24)), weight)
    out_image, out_mask, out_weight = out
    assert out_image.shape == (16, 24, 3)
    assert out_mask.shape == out_weight.shape == (16, 24)
    offsets = [
        (t, left)
        for t in range(25)
        for left in range(27)
        if np.array_equal(image[t : t + 16, left : left + 24], out_image)
    ]
    assert len(offsets) == 1
    t, left = offsets[0]
    assert np.array_equal(mask[t : t + 16, left : left + 24], out_mask)
    assert np.array_equal(weight[t : t + 16, left : left + 24], out_weight)


def test_crop_pads_small_input_with_ignore_index_and_zero_weight() -> None:
    image, mask, weight = _sample(20, 12)
    config = _only(crop=32, ignore_index=99)
    out_image, out_mask, out_weight = augment(image, mask, rng_for(0, 0, 0), config, weight)
    assert out_image.shape == (32, 32, 3) and out_mask.shape == (32, 32)
    padded = out_mask == 99
    assert padded.sum() == 32 * 32 - 20 * 12
    assert np.all(out_weight[padded] == 0)
    assert np.array_equal(out_weight[~padded].reshape(20, 12), weight)
    assert np.array_equal(out_mask[~padded].reshape(20, 12), mask)
    assert len(np.unique(out_image[padded])) > 1  # reflected content, not a constant fill


def test_crop_rejects_ignore_index_outside_mask_dtype() -> None:
    image, mask, _ = _sample(8, 8)
    with pytest.raises(ValueError, match="ignore_index"):
        augment(image, mask.astype(np.int8), rng_for(0, 0, 0), _only(crop=16, ignore_index=255))


# --- resampling ops: labels, alignment -----------------------------------------


@pytest.mark.parametrize(
    "config",
    [
        _only(elastic_sigma=10.0),
        _only(scale=(0.6, 1.6), order=3),
        AugmentConfig.parse(EXAMPLE_SPEC.replace("crop=256", "crop=80")),
    ],
    ids=["elastic", "scale-bicubic", "example"],
)
def test_mask_keeps_label_set_and_alignment(config: AugmentConfig) -> None:
    image, mask = _square_scene()
    mask[0, :4] = 7  # a rare label must survive as itself, never as a blend
    for index in range(4):
        out_image, out_mask, _ = augment(image, mask, rng_for(3, 0, index), config)
        assert set(np.unique(out_mask)) <= {0, 1, 7, config.ignore_index}
        assert (out_mask == 1).sum() > 100
        assert _bright_fraction(out_image, out_mask) > 0.95
        # and the converse: bright pixels are labelled 1 almost everywhere
        assert (out_mask[out_image[..., 0] > 120] == 1).mean() > 0.95


def test_elastic_deform_moves_pixels_but_keeps_alignment() -> None:
    image, mask = _square_scene()
    weight = mask.astype(np.float32)
    out_image, out_mask, out_weight = elastic_deform(
        image, mask, rng_for(0, 0, 0), sigma=10.0, weight=weight
    )
    assert not np.array_equal(out_mask, mask)
    assert set(np.unique(out_mask)) <= {0, 1}
    assert _bright_fraction(out_image, out_mask) > 0.95
    # the weight went through the same warp: high where the mask is 1
    assert out_weight[out_mask == 1].mean() > 0.95 and out_weight[out_mask == 0].mean() < 0.05


def test_elastic_bicubic_image_stays_in_dtype_range() -> None:
    image, mask, _ = _sample(64, 64, np.uint8)
    out_image, out_mask, _ = elastic_deform(image, mask, rng_for(0, 0, 1), sigma=10.0, order=3)
    assert out_image.dtype == np.uint8 and out_image.shape == image.shape
    assert set(np.unique(out_mask)) <= {0, 1, 2}


def test_elastic_p_zero_and_sigma_zero_are_identity() -> None:
    image, mask, weight = _sample()
    off = _only(elastic_sigma=10.0, elastic_p=0.0)
    out = augment(image, mask, rng_for(0, 0, 0), off, weight)
    assert all(np.array_equal(a, b) for a, b in zip(out, (image, mask, weight)))
    out = elastic_deform(image, mask, rng_for(0, 0, 0), sigma=0.0, weight=weight)
    assert np.array_equal(out[0], image) and np.array_equal(out[1], mask)
    np.testing.assert_allclose(out[2], weight, atol=1e-6)


def test_scale_changes_size_within_range() -> None:
    image, mask, _ = _sample(50, 40)
    for index in range(6):
        out_image, out_mask, _ = augment(image, mask, rng_for(0, 0, index), _only(scale=(0.5, 2.0)))
        assert out_image.shape[:2] == out_mask.shape
        assert 25 <= out_mask.shape[0] <= 100 and 20 <= out_mask.shape[1] <= 80
        assert out_mask.shape[0] / 50 == pytest.approx(out_mask.shape[1] / 40, abs=0.05)


# --- the displacement field ----------------------------------------------------


def test_elastic_field_nodes_carry_gaussian_draws_of_sigma() -> None:
    # Odd sizes put the 3x3 spline nodes on pixels 0, 32, 64: the field there
    # is the raw coarse draw, whose spread must be sigma.
    nodes = np.ix_([0, 32, 64], [0, 32, 64])
    fields = [np.stack(elastic_field((65, 65), rng_for(5, 0, i), 10.0, 3)) for i in range(300)]
    draws = np.asarray([field[(slice(None), *nodes)] for field in fields])
    assert draws.std() == pytest.approx(10.0, rel=0.08)
    assert abs(draws.mean()) < 1.0


def test_elastic_field_is_smooth_and_shaped() -> None:
    dy, dx = elastic_field((100, 140), rng_for(0, 0, 0), sigma=10.0, grid=3)
    assert dy.shape == dx.shape == (100, 140)
    assert np.abs(np.diff(dy, axis=0)).max() < 2.0 and np.abs(np.diff(dx, axis=1)).max() < 2.0
    # it is the cubic-spline zoom of the coarse draws
    coarse = rng_for(0, 0, 0).normal(0.0, 10.0, (2, 3, 3))
    expected = ndimage.zoom(coarse[0], (100 / 3, 140 / 3), order=3, mode="mirror", grid_mode=False)
    np.testing.assert_allclose(dy, expected, atol=1e-9)


# --- gray values ----------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_gray_ops_touch_only_the_image_and_respect_range(dtype: type) -> None:
    image, mask, weight = _sample(dtype=dtype)
    config = _only(gamma=(0.5, 2.0), contrast=(0.5, 1.5), brightness=0.5)
    for index in range(6):
        out_image, out_mask, out_weight = augment(image, mask, rng_for(0, 0, index), config, weight)
        assert out_mask is mask or np.array_equal(out_mask, mask)
        assert np.array_equal(out_weight, weight)
        assert out_image.dtype == image.dtype and out_image.shape == image.shape
        assert not np.array_equal(out_image, image)
        if dtype is np.float32:
            assert out_image.min() >= 0.0 and out_image.max() <= 1.0


def test_brightness_saturates_instead_of_wrapping() -> None:
    image = np.full((8, 8, 1), 250, np.uint8)
    mask = np.zeros((8, 8), np.uint8)
    config = _only(brightness=1.0)
    outs = [augment(image, mask, rng_for(0, 0, i), config)[0] for i in range(10)]
    brighter = [o for o in outs if o[0, 0, 0] >= 250]
    assert brighter and all(np.all(o == 255) or np.all(o == 250) for o in brighter)


# --- reproducibility and dtypes -------------------------------------------------


def test_same_seed_epoch_index_reproduces_and_others_differ() -> None:
    image, mask, weight = _sample(64, 64)
    config = AugmentConfig.parse(EXAMPLE_SPEC.replace("crop=256", "crop=48"))

    def run(seed: int, epoch: int, index: int):
        return augment(image, mask, rng_for(seed, epoch, index), config, weight)

    first, again = run(7, 2, 11), run(7, 2, 11)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    for other in (run(7, 2, 12), run(7, 3, 11), run(8, 2, 11)):
        assert not np.array_equal(first[0], other[0])


def test_rng_for_rejects_negative_entropy() -> None:
    with pytest.raises(ValueError):
        rng_for(0, -1, 0)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
@pytest.mark.parametrize("channels", [1, 3, None])
def test_dtype_and_shape_preserved(dtype: type, channels: int | None) -> None:
    image, mask, weight = _sample(40, 40, dtype, channels or 1)
    if channels is None:
        image = image[..., 0]
    config = AugmentConfig(crop=32, gamma=(0.8, 1.25), contrast=(0.8, 1.2), brightness=0.1)
    out_image, out_mask, out_weight = augment(image, mask, rng_for(0, 0, 0), config, weight)
    assert out_image.dtype == image.dtype and out_image.shape == (32, 32) + image.shape[2:]
    assert out_mask.dtype == mask.dtype and out_mask.shape == (32, 32)
    assert out_weight.dtype == np.float32 and out_weight.shape == (32, 32)
    assert augment(image, mask, rng_for(0, 0, 0), config)[2] is None


def test_shape_mismatch_and_float_mask_rejected() -> None:
    image, mask, _ = _sample(10, 10)
    with pytest.raises(ValueError, match="mask shape"):
        augment(image, mask[:5], rng_for(0, 0, 0), OFF)
    with pytest.raises(TypeError, match="integer"):
        augment(image, mask.astype(np.float32), rng_for(0, 0, 0), OFF)


# --- config ---------------------------------------------------------------------


def test_parse_example_spec() -> None:
    config = AugmentConfig.parse(EXAMPLE_SPEC)
    assert config == AugmentConfig(
        crop=256, scale=(0.8, 1.2), gamma=(0.8, 1.25), brightness=0.1, elastic_sigma=10.0
    )
    assert config.crop_size == (256, 256)
    assert AugmentConfig.parse("crop=128x96, contrast=0.9-1.1").crop_size == (128, 96)
    assert AugmentConfig.parse("elastic,elastic_grid=5,elastic_p=0.5").elastic_grid == 5


def test_parse_lists_only_what_is_enabled() -> None:
    assert AugmentConfig.parse("") == OFF == AugmentConfig.parse("none")
    assert AugmentConfig.parse("flip") == _only(flip=True)


@pytest.mark.parametrize(
    "spec", ["flip,warp=3", "rot90=1", "crop", "scale=1.2", "crop=big", "gamma=0-1"]
)
def test_parse_rejects_bad_terms(spec: str) -> None:
    with pytest.raises(ValueError) as err:
        AugmentConfig.parse(spec)
    assert "\n" not in str(err.value)


def test_parse_unknown_key_lists_valid_keys() -> None:
    with pytest.raises(ValueError, match=r"valid keys: flip, rot90, crop=.*elastic="):
        AugmentConfig.parse("flip,warp=3")


def test_none_is_identity() -> None:
    image, mask, weight = _sample()
    out = augment(image, mask, rng_for(0, 0, 0), OFF, weight)
    assert all(np.array_equal(a, b) for a, b in zip(out, (image, mask, weight)))


# -- volumes ------------------------------------------------------------------------------------------
def _volume() -> tuple[np.ndarray, np.ndarray]:
    image = np.arange(5 * 6 * 7, dtype=np.float32).reshape(5, 6, 7, 1)
    return image, (image[..., 0].astype(np.int64) % 3)


def test_volume_ops_move_image_and_mask_together() -> None:
    image, mask = _volume()
    config = AugmentConfig.parse("flip,rot90,crop=4x4x4")
    shapes = set()
    for index in range(12):
        out, labels, weight = augment_volume(image, mask, rng_for(0, 0, index), config)
        assert out.shape[:3] == labels.shape == (4, 4, 4) and weight is None
        np.testing.assert_array_equal(labels, out[..., 0].astype(np.int64) % 3)  # still aligned voxel by voxel
        shapes.add(out.tobytes())
    assert len(shapes) > 1  # the ops are random per item
    again = augment_volume(image, mask, rng_for(0, 0, 3), config)[0]
    np.testing.assert_array_equal(again, augment_volume(image, mask, rng_for(0, 0, 3), config)[0])


def test_volume_refuses_2d_warps_and_a_2d_crop() -> None:
    image, mask = _volume()
    with pytest.raises(ValueError, match="elastic is 2D only"):
        AugmentConfig.parse("flip,elastic").check_rank(3)
    with pytest.raises(ValueError, match="scale is 2D only"):
        augment_volume(image, mask, rng_for(0, 0, 0), AugmentConfig.parse("scale=0.8-1.2"))
    with pytest.raises(ValueError, match="crop 4x4 has 2 sides; these inputs have 3 spatial axes"):
        AugmentConfig.parse("crop=4x4").check_rank(3)
    assert AugmentConfig.parse("crop=4").crop_for(3) == (4, 4, 4)
