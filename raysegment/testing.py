"""The plugin conformance kit: does a model plugin keep the contract of :mod:`raysegment.plugin`?

The pipeline calls a plugin's hooks on different machines (decode task,
predictor actor, encode task, training worker), so a broken hook shows up late
and far from its cause. These checks run every hook once, on CPU, on tiny
synthetic inputs, in the order the pipeline would, and say which promise broke::

    from raysegment.testing import assert_conforms
    assert_conforms("unet", {"depth": 2, "base_channels": 4})

or, in a plugin's own tests, one pytest test per check::

    class TestMyModel(ModelConformance):
        model_name = "mymodel"
        params = {"base_channels": 4}

``raysegment models check NAME`` prints the same results as a table. pytest is
never imported here, so the CLI works without it.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from raysegment.checkpoint import load_checkpoint, load_weights, save_checkpoint
from raysegment.masks import row_label_map, row_masks, segments_from_prediction
from raysegment.plugin import (
    InputError,
    InstancePrediction,
    Prediction,
    Sample,
    SegmentationModel,
    SemanticPrediction,
    Task,
)
from raysegment.registry import UnknownModelError, contract_violations, get_registry
from raysegment.stages import _pad_to, describe_error

__all__ = ["CheckResult", "CHECKS", "check_model", "assert_conforms", "format_results", "ModelConformance"]


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


class _Context:
    """What earlier checks made and later ones reuse (a later check runs only if its needs passed)."""

    module: nn.Module  # built by ``build``, in eval mode
    batch: torch.Tensor  # (2, C, H, W), made by ``forward_shapes``
    reduced: dict[str, torch.Tensor]
    sample: Sample  # item 0 of ``batch``
    prediction: Prediction

    def __init__(self, model: SegmentationModel, size: int | None) -> None:
        self.divisor = int(getattr(model, "size_divisor", 1) or 1)
        d = self.divisor
        base = max(32, 2 * d) if size is None else max(int(size), 1)
        # H and W differ (by one divisor) so that a transposed mask cannot pass.
        self.height = -(-base // d) * d
        self.width = self.height + d


def _run(model: SegmentationModel, module: nn.Module, batch: torch.Tensor) -> dict[str, torch.Tensor]:
    """forward + reduce as the predictor actor runs them."""
    with torch.inference_mode():
        return model.reduce(model.forward(module, batch))


def _item(reduced: Mapping[str, torch.Tensor], i: int) -> dict[str, np.ndarray]:
    """Item ``i`` of a reduced batch, as the encode stage receives it."""
    return {k: v[i].cpu().numpy() for k, v in reduced.items()}


def _label_bound(model: SegmentationModel) -> int:
    # num_classes == 1 is a single sigmoid map whose labels are 0 (background) and 1.
    return max(model.num_classes, 2)


# -- the checks, in pipeline order ------------------------------------------------------------
CheckFn = Callable[[SegmentationModel, _Context], "str | None"]
CHECKS: dict[str, CheckFn] = {}
#: name -> checks it needs to have passed (it is skipped, as failed, otherwise).
NEEDS: dict[str, tuple[str, ...]] = {}


def _check(*needs: str) -> Callable[[CheckFn], CheckFn]:
    def register(fn: CheckFn) -> CheckFn:
        CHECKS[fn.__name__] = fn
        NEEDS[fn.__name__] = needs
        return fn

    return register


@_check()
def contract(model: SegmentationModel, ctx: _Context) -> str | None:
    """The registry's own checks, plus what can only be seen on an instance."""
    problems = contract_violations(type(model))
    try:
        if type(model).resolve_params(model.params) != model.params:
            problems.append("resolve_params(model.params) does not give model.params back")
    except Exception as exc:
        problems.append(f"resolve_params(model.params) raised {describe_error(exc)}")
    names = tuple(model.class_names())
    if len(names) != model.num_classes:
        problems.append(f"class_names() has {len(names)} name(s) but num_classes={model.num_classes}")
    divisor = getattr(model, "size_divisor", 1)
    if not isinstance(divisor, int) or isinstance(divisor, bool) or divisor < 1:
        problems.append(f"size_divisor must be a positive int, got {divisor!r}")
    _require(not problems, "; ".join(problems))
    return f"{model.task.value}/{model.modality.value}, {model.num_classes} classes"


