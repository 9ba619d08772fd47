"""Seeded CPU augmentations for segmentation training, applied jointly to image and mask.

Every geometric op moves the image, the label mask and an optional per-pixel
weight map through the *same* coordinates, so labels stay aligned with pixels.
Masks are only ever resampled nearest-neighbour, so they keep their label set.
Randomness comes from an explicit ``np.random.Generator``; :func:`rng_for`
derives it from ``(seed, epoch, index)`` alone, so an item's augmentation does
not depend on which worker draws it or whether training was resumed.

Volumes go through :func:`augment_volume` (flips, rot90 in the H-W plane, crop,
gray values). Order of ops in :func:`augment`: flips -> rot90 -> scale -> crop -> elastic ->
gray values. Scaling precedes the crop so the crop fixes the output size, and
the elastic warp runs after the crop so it only pays for the crop's pixels.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

__all__ = [
    "AugmentConfig",
    "augment",
    "augment_volume",
    "elastic_deform",
    "elastic_field",
    "rng_for",
]

Arrays = tuple[np.ndarray, np.ndarray, np.ndarray | None]

# CLI spec keys -> AugmentConfig fields (bare keys flip a boolean on).
_FLAG_KEYS = {"flip": "flip", "rot90": "rotate90"}
_VALUE_KEYS = {
    "crop": "crop",
    "scale": "scale",
    "gamma": "gamma",
    "contrast": "contrast",
    "brightness": "brightness",
    "elastic": "elastic_sigma",
    "elastic_grid": "elastic_grid",
    "elastic_p": "elastic_p",
    "ignore_index": "ignore_index",
    "order": "order",
}


@dataclass(frozen=True)
class AugmentConfig:
    """Which augmentations to apply; ``None`` ranges switch an op off.

    ``order`` is the image interpolation order for scale and elastic warps
    (1 bilinear, 3 bicubic); masks always use nearest, weights bilinear.
    """

    flip: bool = True
    rotate90: bool = True
    crop: int | tuple[int, ...] | None = None  # N, (H, W), or (D, H, W) for volumes
    scale: tuple[float, float] | None = None
    gamma: tuple[float, float] | None = None
    contrast: tuple[float, float] | None = None
    brightness: float | None = None
    elastic_sigma: float | None = 10.0
    elastic_grid: int = 3
    elastic_p: float = 1.0
    ignore_index: int = 255
    order: int = 1

    def __post_init__(self) -> None:
        for name in ("scale", "gamma", "contrast"):
            rng = getattr(self, name)
            if rng is not None and not (len(rng) == 2 and 0 < rng[0] <= rng[1]):
                raise ValueError(f"{name} must be (low, high) with 0 < low <= high, got {rng}")
        crop = None if self.crop is None else (self.crop,) if isinstance(self.crop, int) else tuple(self.crop)
        if crop is not None and (len(crop) not in (1, 2, 3) or min(crop) < 1):
            raise ValueError(f"crop must be positive, got {self.crop}")
        if self.brightness is not None and self.brightness < 0:
            raise ValueError(f"brightness must be >= 0, got {self.brightness}")
        if self.elastic_sigma is not None and self.elastic_sigma < 0:
            raise ValueError(f"elastic sigma must be >= 0, got {self.elastic_sigma}")
        if self.elastic_grid < 2:
            raise ValueError(f"elastic_grid must be >= 2, got {self.elastic_grid}")
        if not 0.0 <= self.elastic_p <= 1.0:
            raise ValueError(f"elastic_p must be in [0, 1], got {self.elastic_p}")
        if self.order not in range(6):
            raise ValueError(f"order must be a spline order 0..5, got {self.order}")

    @property
    def crop_size(self) -> tuple[int, int] | None:
        """The crop as ``(height, width)``, whichever form it was given in."""
        crop = self.crop_for(2)
        return None if crop is None else (crop[0], crop[1])

    def crop_for(self, rank: int) -> tuple[int, ...] | None:
        """The crop for inputs of ``rank`` spatial axes: ``crop=N`` is N on every axis."""
        if self.crop is None:
            return None
        if isinstance(self.crop, int):
            return (self.crop,) * rank
        if len(self.crop) != rank:
            raise ValueError(f"crop {'x'.join(map(str, self.crop))} has {len(self.crop)} sides; "
                             f"these inputs have {rank} spatial axes")
        return tuple(int(c) for c in self.crop)

    def check_rank(self, rank: int) -> None:
        """Refuse ops that do not exist for inputs of ``rank`` spatial axes (before any data is read).

        Volumes take flips, rot90 (in the H-W plane), crops and gray values; ``scale`` and
        ``elastic`` are 2D warps.
        """
        if rank == 3:
            two_d = [name for name, on in (("scale", self.scale is not None),
                                           ("elastic", self.elastic_sigma is not None)) if on]
            if two_d:
                raise ValueError(f"augmentation {', '.join(two_d)} is 2D only; volumes take flip, rot90, crop, "
                                 "gamma, contrast and brightness")
        self.crop_for(rank)

    @classmethod
    def none(cls) -> AugmentConfig:
        """The identity: no op enabled, inputs come back unchanged."""
        return cls(flip=False, rotate90=False, elastic_sigma=None)

    @classmethod
    def parse(cls, spec: str) -> AugmentConfig:
        """Build from a CLI string such as ``"flip,rot90,crop=256,scale=0.8-1.2,elastic=10"``.

        Only the listed ops are enabled (the rest start from :meth:`none`), so
        the string says everything that will happen. ``""`` or ``"none"`` is
        the identity; bare ``elastic`` uses the default sigma.
        """
        fields: dict[str, Any] = {}
        for token in (t.strip() for t in spec.split(",")):
            if not token or token == "none":
                continue
            key, sep, value = (s.strip() for s in token.partition("="))
            if key in _FLAG_KEYS and not sep:
                fields[_FLAG_KEYS[key]] = True
            elif key == "elastic" and not sep:
                fields["elastic_sigma"] = _default("elastic_sigma")
            elif key in _VALUE_KEYS and sep:
                fields[_VALUE_KEYS[key]] = _parse_value(key, value)
            else:
                valid = ", ".join([*_FLAG_KEYS, *(f"{k}=" for k in _VALUE_KEYS)])
                raise ValueError(f"bad augmentation term {token!r}; valid keys: {valid}")
        return dataclasses.replace(cls.none(), **fields)


def _default(field: str) -> Any:
    return next(f.default for f in dataclasses.fields(AugmentConfig) if f.name == field)


def _parse_value(key: str, value: str) -> Any:
    try:
        if key == "crop":
            parts = [int(p) for p in value.lower().split("x")]
            if len(parts) not in (1, 2, 3):
                raise ValueError
            return parts[0] if len(parts) == 1 else tuple(parts)
        if key in ("scale", "gamma", "contrast"):
            low, high = value.split("-")
            return (float(low), float(high))
        if key in ("elastic_grid", "ignore_index", "order"):
            return int(value)
        return float(value)
    except ValueError:
        hint = {"crop": "N, HxW or DxHxW"} | dict.fromkeys(("scale", "gamma", "contrast"), "LOW-HIGH")
        expected = hint.get(key, "a number")
        raise ValueError(f"bad value for {key}: {value!r} (expected {expected})") from None


def rng_for(seed: int, epoch: int, index: int) -> np.random.Generator:
    """A generator that depends only on ``(seed, epoch, index)``.

    Lets any worker, in any order, after any resume, draw the same
    augmentation for the same item of the same epoch.
    """
    if min(seed, epoch, index) < 0:
        raise ValueError(f"seed, epoch and index must be >= 0, got {(seed, epoch, index)}")
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(epoch), int(index)]))


def augment(
    image: np.ndarray,
    mask: np.ndarray,
    rng: np.random.Generator,
    config: AugmentConfig,
    weight: np.ndarray | None = None,
) -> Arrays:
    """Apply ``config``'s random ops to image (H, W[, C]), mask (H, W) and weight (H, W).

    Dtypes are preserved; the shape changes only through ``scale`` and ``crop``.
    An array that no op changed comes back as the input itself, not a copy.
    """
    _check(image, mask, weight)
    arrays: Arrays = (image, mask, weight)
    if config.flip:
        if rng.random() < 0.5:
            arrays = _map_geometry(np.fliplr, arrays)
        if rng.random() < 0.5:
            arrays = _map_geometry(np.flipud, arrays)
    if config.rotate90:
        k = int(rng.integers(4))
        arrays = _map_geometry(lambda a: np.rot90(a, k), arrays)
    if config.scale is not None:
        arrays = _scale(arrays, float(rng.uniform(*config.scale)), config.order)
    if config.crop_size is not None:
        arrays = _crop(arrays, config.crop_size, rng, config.ignore_index)
    if config.elastic_sigma is not None and rng.random() < config.elastic_p:
        arrays = elastic_deform(
            *arrays[:2], rng, config.elastic_sigma, config.elastic_grid, arrays[2], config.order
        )
    if config.gamma or config.contrast or config.brightness:
        arrays = (_gray_values(arrays[0], rng, config),) + arrays[1:]
    return _map_geometry(np.ascontiguousarray, arrays)


def augment_volume(
    image: np.ndarray,
    mask: np.ndarray,
    rng: np.random.Generator,
    config: AugmentConfig,
) -> Arrays:
    """Apply ``config``'s random ops to a volume (D, H, W, C) and its label volume (D, H, W).

    Flips along each axis, rot90 in the H-W plane, a random crop, then gray values; the
    same coordinates move image and mask, masks stay exact. ``scale`` and ``elastic``
    are refused (:meth:`AugmentConfig.check_rank`).
    """
    if image.ndim != 4 or mask.shape != image.shape[:3]:
        raise ValueError(f"volume must be (D, H, W, C) with a (D, H, W) mask, got {image.shape} and {mask.shape}")
    config.check_rank(3)
    arrays: Arrays = (image, mask, None)
    if config.flip:
        for axis in range(3):
            if rng.random() < 0.5:
                arrays = _map_geometry(lambda a, axis=axis: np.flip(a, axis), arrays)
    if config.rotate90:
        k = int(rng.integers(4))
        arrays = _map_geometry(lambda a: np.rot90(a, k, axes=(1, 2)), arrays)
    crop = config.crop_for(3)
    if crop is not None:
        arrays = _crop(arrays, crop, rng, config.ignore_index)
    if config.gamma or config.contrast or config.brightness:
        arrays = (_gray_values(arrays[0], rng, config),) + arrays[1:]
    return _map_geometry(np.ascontiguousarray, arrays)


def _check(image: np.ndarray, mask: np.ndarray, weight: np.ndarray | None) -> None:
    if image.ndim not in (2, 3):
        raise ValueError(f"image must be (H, W) or (H, W, C), got shape {image.shape}")
    if mask.shape != image.shape[:2]:
        raise ValueError(f"mask shape {mask.shape} does not match image {image.shape[:2]}")
    if not np.issubdtype(mask.dtype, np.integer):
        raise TypeError(f"mask must hold integer labels, got dtype {mask.dtype}")
    if weight is not None and weight.shape != image.shape[:2]:
        raise ValueError(f"weight shape {weight.shape} does not match image {image.shape[:2]}")


def _map_geometry(op: Callable[[np.ndarray], np.ndarray], arrays: Arrays) -> Arrays:
    """Apply one exact (index-permuting) op to all present arrays."""
    image, mask, weight = arrays
    return op(image), op(mask), None if weight is None else op(weight)


def _crop(arrays: Arrays, size: tuple[int, ...], rng: np.random.Generator, ignore: int) -> Arrays:
    """Random ``size`` window over the mask's axes (2D or 3D); inputs smaller than it are padded first.

    Padding is reflected in the image but ``ignore`` in the mask and 0 in the
    weight, so the loss never trains on invented pixels.
    """
    image, mask, weight = arrays
    shortfall = [max(s - n, 0) for s, n in zip(size, mask.shape)]
    pads = [(short // 2, short - short // 2) for short in shortfall]
    if any(p != (0, 0) for p in pads):
        limits = np.iinfo(mask.dtype)
        if not limits.min <= ignore <= limits.max:
            raise ValueError(f"ignore_index {ignore} does not fit mask dtype {mask.dtype}")
        image = np.pad(image, pads + [(0, 0)] * (image.ndim - mask.ndim), mode="reflect")
        mask = np.pad(mask, pads, mode="constant", constant_values=ignore)
        if weight is not None:
            weight = np.pad(weight, pads, mode="constant", constant_values=0)
    starts = [int(rng.integers(n - s + 1)) for n, s in zip(mask.shape, size)]  # top, left (2D order kept)
    window = tuple(slice(start, start + s) for start, s in zip(starts, size))
    return image[window], mask[window], None if weight is None else weight[window]


def _scale(arrays: Arrays, factor: float, order: int) -> Arrays:
    """Resize by ``factor`` with pixel centres aligned (edges map onto edges)."""
    height, width = arrays[1].shape
    out_h, out_w = max(1, round(height * factor)), max(1, round(width * factor))
    rows = (np.arange(out_h) + 0.5) * (height / out_h) - 0.5
    cols = (np.arange(out_w) + 0.5) * (width / out_w) - 0.5
    coords = np.stack(np.meshgrid(rows, cols, indexing="ij"))
    return _warp(arrays, coords, order)


def _warp(arrays: Arrays, coords: np.ndarray, order: int) -> Arrays:
    """Sample all arrays at the same source ``coords`` (2, H', W').

    The mask is read nearest-neighbour (no new labels), the weight bilinearly;
    all use reflect at the border so the mask reflects with the image.
    """
    image, mask, weight = arrays
    work = np.result_type(image.dtype, np.float32)
    channels = image.reshape(*image.shape[:2], -1)
    out = np.empty(coords.shape[1:] + channels.shape[2:], dtype=work)
    for c in range(channels.shape[2]):
        ndimage.map_coordinates(
            channels[..., c], coords, output=out[..., c], order=order, mode="reflect"
        )
    new_image = _to_dtype(out.reshape(coords.shape[1:] + image.shape[2:]), image.dtype)
    new_mask = ndimage.map_coordinates(mask, coords, output=mask.dtype, order=0, mode="reflect")
    new_weight = None
    if weight is not None:
        new_weight = ndimage.map_coordinates(
            weight, coords, output=np.result_type(weight.dtype, np.float32), order=1, mode="reflect"
        ).astype(weight.dtype, copy=False)
    return new_image, new_mask, new_weight


def _to_dtype(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Cast float results back, rounding and saturating for integer dtypes (no wrap-around)."""
    if np.issubdtype(dtype, np.integer):
        limits = np.iinfo(dtype)
        values = np.clip(np.rint(values), limits.min, limits.max)
    return values.astype(dtype, copy=False)


