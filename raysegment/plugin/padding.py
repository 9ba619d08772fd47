"""Padding a model input up to the plugin's ``size_divisor``.

A U-Net of depth d needs sides divisible by 2**d; the predictor, the training
collate and the conformance kit all pad the same way (reflect) and crop back,
so a model sees the same border pixels wherever it runs.
"""

from __future__ import annotations

import numpy as np

__all__ = ["pad_to_multiple"]


def pad_to_multiple(image: np.ndarray, divisor: int) -> np.ndarray:
    """Pad the spatial axes of a channels-first (C, H, W) or (C, D, H, W) array up to a multiple
    of ``divisor`` (reflect); the caller crops back."""
    if divisor <= 1:
        return image
    pads = [(0, 0)] + [(0, (-size) % divisor) for size in image.shape[1:]]
    if all(p == (0, 0) for p in pads):
        return image
    return np.pad(image, pads, mode="reflect" if min(image.shape[1:]) > 1 else "edge")
