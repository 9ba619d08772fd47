"""Training losses against values worked out by hand on tiny tensors, and the spec parser."""

from __future__ import annotations

import math
import pickle

import pytest
import torch
import torch.nn.functional as F

from raysegment.criteria.losses import LOSSES, Loss, UnknownLossError, build_loss, parse_loss_spec
from raysegment.plugin.contract import SegmentationModel

IGNORE = 255


def _sig(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


def _softmax(zs: tuple[float, ...]) -> list[float]:
    total = sum(math.exp(z) for z in zs)
    return [math.exp(z) / total for z in zs]


# Two pixels, two classes: pixel A has logits (2, 0) and target 0, pixel B (0, 1) and target 1.
LOGITS = torch.tensor([[[[2.0, 0.0]], [[0.0, 1.0]]]])  # (1, 2, 1, 2)
TARGET = torch.tensor([[[0, 1]]])  # (1, 1, 2)
P_A = _softmax((2.0, 0.0))  # probabilities at pixel A
P_B = _softmax((0.0, 1.0))
LOG_PA, LOG_PB = math.log(P_A[0]), math.log(P_B[1])  # log p of each target class

# One sigmoid channel: z = (2, -1) against targets (1, 0).
LOGITS_1 = torch.tensor([[[[2.0, -1.0]]]])  # (1, 1, 1, 2)
TARGET_1 = torch.tensor([[[1, 0]]])


def _fn(name: str, **options: object):
    return build_loss(name, num_classes=LOGITS.shape[1], **options)


def _value(name: str, logits: torch.Tensor = LOGITS, target: torch.Tensor = TARGET, **options: object) -> float:
    loss = build_loss(name, num_classes=logits.shape[1], **options)
    return float(loss(logits, target))


# -- hand-computed values -----------------------------------------------------------------
def test_ce_by_hand() -> None:
    assert _value("ce") == pytest.approx(-(LOG_PA + LOG_PB) / 2, rel=1e-6)


def test_ce_class_weights_normalise_by_summed_weight() -> None:
    expected = -(1.0 * LOG_PA + 3.0 * LOG_PB) / (1.0 + 3.0)
    assert _value("ce", class_weights=[1.0, 3.0]) == pytest.approx(expected, rel=1e-6)


def test_ce_ignore_index_drops_pixel() -> None:
    target = torch.tensor([[[0, IGNORE]]])
    assert _value("ce", target=target) == pytest.approx(-LOG_PA, rel=1e-6)


def test_ce_single_channel_is_sigmoid_bce() -> None:
    expected = -(math.log(_sig(2.0)) + math.log(1.0 - _sig(-1.0))) / 2
    assert _value("ce", LOGITS_1, TARGET_1) == pytest.approx(expected, rel=1e-6)


def test_ce_matches_plugin_default_loss() -> None:
    """The plugin's default loss and ``ce`` agree, ignored pixels included."""
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 5, 4)
    target = torch.randint(0, 3, (2, 5, 4))
    target[0, :2] = IGNORE
    plugin = SegmentationModel()
    plugin.params = {"in_channels": 1, "num_classes": 3}
    assert _value("ce", logits, target) == pytest.approx(float(plugin.loss(logits, target)), rel=1e-5)
    weights = torch.tensor([0.5, 1.0, 2.0])
    reference = F.cross_entropy(logits, target, weight=weights, ignore_index=IGNORE)
    assert _value("ce", logits, target, class_weights=[0.5, 1.0, 2.0]) == pytest.approx(float(reference), rel=1e-5)


def test_bce_one_vs_rest_by_hand() -> None:
    # A: channel 0 (z=2) is its class, channel 1 (z=0) is not; B: channel 0 (z=0) not, channel 1 (z=1) is.
    terms = [-math.log(_sig(2.0)), math.log(2.0), math.log(2.0), -math.log(_sig(1.0))]
    assert _value("bce") == pytest.approx(sum(terms) / 4, rel=1e-6)


def test_bce_single_channel_by_hand_and_ignore() -> None:
    expected = (-math.log(_sig(2.0)) - math.log(1.0 - _sig(-1.0))) / 2
    assert _value("bce", LOGITS_1, TARGET_1) == pytest.approx(expected, rel=1e-6)
    ignored = torch.tensor([[[1, IGNORE]]])
    assert _value("bce", LOGITS_1, ignored) == pytest.approx(-math.log(_sig(2.0)), rel=1e-6)


def _dice(inter: float, sum_p: float, sum_g: float, smooth: float = 1.0) -> float:
    return (2 * inter + smooth) / (sum_p + sum_g + smooth)


