"""The plugin conformance kit: does a model plugin keep the contract of :mod:`raysegment.plugin.contract`?

The pipeline calls a plugin's hooks on different machines, so a broken hook
shows up late and far from its cause. These checks run every hook once, on CPU
and tiny synthetic inputs, in pipeline order, and say which promise broke:
``assert_conforms("unet", {"depth": 2})``, ``raysegment models check unet``, or
one pytest test per check by subclassing :class:`ModelConformance` in a
plugin's tests. pytest is never imported here, so the CLI works without it.

Volume models (``Modality.VOLUME``) run the same checks on ``(D, H, W, C)`` samples
with three distinct sizes (so a swapped axis shows), padded on all three axes;
their masks are checked slice by slice where the output encoding is 2D (RLE).
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from raysegment.errors import describe_error
from raysegment.masks.rle import row_label_map, row_masks, segments_from_prediction
from raysegment.plugin.checkpoint import load_checkpoint, load_weights, save_checkpoint
from raysegment.plugin.contract import (
    InputError,
    InstancePrediction,
    Modality,
    Prediction,
    Sample,
    SegmentationModel,
    SemanticPrediction,
)
from raysegment.plugin.padding import pad_to_multiple
from raysegment.plugin.registry import contract_violations
from raysegment.tasks.spec import PredictionError, task_spec

__all__ = ["CheckResult", "CheckFailed", "CheckContext", "CHECKS", "NEEDS"]

@dataclasses.dataclass
class CheckResult:
    """The outcome of one check: its name, whether it passed, why, and how long it took."""

    name: str
    ok: bool
    message: str
    seconds: float


class CheckFailed(AssertionError):
    """A broken promise, with a message meant for the plugin author."""


def _require(condition: Any, message: str) -> None:
    # Not ``assert``: the kit must also work under ``python -O``.
    if not condition:
        raise CheckFailed(message)


def _as_check_failure(check: Callable[..., Any], *args: Any) -> Any:
    """Run a task-spec check; its :class:`PredictionError` is this check's failure."""
    try:
        return check(*args)
    except PredictionError as exc:
        raise CheckFailed(str(exc)) from None


