"""Fully connected (dense) CRF post-processing, as DeepLab v1/v2 use it (Krähenbühl & Koltun, NIPS 2011).

The energy is E(x) = sum_i -log P(x_i) + sum_{i<j} mu(x_i, x_j) k(f_i, f_j) with Potts
compatibility and the two Gaussian kernels of the DeepLab papers::

    k = w1 exp(-|p_i - p_j|^2 / (2 theta_alpha^2) - |I_i - I_j|^2 / (2 theta_beta^2))   # bilateral
      + w2 exp(-|p_i - p_j|^2 / (2 theta_gamma^2))                                       # smoothness

solved by mean-field inference with the permutohedral lattice of the maintained
``pydensecrf2`` package (import name ``pydensecrf``), installed by the
``raysegment-deeplab[crf]`` extra. Nothing here is a home-made CRF. The
bilateral kernel takes every image band (any band count), each scaled by
theta_beta, in the 0..255 intensity units the papers use.
"""

from __future__ import annotations

import importlib.util

import numpy as np

__all__ = ["CRF_EXTRA", "crf_available", "dense_crf"]

CRF_EXTRA = "raysegment-deeplab[crf]"


def crf_available() -> bool:
    """Whether ``pydensecrf2`` is installed (checked without importing its extension)."""
    return importlib.util.find_spec("pydensecrf") is not None


def dense_crf(probs: np.ndarray, image: np.ndarray, *, iterations: int = 10, bilateral_weight: float = 4.0,
              theta_alpha: float = 121.0, theta_beta: float = 5.0, gaussian_weight: float = 3.0,
              theta_gamma: float = 3.0) -> np.ndarray:
    """Mean-field marginals (K, H, W) float32 of the dense CRF over softmax ``probs`` (K, H, W) and ``image``.

    ``image`` is (H, W, C) uint8 (0..255), any C; a weight of 0 drops its kernel.
    """
    import pydensecrf.densecrf as dcrf
    from pydensecrf.utils import create_pairwise_bilateral, create_pairwise_gaussian, unary_from_softmax

    k, h, w = probs.shape
    if image.shape[:2] != (h, w):
        raise ValueError(f"image {image.shape[:2]} and probabilities {(h, w)} differ in size")
    crf = dcrf.DenseCRF(h * w, k)
    crf.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(probs.astype(np.float32))))
    if gaussian_weight > 0:
        feats = create_pairwise_gaussian((theta_gamma, theta_gamma), (h, w))
        crf.addPairwiseEnergy(np.ascontiguousarray(feats, dtype=np.float32), compat=float(gaussian_weight))
    if bilateral_weight > 0:
        img = image if image.ndim == 3 else image[:, :, None]
        feats = create_pairwise_bilateral((theta_alpha, theta_alpha), (theta_beta,) * img.shape[2], img, chdim=2)
        crf.addPairwiseEnergy(np.ascontiguousarray(feats, dtype=np.float32), compat=float(bilateral_weight))
    q = np.asarray(crf.inference(int(iterations)), dtype=np.float32)
    return q.reshape(k, h, w)
