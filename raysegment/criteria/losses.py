"""Training losses for semantic segmentation, chosen by name and combined with weights.

Every loss has the signature ``fn(logits, target, weight_map=None, **options)``
with logits (B, K, H, W), a class-index target (B, H, W) int64 (as made by
``SegmentationModel.encode_target``) and an optional per-pixel weight map
(B, H, W) from the data stage. Pixels whose target is ``ignore_index`` take no
part in any loss, and a batch with no valid pixel gives 0 (with a gradient)
rather than 0/0 = NaN.

A single logit channel (K == 1, a sigmoid model with 0/1 targets) is read as
the two-class logits ``[0, z]``: their softmax is ``[1 - sigmoid(z), sigmoid(z)]``,
so softmax cross-entropy and focal loss become their sigmoid forms exactly, and
per-class weights for K == 1 have two entries (target 0, target 1).

:func:`build_loss` turns a spec such as ``"ce"``, ``"ce+dice"`` or
``"ce:1,dice:0.5"`` into a :class:`Loss`, the weighted sum of the named terms.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import re
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "LOSSES",
    "Loss",
    "LossFn",
    "UnknownLossError",
    "binary_cross_entropy",
    "build_loss",
    "cross_entropy",
    "focal",
    "parse_loss_spec",
    "soft_dice",
    "unet_weighted_cross_entropy",
]

LossFn = Callable[..., Tensor]


class UnknownLossError(ValueError):
    """A loss spec names a loss that is not in :data:`LOSSES`."""


# -- shared pieces ---------------------------------------------------------------------
def _checked(logits: Tensor, target: Tensor, ignore_index: int) -> tuple[Tensor, Tensor]:
    """Valid-pixel mask, and the target with ignored pixels set to 0 so gather/one-hot stay in range."""
    if logits.ndim != 4 or tuple(target.shape) != (logits.shape[0], *logits.shape[2:]):
        raise ValueError(
            f"expected logits (B, K, H, W) and target (B, H, W), "
            f"got {tuple(logits.shape)} and {tuple(target.shape)}"
        )
    valid = target != ignore_index
    return valid, torch.where(valid, target, torch.zeros_like(target))


def _log_probs(logits: Tensor) -> Tensor:
    """Per-class log-probabilities in float32; K == 1 is read as logits [0, z] (see module doc)."""
    logits = logits.float()
    if logits.shape[1] == 1:
        logits = torch.cat([torch.zeros_like(logits), logits], dim=1)
    return F.log_softmax(logits, dim=1)


def _target_log_prob(logits: Tensor, safe_target: Tensor) -> Tensor:
    """log p of each pixel's target class, (B, H, W)."""
    return _log_probs(logits).gather(1, safe_target.unsqueeze(1)).squeeze(1)


def _one_hot(target: Tensor, num_classes: int) -> Tensor:
    """(B, H, W) class indices -> (B, K, H, W) float one-hot."""
    return F.one_hot(target, num_classes).permute(0, 3, 1, 2).float()


def _class_table(values: Sequence[float], logits: Tensor) -> Tensor:
    """Per-class weights as a tensor on the logits' device; one entry per class (two for K == 1)."""
    expected = max(logits.shape[1], 2)
    table = torch.as_tensor(values, dtype=torch.float32, device=logits.device)
    if table.shape != (expected,):
        raise ValueError(f"class weights need {expected} values for {logits.shape[1]} logit channel(s), got {len(values)}")
    return table


def _ratio(num: Tensor, den: Tensor) -> Tensor:
    """num / den, and 0 (keeping num's graph) where den is 0: the all-ignored batch, without a host sync."""
    return num / torch.where(den > 0, den, torch.ones_like(den))


def _valid_mean(values: Tensor, valid: Tensor) -> Tensor:
    """Mean of per-pixel values (B, H, W) over the valid pixels; 0 when there are none."""
    valid_f = valid.float()
    return _ratio((values * valid_f).sum(), valid_f.sum())


# -- the losses ------------------------------------------------------------------------
def cross_entropy(
    logits: Tensor,
    target: Tensor,
    weight_map: Tensor | None = None,
    *,
    ignore_index: int = 255,
    class_weights: Sequence[float] | None = None,
) -> Tensor:
    """Pixel-wise softmax cross-entropy over valid pixels.

    With class weights the sum is divided by the summed weight of the valid
    pixels (``torch.nn.functional.cross_entropy``'s convention), so the loss
    scale does not move when the weights are rescaled.
    """
    valid, safe = _checked(logits, target, ignore_index)
    weight = valid.float()
    if class_weights is not None:
        weight = weight * _class_table(class_weights, logits)[safe]
    return _ratio(-(_target_log_prob(logits, safe) * weight).sum(), weight.sum())


