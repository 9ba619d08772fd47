"""Padding a model input up to the plugin's ``size_divisor``.

A U-Net of depth d needs sides divisible by 2**d; the predictor, the training
collate and the conformance kit all pad the same way (reflect) and crop back,
so a model sees the same border pixels wherever it runs.
"""

from __future__ import annotations

import numpy as np

__all__ = ["pad_to_multiple", "padded_shape", "pad_to_shape"]


def padded_shape(spatial: tuple[int, ...], divisor: int) -> tuple[int, ...]:
    """``spatial`` rounded up, axis by axis, to a multiple of ``divisor``."""
    step = max(int(divisor), 1)
    return tuple(-(-int(n) // step) * step for n in spatial)


def pad_to_shape(image: np.ndarray, spatial: tuple[int, ...]) -> np.ndarray:
    """Pad the spatial axes of a channels-first array at their far end up to ``spatial`` (reflect)."""
    pads = [(0, 0)] + [(0, max(want - size, 0)) for size, want in zip(image.shape[1:], spatial)]
    if all(p == (0, 0) for p in pads):
        return image
    return np.pad(image, pads, mode="reflect" if min(image.shape[1:]) > 1 else "edge")


def pad_to_multiple(image: np.ndarray, divisor: int) -> np.ndarray:
    """Pad the spatial axes of a channels-first (C, H, W) or (C, D, H, W) array up to a multiple
    of ``divisor`` (reflect); the caller crops back."""
    if divisor <= 1:
        return image
    return pad_to_shape(image, padded_shape(image.shape[1:], divisor))