def test_dice_by_hand() -> None:
    d0 = _dice(P_A[0], P_A[0] + P_B[0], 1.0)
    d1 = _dice(P_B[1], P_A[1] + P_B[1], 1.0)
    assert _value("dice") == pytest.approx(1 - (d0 + d1) / 2, rel=1e-6)


def test_dice_leaves_out_class_absent_from_target_and_prediction() -> None:
    logits = torch.tensor([[[[2.0, 0.0]], [[0.0, 1.0]], [[-1.0, -1.0]]]])  # class 2 never wins
    pa, pb = _softmax((2.0, 0.0, -1.0)), _softmax((0.0, 1.0, -1.0))
    d0 = _dice(pa[0], pa[0] + pb[0], 1.0)
    d1 = _dice(pb[1], pa[1] + pb[1], 1.0)
    assert _value("dice", logits) == pytest.approx(1 - (d0 + d1) / 2, rel=1e-6)


def test_dice_counts_class_only_predicted() -> None:
    """Class 1 is in no target but wins at pixel B: it is averaged in, with Dice s / (sum p + s)."""
    target = torch.tensor([[[0, 0]]])
    d0 = _dice(P_A[0] + P_B[0], P_A[0] + P_B[0], 2.0)
    d1 = _dice(0.0, P_A[1] + P_B[1], 0.0)
    assert _value("dice", target=target) == pytest.approx(1 - (d0 + d1) / 2, rel=1e-6)


def test_dice_single_channel_foreground_only_and_ignore() -> None:
    expected = 1 - _dice(_sig(2.0), _sig(2.0) + _sig(-1.0), 1.0)
    assert _value("dice", LOGITS_1, TARGET_1) == pytest.approx(expected, rel=1e-6)
    ignored = torch.tensor([[[1, IGNORE]]])
    assert _value("dice", LOGITS_1, ignored) == pytest.approx(1 - _dice(_sig(2.0), _sig(2.0), 1.0), rel=1e-6)


def test_focal_by_hand() -> None:
    pa, pb = P_A[0], P_B[1]
    expected = -((1 - pa) ** 2 * math.log(pa) + (1 - pb) ** 2 * math.log(pb)) / 2
    assert _value("focal") == pytest.approx(expected, rel=1e-6)
    expected_g1 = -((1 - pa) * math.log(pa) + (1 - pb) * math.log(pb)) / 2
    assert _value("focal", focal_gamma=1.0) == pytest.approx(expected_g1, rel=1e-6)


def test_focal_alpha_per_class() -> None:
    pa, pb = P_A[0], P_B[1]
    expected = -(0.25 * (1 - pa) ** 2 * math.log(pa) + 0.75 * (1 - pb) ** 2 * math.log(pb)) / 2
    assert _value("focal", class_weights=[0.25, 0.75]) == pytest.approx(expected, rel=1e-6)


def test_focal_single_channel_is_sigmoid_focal() -> None:
    """Lin et al.'s alpha = 0.25 on the foreground is class_weights (0.75, 0.25)."""
    p_fg, p_bg = _sig(2.0), 1.0 - _sig(-1.0)
    expected = -(0.25 * (1 - p_fg) ** 2 * math.log(p_fg) + 0.75 * (1 - p_bg) ** 2 * math.log(p_bg)) / 2
    assert _value("focal", LOGITS_1, TARGET_1, class_weights=[0.75, 0.25]) == pytest.approx(expected, rel=1e-6)


def test_focal_gamma_zero_is_ce() -> None:
    assert _value("focal", focal_gamma=0.0) == pytest.approx(_value("ce"), rel=1e-6)


def test_unet_weighted_divides_by_valid_pixels() -> None:
    loss = _fn("unet_weighted")
    weight_map = torch.tensor([[[2.0, 5.0]]])
    assert float(loss(LOGITS, TARGET, weight_map)) == pytest.approx(-(2 * LOG_PA + 5 * LOG_PB) / 2, rel=1e-6)
    ignored = torch.tensor([[[0, IGNORE]]])
    assert float(loss(LOGITS, ignored, weight_map)) == pytest.approx(-2 * LOG_PA, rel=1e-6)
    assert float(loss(LOGITS, TARGET, torch.ones(1, 1, 2))) == pytest.approx(_value("ce"), rel=1e-6)


def test_unet_weighted_needs_weight_map() -> None:
    loss = _fn("unet_weighted")
    assert loss.needs_weight_map and not _fn("ce+dice").needs_weight_map
    with pytest.raises(ValueError, match="weight map"):
        loss(LOGITS, TARGET)
    with pytest.raises(ValueError, match="does not match"):
        loss(LOGITS, TARGET, torch.ones(1, 2, 2))