@_check("contract")
def build(model: SegmentationModel, ctx: _Context) -> str | None:
    module = model.build()
    _require(isinstance(module, nn.Module), f"build() returned {type(module).__name__}, not a torch nn.Module")
    count = sum(p.numel() for p in module.parameters())
    _require(count > 0, "build() returned a module without parameters")
    ctx.module = module.eval()
    return f"{type(module).__name__}, {count:,} parameters"


@_check("contract")
def preprocess(model: SegmentationModel, ctx: _Context) -> str | None:
    h, w = ctx.height, ctx.width
    sample = model.example_input(h, w, seed=0)
    x = model.preprocess(sample)
    _require(isinstance(x, np.ndarray), f"preprocess() returned {type(x).__name__}, not a numpy array")
    _require(x.dtype == np.float32, f"preprocess() returned dtype {x.dtype}, expected float32")
    _require(
        x.ndim >= 3 and x.shape[0] == model.in_channels and x.shape[-2:] == (h, w),
        f"preprocess() returned shape {x.shape}, expected ({model.in_channels}, {h}, {w})",
    )
    _require(np.isfinite(x).all(), "preprocess() output holds NaN or inf")
    wrong = Sample(np.concatenate([sample.data, sample.data[..., :1]], axis=-1), sample.uri, dict(sample.meta))
    try:
        model.preprocess(wrong)
    except InputError:
        pass
    except Exception as exc:
        raise CheckFailed(
            f"a sample with {model.in_channels + 1} bands raised {describe_error(exc)}; expected InputError"
        ) from None
    else:
        raise CheckFailed(f"a sample with {model.in_channels + 1} bands was accepted; preprocess must raise InputError")
    return f"{sample.data.shape} {sample.data.dtype} -> {x.shape} float32"


@_check("build", "preprocess")
def forward_shapes(model: SegmentationModel, ctx: _Context) -> str | None:
    samples = [model.example_input(ctx.height, ctx.width, seed=s) for s in (0, 1)]
    ctx.sample = samples[0]
    ctx.batch = torch.from_numpy(np.stack([model.preprocess(s) for s in samples]))
    reduced = _run(model, ctx.module, ctx.batch)
    _require(isinstance(reduced, Mapping) and reduced, f"reduce() returned {type(reduced).__name__}, expected a dict")
    for key, value in reduced.items():
        _require(isinstance(value, torch.Tensor), f"reduce()[{key!r}] is {type(value).__name__}, not a tensor")
        _require(value.ndim >= 1 and value.shape[0] == 2, f"reduce()[{key!r}] has shape {tuple(value.shape)}, expected batch 2 first")
    if model.task is Task.SEMANTIC:
        _require("labels" in reduced, f"reduce() of a semantic model lacks 'labels' (keys: {sorted(reduced)})")
        labels = reduced["labels"]
        want = (2, ctx.height, ctx.width)
        _require(tuple(labels.shape) == want, f"reduce()['labels'] has shape {tuple(labels.shape)}, expected {want}")
        _require(
            not labels.is_floating_point() and not labels.is_complex() and labels.dtype != torch.bool,
            f"reduce()['labels'] has dtype {labels.dtype}, expected an integer type",
        )
        lo, hi = int(labels.min()), int(labels.max())
        bound = _label_bound(model)
        _require(0 <= lo and hi < bound, f"reduce()['labels'] spans {lo}..{hi}, outside 0..{bound - 1}")
    ctx.reduced = dict(reduced)
    return ", ".join(f"{k} {tuple(v.shape)} {str(v.dtype).replace('torch.', '')}" for k, v in reduced.items())


@_check("forward_shapes")
def determinism(model: SegmentationModel, ctx: _Context) -> str | None:
    # No re-seeding between the runs: dropout or noise left on in eval mode must show.
    again = _run(model, ctx.module, ctx.batch)
    _require(set(again) == set(ctx.reduced), f"reduce() keys changed between runs: {sorted(ctx.reduced)} vs {sorted(again)}")
    differ = []
    for key, first in ctx.reduced.items():
        if not torch.equal(first, again[key]):
            frac = (first != again[key]).float().mean().item() if first.shape == again[key].shape else 1.0
            differ.append(f"{key} ({frac:.1%} of elements)")
    _require(
        not differ,
        "eval-mode outputs differ between two runs on the same input: " + ", ".join(differ)
        + "; is dropout or random noise active in eval mode?",
    )
    return "two eval runs identical"