class CheckContext:
    """What earlier checks made for later ones (a check runs only when its needs passed)."""

    module: nn.Module  # from ``build``, in eval mode
    batch: torch.Tensor  # (2, C, *spatial), from ``forward_shapes``
    reduced: dict[str, torch.Tensor]  # reduce() of ``batch``
    sample: Sample  # item 0 of ``batch``
    prediction: Prediction  # postprocess() of item 0

    def __init__(self, model: SegmentationModel, size: int | None) -> None:
        self.divisor = d = max(int(model.size_divisor), 1)  # a bad value is check_attributes' finding
        self.volume = model.modality is Modality.VOLUME
        floor = 16 if self.volume else 32  # a 16^3 volume already holds 4096 voxels
        base = max(floor, 2 * d) if size is None else max(int(size), 1)
        self.height = -(-base // d) * d
        self.width = self.height + d  # H != W, so a transposed mask cannot pass
        # Volumes: D < H < W where the size allows, all multiples of the divisor.
        self.depth = self.height - d if self.height > d else self.height
        self.spatial = (self.depth, self.height, self.width) if self.volume else (self.height, self.width)


def _run(model: SegmentationModel, module: nn.Module, batch: torch.Tensor) -> dict[str, torch.Tensor]:
    """forward + reduce, as the predictor actor runs them."""
    with torch.inference_mode():
        return model.reduce(model.forward(module, batch))


def _item(reduced: Mapping[str, torch.Tensor], i: int) -> dict[str, np.ndarray]:
    """Item ``i`` of a reduced batch, as the encode stage receives it."""
    return {k: v[i].cpu().numpy() for k, v in reduced.items()}


def _label_bound(model: SegmentationModel) -> int:
    # num_classes == 1 is one sigmoid map, whose labels are 0 (background) and 1.
    return max(model.num_classes, 2)


def _example(model: SegmentationModel, ctx: CheckContext, spatial: tuple[int, ...], seed: int) -> Sample:
    """``model.example_input`` at ``spatial``; a volume's depth (example_input makes it equal to
    the height) is cut to ``spatial[0]``, so that D, H and W differ."""
    sample = model.example_input(spatial[-2], spatial[-1], seed=seed)
    if not ctx.volume:
        return sample
    depth = spatial[0]
    _require(np.ndim(sample.data) == 4 and sample.data.shape[0] >= depth,
             f"example_input() of a volume model gave shape {np.shape(sample.data)}, expected (D, H, W, C)")
    return Sample(np.ascontiguousarray(sample.data[:depth]), sample.uri, {**sample.meta, "depth": depth})


def _batch(model: SegmentationModel, ctx: CheckContext) -> torch.Tensor:
    samples = [_example(model, ctx, ctx.spatial, seed=s) for s in (0, 1)]
    ctx.sample = samples[0]
    return torch.from_numpy(np.stack([model.preprocess(s) for s in samples]))


def _shape_text(shape: tuple[int, ...]) -> str:
    return "x".join(str(n) for n in shape)


# -- the checks, in pipeline order ------------------------------------------------------------
CheckFn = Callable[[SegmentationModel, CheckContext], "str | None"]
#: name -> check; a check raises :class:`CheckFailed` (or anything) to fail, else returns a note.
CHECKS: dict[str, CheckFn] = {}
#: name -> the checks it needs to have passed; it is reported failed, "skipped", otherwise.
NEEDS: dict[str, tuple[str, ...]] = {}


def _check(*needs: str) -> Callable[[CheckFn], CheckFn]:
    def register(fn: CheckFn) -> CheckFn:
        CHECKS[fn.__name__], NEEDS[fn.__name__] = fn, needs
        return fn

    return register


@_check()
def contract(model: SegmentationModel, ctx: CheckContext) -> str | None:
    """The registry's checks on the class, plus what only an instance shows."""
    problems = contract_violations(type(model))
    try:
        if type(model).resolve_params(model.params) != model.params:
            problems.append("resolve_params(model.params) does not give model.params back")
    except Exception as exc:
        problems.append(f"resolve_params(model.params) raised {describe_error(exc)}")
    names = tuple(model.class_names())
    if len(names) != model.num_classes:
        problems.append(f"class_names() has {len(names)} name(s) but num_classes={model.num_classes}")
    divisor = model.size_divisor
    if not isinstance(divisor, int) or isinstance(divisor, bool) or divisor < 1:
        problems.append(f"size_divisor must be a positive int, got {divisor!r}")
    problems += _tile_problems(model)
    _require(not problems, "; ".join(problems))
    return f"{model.task.value}/{model.modality.value}, {model.num_classes} class(es)"


def _tile_problems(model: SegmentationModel) -> list[str]:
    """``default_tile``/``default_overlap``: one positive int per spatial axis; volume models must set a tile."""
    ndim = 3 if model.modality is Modality.VOLUME else 2
    tile, overlap = model.default_tile, model.default_overlap
    if tile is None:
        return ["a volume model must set default_tile (volumes always run tiled)"] if ndim == 3 else []

    def ints(value: Any) -> bool:
        return (isinstance(value, tuple) and len(value) == ndim
                and all(isinstance(v, int) and not isinstance(v, bool) for v in value))

    if not ints(tile) or min(tile) < 1:
        return [f"default_tile must be a tuple of {ndim} positive ints, got {tile!r}"]
    if overlap is not None and (not ints(overlap) or any(not 0 <= o < t for o, t in zip(overlap, tile))):
        return [f"default_overlap must be None or {ndim} ints in [0, tile), got {overlap!r} for tile {tile!r}"]
    divisor = model.size_divisor
    if isinstance(divisor, int) and divisor > 1 and any(t % divisor for t in tile):
        return [f"default_tile {tile} is not a multiple of size_divisor {divisor} on every axis"]
    return []


@_check("contract")
def build(model: SegmentationModel, ctx: CheckContext) -> str | None:
    module = model.build()
    _require(isinstance(module, nn.Module), f"build() returned {type(module).__name__}, not a torch nn.Module")
    count = sum(p.numel() for p in module.parameters())
    _require(count > 0, "build() returned a module without parameters")
    ctx.module = module.eval()
    return f"{type(module).__name__}, {count:,} parameters"


@_check("contract")
def preprocess(model: SegmentationModel, ctx: CheckContext) -> str | None:
    c = model.in_channels
    sample = _example(model, ctx, ctx.spatial, seed=0)
    x = model.preprocess(sample)
    _require(isinstance(x, np.ndarray), f"preprocess() returned {type(x).__name__}, not a numpy array")
    _require(x.dtype == np.float32, f"preprocess() returned dtype {x.dtype}, expected float32")
    want = (c, *ctx.spatial)
    _require(x.shape == want if ctx.volume else (x.ndim >= 3 and x.shape[0] == c and x.shape[-2:] == want[1:]),
             f"preprocess() returned shape {x.shape}, expected {want}")
    _require(np.isfinite(x).all(), "preprocess() output holds NaN or inf")
    wrong = Sample(np.concatenate([sample.data, sample.data[..., :1]], axis=-1), sample.uri, dict(sample.meta))
    try:
        model.preprocess(wrong)
    except InputError:
        return f"{sample.data.shape} {sample.data.dtype} -> {x.shape} float32"
    except Exception as exc:
        raise CheckFailed(f"a sample with {c + 1} bands raised {describe_error(exc)}; expected InputError") from None
    raise CheckFailed(f"a sample with {c + 1} bands was accepted; preprocess() must raise InputError")


@_check("build", "preprocess")
def forward_shapes(model: SegmentationModel, ctx: CheckContext) -> str | None:
    ctx.batch = _batch(model, ctx)
    reduced = _run(model, ctx.module, ctx.batch)
    _require(isinstance(reduced, Mapping) and reduced, f"reduce() returned {reduced!r:.60}, expected a dict of tensors")
    for key, v in reduced.items():
        _require(isinstance(v, torch.Tensor), f"reduce()[{key!r}] is {type(v).__name__}, not a tensor")
        _require(v.ndim >= 1 and v.shape[0] == 2,
                 f"reduce()[{key!r}] has shape {tuple(v.shape)}, expected the batch of 2 first")
    check_reduced = task_spec(model.task).check_reduced
    if check_reduced is not None:
        _as_check_failure(check_reduced, model, dict(reduced), ctx.spatial)
    ctx.reduced = dict(reduced)
    return ", ".join(f"{k} {tuple(v.shape)} {str(v.dtype).replace('torch.', '')}" for k, v in reduced.items())


@_check("forward_shapes")
def determinism(model: SegmentationModel, ctx: CheckContext) -> str | None:
    # No re-seeding between the runs: dropout or noise left on in eval mode must show.
    again = _run(model, ctx.module, ctx.batch)
    _require(set(again) == set(ctx.reduced), f"reduce() keys changed between runs: {sorted(again)}")
    differ = [f"{k} ({(v != again[k]).float().mean().item():.1%} of elements)"
              for k, v in ctx.reduced.items() if not torch.equal(v, again[k])]
    _require(not differ, "eval-mode outputs differ between two runs on the same input: " + ", ".join(differ)
             + "; is dropout or random noise active in eval mode?")
    return "two eval runs identical"


def _check_prediction(model: SegmentationModel, pred: Any, spatial: tuple[int, ...], hook: str) -> str:
    """``pred`` is a Prediction of the task's kind, at exactly the ``spatial`` size ((H, W) or (D, H, W))."""
    return _as_check_failure(task_spec(model.task).check_prediction, pred, spatial, hook)


@_check("forward_shapes")
def reduce_postprocess(model: SegmentationModel, ctx: CheckContext) -> str | None:
    pred = model.postprocess(_item(ctx.reduced, 0), dict(ctx.sample.meta))
    note = _check_prediction(model, pred, ctx.spatial, "postprocess()")
    ctx.prediction = pred
    return note


def _depth_slices(pred: Prediction) -> list[Prediction]:
    """A volume prediction as one 2D prediction per depth slice (the 2D RLE encodes slices)."""
    if isinstance(pred, SemanticPrediction):
        conf = pred.confidence
        return [SemanticPrediction(np.asarray(pred.labels)[z], None if conf is None else np.asarray(conf)[z])
                for z in range(np.shape(pred.labels)[0])]
    masks = np.asarray(pred.masks)
    return [InstancePrediction(masks[:, z], pred.labels, pred.scores) for z in range(masks.shape[1])]


@_check("reduce_postprocess")
def rle_roundtrip(model: SegmentationModel, ctx: CheckContext) -> str | None:
    """What a reader decodes from the output row must be exactly what the plugin predicted."""
    if ctx.volume:  # each depth slice through the 2D encoder, as a per-slice encoding stores it
        slices = _depth_slices(ctx.prediction)
        count = sum(_rle_roundtrip_2d(model, pred, ctx.height, ctx.width) for pred in slices)
        return f"{len(slices)} depth slices: {count} segment(s) decode exactly"
    return f"{_rle_roundtrip_2d(model, ctx.prediction, ctx.height, ctx.width)} segment(s) decode exactly"


def _rle_roundtrip_2d(model: SegmentationModel, pred: Prediction, height: int, width: int) -> int:
    """Encode one 2D prediction to segments and decode it back; the segment count."""
    segments = segments_from_prediction(pred, model.class_names())
    row = {"height": height, "width": width, "segments": segments}
    masks, labels, _ = row_masks(row)
    for seg, mask in zip(segments, masks):
        _require(seg["area"] == mask.sum(), f"segment {seg['label']}: area {seg['area']} but {mask.sum()} pixels")
    if isinstance(pred, SemanticPrediction):
        bad = int((row_label_map(row) != np.asarray(pred.labels)).sum())
        _require(bad == 0, f"the label map decoded from the RLE segments differs from the prediction at {bad} pixel(s)")
    else:
        _require(np.array_equal(masks, np.asarray(pred.masks, dtype=bool)) and np.array_equal(labels, pred.labels),
                 "masks or labels decoded from the RLE segments differ from the prediction")
    return len(segments)


@_check("reduce_postprocess")
def padding(model: SegmentationModel, ctx: CheckContext) -> str | None:
    """Inputs of any size: the predictor pads to ``size_divisor``, postprocess must crop back."""
    d = ctx.divisor
    h, w = (ctx.height - 1, ctx.height + 1) if d > 1 else (ctx.height + 1, ctx.height + 3)
    spatial = (ctx.depth - 1 if d > 1 else ctx.depth + 1, h, w) if ctx.volume else (h, w)
    sample = _example(model, ctx, spatial, seed=2)
    image = pad_to_multiple(model.preprocess(sample), d)  # the predictor's padding: every spatial axis
    padded = _shape_text(image.shape[-len(spatial):])
    pred = model.postprocess(_item(_run(model, ctx.module, torch.from_numpy(image[None])), 0), dict(sample.meta))
    size = _shape_text(spatial)
    note = _check_prediction(model, pred, spatial, f"postprocess() of a {size} input padded to {padded}")
    return f"{size} padded to {padded} -> {note}"


@_check("determinism")
def checkpoint_roundtrip(model: SegmentationModel, ctx: CheckContext) -> str | None:
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "model.pt")
        save_checkpoint(path, state_dict=ctx.module.state_dict(), plugin=type(model).__name__, plugin_version="0",
                        params=model.params, class_names=model.class_names())
        ckpt = load_checkpoint(path)  # weights_only=True, as every load is
    _require(ckpt.params == dict(model.params), f"checkpoint params {ckpt.params} differ from {model.params}")
    torch.manual_seed(12345)  # other random weights: only the loaded ones can reproduce the outputs
    fresh = model.build()
    load_weights(fresh, ckpt.state_dict)
    again = _run(model, fresh.eval(), ctx.batch)
    differ = [k for k, v in ctx.reduced.items() if k not in again or not torch.equal(v, again[k])]
    _require(not differ, f"a module loaded from the checkpoint gives other outputs: {', '.join(differ)}")
    return f"{len(ckpt.state_dict)} tensors, outputs identical"