def test_other_losses_ignore_weight_map() -> None:
    weight_map = torch.tensor([[[7.0, 0.5]]])
    for name in ("ce", "bce", "dice", "focal"):
        loss = _fn(name)
        assert float(loss(LOGITS, TARGET, weight_map)) == float(loss(LOGITS, TARGET))


# -- combination and spec parsing -----------------------------------------------------------
def test_combination_weights() -> None:
    combined = _fn("ce:1,dice:0.5")
    assert combined.terms == (("ce", 1.0), ("dice", 0.5))
    assert float(combined(LOGITS, TARGET)) == pytest.approx(_value("ce") + 0.5 * _value("dice"), rel=1e-6)
    plus = _fn(" CE + focal:2 ")
    assert plus.terms == (("ce", 1.0), ("focal", 2.0))
    assert float(plus(LOGITS, TARGET)) == pytest.approx(_value("ce") + 2 * _value("focal"), rel=1e-6)
    assert parse_loss_spec("ce:1e+0,dice") == (("ce", 1.0), ("dice", 1.0))


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(UnknownLossError) as info:
        build_loss("ce+lovasz", num_classes=2)
    message = str(info.value)
    assert isinstance(info.value, ValueError) and "\n" not in message
    assert "'lovasz'" in message and all(name in message for name in LOSSES)


@pytest.mark.parametrize("spec", ["", "ce+", "ce:abc", "ce:", "ce:-1", "ce:nan", "ce,ce", "dice:1:2"])
def test_malformed_spec_is_one_line_error(spec: str) -> None:
    with pytest.raises(ValueError) as info:
        build_loss(spec, num_classes=2)
    assert "\n" not in str(info.value) and not isinstance(info.value, UnknownLossError)


def test_option_checks() -> None:
    with pytest.raises(ValueError, match="class_weights has 3 values; 2 needed"):
        build_loss("ce", num_classes=2, class_weights=[1, 2, 3])
    with pytest.raises(ValueError, match="focal_gamma"):
        build_loss("focal", num_classes=2, focal_gamma=-1)
    with pytest.raises(ValueError, match=r"expected logits \(B, 3, H, W\)"):
        build_loss("ce", num_classes=3)(LOGITS, TARGET)


def test_loss_pickles_for_ray_workers() -> None:
    loss = build_loss("ce:1,focal:0.5", num_classes=2, class_weights=[1.0, 2.0])
    clone = pickle.loads(pickle.dumps(loss))
    assert isinstance(clone, Loss) and clone == loss
    assert float(clone(LOGITS, TARGET)) == pytest.approx(float(loss(LOGITS, TARGET)))


# -- gradients and degenerate batches -------------------------------------------------------------
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("name", sorted(LOSSES))
def test_gradients_flow(name: str, channels: int) -> None:
    torch.manual_seed(1)
    logits = torch.randn(2, channels, 6, 5, requires_grad=True)
    target = torch.randint(0, max(channels, 2), (2, 6, 5))
    target[:, 0] = IGNORE
    weight_map = torch.rand(2, 6, 5) + 0.5
    value = build_loss(name, num_classes=channels)(logits, target, weight_map)
    value.backward()
    assert value.ndim == 0 and torch.isfinite(value)
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    assert logits.grad[:, :, 0].abs().sum() == 0  # ignored row gets no gradient


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("name", sorted(LOSSES))
def test_all_ignored_gives_zero_with_grad(name: str, channels: int) -> None:
    logits = torch.randn(2, channels, 4, 4, requires_grad=True)
    target = torch.full((2, 4, 4), IGNORE)
    value = build_loss(name, num_classes=channels, class_weights=[1.0] * max(channels, 2))(
        logits, target, torch.ones(2, 4, 4)
    )
    assert value.item() == 0.0 and value.requires_grad
    value.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_auxiliary_outputs_are_weighted_into_the_loss() -> None:
    from raysegment.plugin.contract import with_aux_losses

    target = torch.randint(0, 3, (2, 8, 8))
    main, aux = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    ce = lambda logits: torch.nn.functional.cross_entropy(logits, target)  # noqa: E731
    assert torch.equal(with_aux_losses(main, ce, ()), ce(main))
    assert torch.allclose(with_aux_losses((main, aux), ce, (0.4,)), ce(main) + 0.4 * ce(aux))
    with pytest.raises(ValueError, match="1 auxiliary output"):
        with_aux_losses((main, aux), ce, ())