def _check_prediction(model: SegmentationModel, pred: Any, height: int, width: int, hook: str) -> str:
    if model.task is Task.SEMANTIC:
        _require(isinstance(pred, SemanticPrediction), f"{hook} returned {type(pred).__name__}, expected SemanticPrediction")
    _require(
        isinstance(pred, (SemanticPrediction, InstancePrediction)),
        f"{hook} returned {type(pred).__name__}, expected a SemanticPrediction or InstancePrediction",
    )
    if isinstance(pred, SemanticPrediction):
        shape = tuple(np.shape(pred.labels))
        _require(shape == (height, width), f"{hook} gave labels of shape {shape}, expected the input's {(height, width)}")
        if pred.confidence is not None:
            conf = tuple(np.shape(pred.confidence))
            _require(conf == (height, width), f"{hook} gave confidence of shape {conf}, expected {(height, width)}")
        return f"labels {shape}"
    shape = tuple(np.shape(pred.masks))
    _require(len(shape) == 3 and shape[1:] == (height, width), f"{hook} gave masks of shape {shape}, expected (N, {height}, {width})")
    _require(len(pred.labels) == len(pred.scores) == shape[0], f"{hook} gave {shape[0]} masks but {len(pred.labels)} labels and {len(pred.scores)} scores")
    return f"{shape[0]} masks {shape[1:]}"


@_check("forward_shapes")
def reduce_postprocess(model: SegmentationModel, ctx: _Context) -> str | None:
    pred = model.postprocess(_item(ctx.reduced, 0), dict(ctx.sample.meta))
    summary = _check_prediction(model, pred, ctx.height, ctx.width, "postprocess()")
    ctx.prediction = pred
    return summary


@_check("reduce_postprocess")
def rle_roundtrip(model: SegmentationModel, ctx: _Context) -> str | None:
    """What a reader decodes from the output row must be exactly what the plugin predicted."""
    pred = ctx.prediction
    names = model.class_names()
    segments = segments_from_prediction(pred, names)
    row = {"height": ctx.height, "width": ctx.width, "segments": segments}
    masks, labels, _ = row_masks(row)
    for seg, mask in zip(segments, masks):
        _require(seg["area"] == int(mask.sum()), f"segment {seg['label']}: area {seg['area']} but its mask has {int(mask.sum())} pixels")
        label = int(seg["label"])
        if 0 <= label < len(names):
            _require(seg["label_name"] == names[label], f"segment {label} is named {seg['label_name']!r}, expected {names[label]!r}")
    if isinstance(pred, SemanticPrediction):
        rebuilt = row_label_map(row)
        bad = int((rebuilt != np.asarray(pred.labels)).sum())
        _require(bad == 0, f"label map decoded from the RLE segments differs from the prediction at {bad} pixel(s)")
    else:
        _require(np.array_equal(masks, np.asarray(pred.masks, dtype=bool)), "masks decoded from the RLE segments differ from the prediction")
        _require(np.array_equal(labels, np.asarray(pred.labels)), "labels of the RLE segments differ from the prediction")
    return f"{len(segments)} segment(s) decode exactly"


@_check("reduce_postprocess")
def padding(model: SegmentationModel, ctx: _Context) -> str | None:
    """Inputs of any size: the predictor pads to ``size_divisor``; postprocess must crop back."""
    d = ctx.divisor
    h, w = (ctx.height - 1, ctx.height + 1) if d > 1 else (ctx.height + 1, ctx.height + 3)
    sample = model.example_input(h, w, seed=2)
    image = _pad_to(model.preprocess(sample), d)
    _require(image.shape[-2] % d == 0 and image.shape[-1] % d == 0, f"padding {h}x{w} gave {image.shape}")
    reduced = _run(model, ctx.module, torch.from_numpy(image[None]))
    pred = model.postprocess(_item(reduced, 0), dict(sample.meta))
    summary = _check_prediction(model, pred, h, w, f"postprocess() of a {h}x{w} input padded to {image.shape[-2]}x{image.shape[-1]}")
    return f"{h}x{w} -> padded {image.shape[-2]}x{image.shape[-1]} -> {summary}"