@_check("build", "preprocess")
def training_step(model: SegmentationModel, ctx: CheckContext) -> str | None:
    x, steps = _batch(model, ctx), 6
    # A random but learnable mask: quantile bands of the first input channel, averaged over blocks of
    # the output stride (a model predicting on a coarse grid cannot draw single-pixel noise), one
    # corner ignored.
    block = max(1, min(int(model.output_stride or ctx.divisor), min(ctx.spatial) // 2))
    first = x[:, 0].numpy()
    spatial = first.shape[1:]  # (H, W) or (D, H, W)
    blocks = [-(-n // block) for n in spatial]
    padded = np.pad(first, [(0, 0)] + [(0, b * block - n) for b, n in zip(blocks, spatial)], mode="edge")
    coarse = padded.reshape(len(first), *(v for b in blocks for v in (b, block)))
    coarse = coarse.mean(axis=tuple(range(2, 2 + 2 * len(spatial), 2)))
    for axis in range(1, 1 + len(spatial)):
        coarse = np.repeat(coarse, block, axis=axis)
    first = coarse[(slice(None), *(slice(0, n) for n in spatial))]
    masks = np.digitize(first, np.quantile(first, np.linspace(0, 1, _label_bound(model) + 1)[1:-1]))
    masks[(slice(None), *(slice(0, 2) for _ in spatial))] = model.ignore_index
    targets = [model.encode_target(m) for m in masks]
    for t in targets:
        _require(isinstance(t, np.ndarray) and t.dtype == np.int64 and t.shape == masks.shape[1:],
                 f"encode_target() gave {getattr(t, 'dtype', t)} {np.shape(t)}, expected int64 {masks.shape[1:]}")
    target = torch.from_numpy(np.stack(targets))
    torch.manual_seed(0)
    module = model.build().train()
    params = [p for p in module.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in params]
    losses = []
    for step in range(steps):
        module.zero_grad()
        loss = model.loss(model.forward(module, x), target)
        if step == 0:
            _require(isinstance(loss, torch.Tensor) and loss.ndim == 0,
                     f"loss() returned {type(loss).__name__} {tuple(getattr(loss, 'shape', ()))}, expected a scalar")
            _require(torch.isfinite(loss), f"loss() is not finite: {loss.item()}")
            _require(loss.requires_grad, "loss() does not require grad: is it detached from the module's output?")
        loss.backward()
        with torch.no_grad():  # sign-SGD, i.e. Adam's first step; torch.optim's first use costs seconds
            for p in params:
                if p.grad is not None:
                    p.sub_(1e-4 * p.grad.sign())  # 1e-3 overshoots on wide heads (FCN, DeepLab, torchvision)
        losses.append(loss.detach().item())
        if step == 0:
            _require(any(not torch.equal(b, p.detach()) for b, p in zip(before, params)),
                     "one optimizer step changed no parameter: do gradients reach the weights?")
    _require(losses[-1] < losses[0], f"{steps} sign-SGD steps on one batch did not lower the loss: "
             f"{losses[0]:.4f} -> {losses[-1]:.4f}")
    return f"loss {losses[0]:.4f} -> {losses[-1]:.4f} in {steps} steps"