def binary_cross_entropy(
    logits: Tensor,
    target: Tensor,
    weight_map: Tensor | None = None,
    *,
    ignore_index: int = 255,
) -> Tensor:
    """Binary cross-entropy with logits, averaged over valid pixels and channels.

    K == 1: the single logit against 0/1 targets. K > 1: each channel is its
    own one-vs-rest problem against the one-hot target (multi-label style).
    """
    valid, safe = _checked(logits, target, ignore_index)
    k = logits.shape[1]
    truth = safe.unsqueeze(1).float() if k == 1 else _one_hot(safe, k)
    per_pixel = F.binary_cross_entropy_with_logits(logits.float(), truth, reduction="none").mean(dim=1)
    return _valid_mean(per_pixel, valid)


def soft_dice(
    logits: Tensor,
    target: Tensor,
    weight_map: Tensor | None = None,
    *,
    ignore_index: int = 255,
    smooth: float = 1.0,
) -> Tensor:
    """1 - mean soft Dice, ``(2 sum(p g) + s) / (sum p + sum g + s)`` per class.

    Probabilities are the softmax (K > 1) or the sigmoid (K == 1, foreground
    class only). Sums run over the whole batch, one Dice per class. Classes are
    averaged over those *present* in the batch: in the target or the arg-max
    prediction of some valid pixel. A class absent from both is left out rather
    than counted as a perfect 1 (which would dilute the loss) or a 0 (which would
    punish what cannot be improved); no class present gives 0.
    """
    valid, safe = _checked(logits, target, ignore_index)
    probs = _log_probs(logits).exp()
    kk = probs.shape[1]
    mask = valid.unsqueeze(1).float()
    truth = _one_hot(safe, kk) * mask
    probs = probs * mask
    dims = (0, 2, 3)
    dice = (2.0 * (probs * truth).sum(dims) + smooth) / (probs.sum(dims) + truth.sum(dims) + smooth)
    predicted = (_one_hot(probs.detach().argmax(dim=1), kk) * mask).sum(dims)
    present = ((truth.sum(dims) + predicted) > 0).float()
    if logits.shape[1] == 1:
        present = present * torch.tensor([0.0, 1.0], device=present.device)
    return _ratio(((1.0 - dice) * present).sum(), present.sum())


def focal(
    logits: Tensor,
    target: Tensor,
    weight_map: Tensor | None = None,
    *,
    ignore_index: int = 255,
    class_weights: Sequence[float] | None = None,
    gamma: float = 2.0,
) -> Tensor:
    """Focal loss (Lin et al. 2017), ``-alpha_t (1 - p_t)^gamma log p_t``, mean over valid pixels.

    Softmax over classes; K == 1 gives the sigmoid focal loss. ``class_weights``
    are the per-class alpha (for K == 1: alpha of target 0 and of target 1, so
    the paper's alpha = 0.25 is ``(0.75, 0.25)``). The mean is over valid pixels,
    not over alpha, as alpha is a multiplier in the paper.
    """
    valid, safe = _checked(logits, target, ignore_index)
    log_p = _target_log_prob(logits, safe)
    # (1 - p)^gamma; the floor keeps the gradient finite at p == 1 for gamma < 1.
    per_pixel = -(-torch.expm1(log_p)).clamp_min(1e-12).pow(gamma) * log_p
    if class_weights is not None:
        per_pixel = per_pixel * _class_table(class_weights, logits)[safe]
    return _valid_mean(per_pixel, valid)


def unet_weighted_cross_entropy(
    logits: Tensor,
    target: Tensor,
    weight_map: Tensor | None = None,
    *,
    ignore_index: int = 255,
) -> Tensor:
    """U-Net border-weighted cross-entropy (Ronneberger et al. 2015, eq. 1).

    The paper's energy ``E = sum_x w(x) log p_l(x)(x)`` is a sum; here it is
    ``-sum w(x) log p_l(x)(x)`` divided by the number of valid pixels (not by
    ``sum w``), so the loss does not depend on image size and the weight map
    (class balance + ``w0`` border ridge, see :mod:`raysegment.criteria.weightmap`)
    keeps its full effect on the scale of the gradient.
    """
    if weight_map is None:
        raise ValueError(
            "unet_weighted needs the per-pixel weight map (B, H, W) from the data stage "
            "(raysegment.criteria.weightmap.unet_weight_map)"
        )
    valid, safe = _checked(logits, target, ignore_index)
    weight_map = torch.as_tensor(weight_map, device=logits.device, dtype=torch.float32)
    if weight_map.shape != target.shape:
        raise ValueError(f"weight map shape {tuple(weight_map.shape)} does not match target {tuple(target.shape)}")
    weight = torch.where(valid, weight_map, torch.zeros_like(weight_map))
    return _ratio(-(_target_log_prob(logits, safe) * weight).sum(), valid.float().sum())