@_check("determinism")
def checkpoint_roundtrip(model: SegmentationModel, ctx: _Context) -> str | None:
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "model.pt")
        save_checkpoint(
            path, state_dict=ctx.module.state_dict(), plugin=type(model).__name__, plugin_version="0",
            params=model.params, class_names=list(model.class_names()),
        )
        ckpt = load_checkpoint(path)
    _require(ckpt.params == dict(model.params), f"checkpoint params {ckpt.params} differ from {dict(model.params)}")
    torch.manual_seed(12345)  # fresh random weights, so only the loaded ones can reproduce the outputs
    fresh = model.build()
    load_weights(fresh, ckpt.state_dict)
    again = _run(model, fresh.eval(), ctx.batch)
    differ = [k for k, v in ctx.reduced.items() if k not in again or not torch.equal(v, again[k])]
    _require(not differ, f"a module loaded from the checkpoint gives different outputs: {', '.join(differ)}")
    return f"{len(ckpt.state_dict)} tensors, outputs identical"


@_check("build", "preprocess")
def training_step(model: SegmentationModel, ctx: _Context, steps: int = 6) -> str | None:
    x = torch.from_numpy(np.stack([model.preprocess(model.example_input(ctx.height, ctx.width, seed=s)) for s in (0, 1)]))
    # A random but learnable mask: bands of the first input channel's quantiles, a corner ignored.
    first = x[:, 0].numpy()
    cuts = np.quantile(first, np.linspace(0, 1, _label_bound(model) + 1)[1:-1])
    masks = np.digitize(first, cuts)
    masks[:, :2, :2] = model.ignore_index
    targets = [model.encode_target(m) for m in masks]
    for t in targets:
        _require(t.dtype == np.int64 and t.shape == masks.shape[1:], f"encode_target() gave {t.dtype} {t.shape}, expected int64 {masks.shape[1:]}")
    target = torch.from_numpy(np.stack(targets))
    torch.manual_seed(0)
    module = model.build().train()
    params = [p for p in module.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in params]
    opt = torch.optim.Adam(params, lr=1e-2)
    losses = []
    for step in range(steps):
        opt.zero_grad()
        loss = model.loss(model.forward(module, x), target)
        if step == 0:
            _require(isinstance(loss, torch.Tensor) and loss.ndim == 0, f"loss() returned {type(loss).__name__} {getattr(loss, 'shape', '')}, expected a scalar tensor")
            _require(torch.isfinite(loss), f"loss() is not finite: {loss.item()}")
            _require(loss.requires_grad, "loss() does not require grad: is the output detached from the module?")
        loss.backward()
        opt.step()
        losses.append(float(loss))
        if step == 0:
            changed = sum(not torch.equal(b, p.detach()) for b, p in zip(before, params))
            _require(changed > 0, "one optimizer step changed no parameter: do gradients reach the weights?")
    _require(losses[-1] < losses[0], f"{steps} Adam steps on one batch did not lower the loss: {losses[0]:.4f} -> {losses[-1]:.4f}")
    return f"loss {losses[0]:.4f} -> {losses[-1]:.4f} in {steps} steps"


# -- running ----------------------------------------------------------------------------------
def _with_needs(names: Iterable[str]) -> list[str]:
    wanted = set()
    stack = list(names)
    while stack:
        name = stack.pop()
        if name not in CHECKS:
            raise ValueError(f"unknown check {name!r}; checks: {', '.join(CHECKS)}")
        if name not in wanted:
            wanted.add(name)
            stack.extend(NEEDS[name])
    return [n for n in CHECKS if n in wanted]