def elastic_field(
    shape: tuple[int, int], rng: np.random.Generator, sigma: float = 10.0, grid: int = 3
) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel displacements ``(dy, dx)`` for the U-Net elastic deformation.

    Draws ``grid x grid`` displacement vectors from N(0, sigma^2) px and
    upsamples them with a cubic spline (``ndimage.zoom``, order 3) whose nodes
    sit on the image corners and evenly between, so the field passes exactly
    through the coarse draws and is smooth in between (Ronneberger et al. 2015).
    """
    coarse = rng.normal(0.0, sigma, size=(2, grid, grid))
    rows, cols = (_spline_upsampler(n, grid) for n in shape)
    # The tensor-product spline is separable: zooming each axis alone is exact
    # (to ~1e-14) and far cheaper than a 2-D zoom of each coarse grid.
    return rows @ coarse[0] @ cols.T, rows @ coarse[1] @ cols.T


@functools.lru_cache(maxsize=32)
def _spline_upsampler(n: int, grid: int) -> np.ndarray:
    """(n, grid) matrix taking ``grid`` node values to ``n`` cubic-spline samples."""
    matrix = ndimage.zoom(np.eye(grid), (n / grid, 1), order=3, mode="mirror", grid_mode=False)
    matrix.setflags(write=False)
    return matrix


def elastic_deform(
    image: np.ndarray,
    mask: np.ndarray,
    rng: np.random.Generator,
    sigma: float = 10.0,
    grid: int = 3,
    weight: np.ndarray | None = None,
    order: int = 1,
) -> Arrays:
    """Warp image, mask and weight through one random smooth field (U-Net style).

    The image is interpolated with spline ``order`` (1 or 3), the mask nearest
    so it keeps its label set, the weight bilinearly; borders reflect.
    """
    _check(image, mask, weight)
    dy, dx = elastic_field(mask.shape, rng, sigma, grid)
    rows, cols = np.indices(mask.shape, dtype=np.float64)
    return _warp((image, mask, weight), np.stack([rows + dy, cols + dx]), order)


def _gray_values(image: np.ndarray, rng: np.random.Generator, config: AugmentConfig) -> np.ndarray:
    """Random gamma, contrast and brightness, saturating at the value range.

    The range is the dtype's for integers; float images in [0, 1] use [0, 1],
    other floats their own min..max, since floats carry no natural range.
    """
    lo, hi = _value_range(image)
    span = (hi - lo) or 1.0
    values = image.astype(np.result_type(image.dtype, np.float32))
    if config.gamma is not None:
        # log-uniform, so a range like 0.8-1.25 is symmetric around identity.
        gamma = float(np.exp(rng.uniform(np.log(config.gamma[0]), np.log(config.gamma[1]))))
        values = lo + span * np.clip((values - lo) / span, 0.0, 1.0) ** gamma
    if config.contrast is not None:
        mean = values.mean()
        values = mean + float(rng.uniform(*config.contrast)) * (values - mean)
    if config.brightness:
        values = values + float(rng.uniform(-config.brightness, config.brightness)) * span
    return _to_dtype(np.clip(values, lo, hi), image.dtype)


def _value_range(image: np.ndarray) -> tuple[float, float]:
    if np.issubdtype(image.dtype, np.integer):
        limits = np.iinfo(image.dtype)
        return float(limits.min), float(limits.max)
    lo, hi = float(image.min()), float(image.max())
    return (0.0, 1.0) if lo >= 0.0 and hi <= 1.0 else (lo, hi)