#: name -> (loss function, one-line description), for docs and the CLI.
LOSSES: dict[str, tuple[LossFn, str]] = {
    "ce": (cross_entropy, "pixel-wise softmax cross-entropy; optional class weights"),
    "bce": (binary_cross_entropy, "binary cross-entropy with logits; one-vs-rest for K > 1"),
    "dice": (soft_dice, "1 - soft Dice, averaged over classes present in target or prediction"),
    "focal": (focal, "focal loss (Lin et al. 2017); gamma, class weights as alpha"),
    "unet_weighted": (
        unet_weighted_cross_entropy,
        "U-Net border-weighted cross-entropy; needs the data stage's weight map",
    ),
}

_NEEDS_WEIGHT_MAP = frozenset({"unet_weighted"})
_TERM_SPLIT = re.compile(r",|\+(?![\d.])")  # not a '+' before a digit, so "1e+3" stays a number


def parse_loss_spec(spec: str) -> tuple[tuple[str, float], ...]:
    """``"ce+dice"`` / ``"ce:1,dice:0.5"`` -> ``(("ce", 1.0), ("dice", 0.5))``; weights default to 1."""
    terms: list[tuple[str, float]] = []
    for part in _TERM_SPLIT.split(spec):
        name, sep, raw = (s.strip() for s in part.partition(":"))
        name = name.lower()
        if not name:
            raise ValueError(f"loss spec {spec!r} has an empty term; write e.g. 'ce:1,dice:0.5'")
        if name not in LOSSES:
            raise UnknownLossError(f"unknown loss {name!r} in {spec!r}; valid: {', '.join(LOSSES)}")
        try:
            weight = float(raw) if sep else 1.0
        except ValueError:
            raise ValueError(f"loss weight {raw!r} for {name!r} is not a number; write e.g. 'ce:1,dice:0.5'") from None
        if not (math.isfinite(weight) and weight >= 0):
            raise ValueError(f"loss weight for {name!r} must be a finite number >= 0, got {raw!r}")
        if any(name == seen for seen, _ in terms):
            raise ValueError(f"loss {name!r} appears twice in {spec!r}")
        terms.append((name, weight))
    return tuple(terms)


@dataclasses.dataclass(frozen=True)
class Loss:
    """A weighted sum of named losses with their options bound; made by :func:`build_loss`.

    Plain data and module-level functions, so it pickles to Ray workers.
    """

    terms: tuple[tuple[str, float], ...]
    num_classes: int
    ignore_index: int = 255
    class_weights: tuple[float, ...] | None = None
    focal_gamma: float = 2.0
    _fns: tuple[LossFn, ...] = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.terms:
            raise ValueError("a loss needs at least one term")
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")
        expected = max(self.num_classes, 2)
        if self.class_weights is not None and len(self.class_weights) != expected:
            raise ValueError(
                f"class_weights has {len(self.class_weights)} values; {expected} needed for num_classes={self.num_classes}"
            )
        if not (math.isfinite(self.focal_gamma) and self.focal_gamma >= 0):
            raise ValueError(f"focal_gamma must be a finite number >= 0, got {self.focal_gamma}")
        options: dict[str, Any] = {
            "ignore_index": self.ignore_index,
            "class_weights": self.class_weights,
            "gamma": self.focal_gamma,
        }
        fns = []
        for name, _ in self.terms:
            fn = LOSSES[name][0]
            accepted = inspect.signature(fn).parameters
            fns.append(functools.partial(fn, **{k: v for k, v in options.items() if k in accepted}))
        object.__setattr__(self, "_fns", tuple(fns))

    @property
    def needs_weight_map(self) -> bool:
        """Whether the data stage must supply a per-pixel weight map."""
        return any(name in _NEEDS_WEIGHT_MAP for name, _ in self.terms)

    def __call__(self, logits: Tensor, target: Tensor, weight_map: Tensor | None = None) -> Tensor:
        """The weighted sum of the terms, a scalar tensor."""
        if logits.ndim != 4 or logits.shape[1] != self.num_classes:
            raise ValueError(f"expected logits (B, {self.num_classes}, H, W), got {tuple(logits.shape)}")
        values = [weight * fn(logits, target, weight_map) for (_, weight), fn in zip(self.terms, self._fns)]
        return torch.stack(values).sum()


def build_loss(
    spec: str,
    *,
    num_classes: int,
    ignore_index: int = 255,
    class_weights: Sequence[float] | None = None,
    focal_gamma: float = 2.0,
) -> Loss:
    """Build the loss named by ``spec`` (``"ce"``, ``"ce+dice"``, ``"ce:1,dice:0.5"``, ...).

    ``class_weights`` (one per class; two for num_classes == 1) go to ``ce`` and,
    as alpha, to ``focal``; the other losses do not take them.
    """
    weights = None if class_weights is None else tuple(float(w) for w in class_weights)
    return Loss(parse_loss_spec(spec), num_classes, ignore_index, weights, focal_gamma)