def check_model(
    model: SegmentationModel | type[SegmentationModel] | str,
    params: Mapping[str, Any] | None = None,
    *,
    only: Iterable[str] | None = None,
    size: int | None = None,
) -> list[CheckResult]:
    """Run the checks (``only`` some, with what they need) and return one result per requested check.

    ``model`` is a registry name, a plugin class or an instance; ``params`` make
    (or, for an instance, override) its parameters. ``size`` is the input height,
    rounded up to a multiple of ``size_divisor``. A check whose need failed is a
    failure "skipped: <need> failed". An unknown registry name raises.
    """
    requested = list(CHECKS) if only is None else _with_needs(only)
    shown = set(requested if only is None else only)
    try:
        if isinstance(model, str):
            instance = get_registry().create(model, params)
        elif isinstance(model, SegmentationModel):
            instance = type(model)(**{**model.params, **dict(params or {})}) if params else model
        else:
            instance = model(**dict(params or {}))
    except UnknownModelError:
        raise
    except Exception as exc:
        message = f"cannot create the model: {describe_error(exc)}"
        return [CheckResult(n, False, message if n == "contract" else "skipped: contract failed", 0.0)
                for n in requested if n in shown]

    results: dict[str, CheckResult] = {}
    root: dict[str, str] = {}  # failed check -> the check whose own failure caused it
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        ctx = _Context(instance, size)
        for name in requested:
            failed = [n for n in NEEDS[name] if not results[n].ok]
            if failed:
                root[name] = cause = root[failed[0]]
                extra = "" if cause in shown else f": {results[cause].message}"
                results[name] = CheckResult(name, False, f"skipped: {cause} failed{extra}", 0.0)
                continue
            start = time.perf_counter()
            try:
                ok, message = True, CHECKS[name](instance, ctx) or ""
            except CheckFailed as exc:
                ok, message = False, str(exc)
            except Exception as exc:
                ok, message = False, f"raised {describe_error(exc)}"
            results[name] = CheckResult(name, ok, message, time.perf_counter() - start)
            if not ok:
                root[name] = name
    return [r for n, r in results.items() if n in shown]


def assert_conforms(model: SegmentationModel | type[SegmentationModel] | str,
                    params: Mapping[str, Any] | None = None, **kw: Any) -> None:
    """Raise AssertionError naming every failed check (``kw`` as for :func:`check_model`)."""
    failed = [r for r in check_model(model, params, **kw) if not r.ok]
    if failed:
        lines = "\n".join(f"  {r.name}: {r.message}" for r in failed)
        raise AssertionError(f"{len(failed)} conformance check(s) failed:\n{lines}")


def format_results(results: Iterable[CheckResult]) -> str:
    """A plain-text table (check, result, time, message) and a one-line summary."""
    rows = list(results)
    width = max([len("check")] + [len(r.name) for r in rows])
    lines = [f"{'check':<{width}}  result  {'time':>8}  message"]
    for r in rows:
        message = " ".join(r.message.split())
        lines.append(f"{r.name:<{width}}  {'PASS' if r.ok else 'FAIL':<6}  {r.seconds * 1000:6.0f}ms  {message}")
    passed = sum(r.ok for r in rows)
    lines.append(f"{passed}/{len(rows)} checks passed")
    return "\n".join(lines)


class ModelConformance:
    """pytest base class: one test per check, e.g. ``test_forward_shapes``.

    Set ``model_name`` (a registry name) and ``params``, or override
    :meth:`make_model`. All checks run once per class; each test reports its own.
    The class name does not start with ``Test``, so pytest collects only subclasses.
    """

    model_name: ClassVar[str | None] = None
    params: ClassVar[dict[str, Any]] = {}
    size: ClassVar[int | None] = None

    def make_model(self) -> SegmentationModel:
        if self.model_name is None:
            raise TypeError(f"{type(self).__name__} must set model_name or override make_model()")
        return get_registry().create(self.model_name, self.params)

    def conformance_results(self) -> dict[str, CheckResult]:
        cls = type(self)
        cached = cls.__dict__.get("_conformance_cache")
        if cached is None:
            try:
                model: SegmentationModel | str = self.make_model()
            except Exception as exc:
                message = f"make_model() raised {describe_error(exc)}"
                cached = {n: CheckResult(n, False, message, 0.0) for n in CHECKS}
            else:
                cached = {r.name: r for r in check_model(model, size=self.size)}
            cls._conformance_cache = cached  # type: ignore[attr-defined]
        return cached

    def assert_check(self, name: str) -> None:
        result = self.conformance_results()[name]
        if not result.ok:
            raise AssertionError(f"conformance check {name!r} failed: {result.message}")


def _make_test(name: str) -> Callable[[ModelConformance], None]:
    def test(self: ModelConformance) -> None:
        self.assert_check(name)

    test.__name__ = test.__qualname__ = f"test_{name}"
    test.__doc__ = f"Conformance check {name!r} of raysegment.testing."
    return test


for _name in CHECKS:
    setattr(ModelConformance, f"test_{_name}", _make_test(_name))
del _name
