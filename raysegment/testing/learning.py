"""Does a model learn? A few dozen optimiser steps on a tiny real set must clearly lower its loss.

The conformance kit proves the hooks fit together on random data; this check
proves the architecture can fit real labels at all: a wrong skip connection,
a detached branch or a head cut off from the input passes conformance but
plateaus here, at or above the loss of predicting the class frequencies. The
set is four ISBI-2012 EM slices (membrane vs cell), scaled down so that every
model in the zoo runs it in seconds on a CPU, their grey band repeated to the
model's ``in_channels``; or, for models that predict on a coarse grid, three
VOC photos (object vs background); or, for volume models, two MSD hippocampus
MRI volumes cropped to a small cube (background, anterior, posterior).

:class:`ModelLearns` is the pytest form (its settings are documented there);
:func:`learning_curve` is the training run it makes, for tests of their own.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from raysegment.plugin.contract import Sample, SegmentationModel
from raysegment.plugin.registry import get_registry

__all__ = ["shared_data_dir", "tiny_em_set", "tiny_voc_set", "tiny_hippocampus_set", "class_prior_loss",
           "learning_curve", "ModelLearns", "SETTINGS"]

EM_DATASET = "isbi2012_em_membrane"
VOC_DATASET = "labelme_voc_instance_coco"
HIPPOCAMPUS_DATASET = "msd_task04_hippocampus"
#: float32 cases (intensities up to ~4200; three other cases are uint8 with another range)
HIPPOCAMPUS_CASES = ("hippocampus_003", "hippocampus_004", "hippocampus_006", "hippocampus_007")


def shared_data_dir() -> Path | None:
    """``$RAYSEGMENT_SHARED_DATA``, or the ``shared/data`` folder beside the checkout (as CI has it)."""
    env = os.environ.get("RAYSEGMENT_SHARED_DATA")
    if env:
        return Path(env) if Path(env).is_dir() else None
    for start in (Path.cwd().resolve(), Path(__file__).resolve()):
        for parent in start.parents:
            candidate = parent / "shared" / "data"
            if candidate.is_dir():
                return candidate
    return None


def tiny_em_set(n: int = 4, size: int = 64, root: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``n`` EM slices as (n, size, size) uint8 images and int64 targets (1 = membrane, 0 = cell).

    Images are area-averaged; a target pixel is membrane when most of its source pixels are.
    """
    from PIL import Image

    base = (root or shared_data_dir() or Path("/nonexistent")) / EM_DATASET / "train"
    if not (base / "image").is_dir():
        raise FileNotFoundError(f"EM data not found under {base}")
    images, targets = [], []
    for i in range(n):
        img = Image.open(base / "image" / f"{i}.png").convert("L")
        lab = np.asarray(Image.open(base / "label" / f"{i}.png").convert("L")) < 128  # black = membrane
        images.append(np.asarray(img.resize((size, size), Image.Resampling.BOX)))
        frac = Image.fromarray(lab.astype(np.float32)).resize((size, size), Image.Resampling.BOX)
        targets.append((np.asarray(frac) > 0.5).astype(np.int64))
    return np.stack(images), np.stack(targets)


def tiny_voc_set(size: int = 64, root: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The three labelled VOC photos as (3, size, size) grey uint8 images and object-vs-background targets.

    Objects are large here, unlike EM membranes, so a model that predicts on a coarse grid (output
    stride 8 and up) can draw them; VOC's 255 border pixels stay ignored (255).
    """
    from PIL import Image

    base = (root or shared_data_dir() or Path("/nonexistent")) / VOC_DATASET / "data_dataset_voc"
    names = sorted(p.stem for p in (base / "JPEGImages").glob("*.jpg")) if base.is_dir() else []
    if not names:
        raise FileNotFoundError(f"VOC photos not found under {base}")
    images, targets = [], []
    for name in names:
        img = Image.open(base / "JPEGImages" / f"{name}.jpg").convert("L").resize((size, size), Image.Resampling.BOX)
        lab = Image.open(base / "SegmentationClass" / f"{name}.png").resize((size, size), Image.Resampling.NEAREST)
        lab = np.asarray(lab)
        images.append(np.asarray(img))
        targets.append(np.where(lab == 255, 255, (lab > 0).astype(np.int64)).astype(np.int64))
    return np.stack(images), np.stack(targets)


def _crop_or_pad(volume: np.ndarray, size: int) -> np.ndarray:
    """Centre crop (or zero-pad) every axis of ``volume`` to ``size``."""
    out = volume
    for axis, n in enumerate(volume.shape):
        if n >= size:
            start = (n - size) // 2
            out = np.take(out, range(start, start + size), axis=axis)
        else:
            pad = [(0, 0)] * out.ndim
            pad[axis] = ((size - n) // 2, size - n - (size - n) // 2)
            out = np.pad(out, pad)
    return out


def tiny_hippocampus_set(n: int = 2, size: int = 32, root: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``n`` MSD hippocampus MRI volumes as (n, size, size, size) float32 images (scene axes (k, j, i))
    and int64 targets (0 background, 1 anterior, 2 posterior), centre-cropped to ``size`` per axis.

    Read through the NIfTI scene reader, as the pipeline reads them; needs nibabel.
    """
    from raysegment.io.scenes.nifti import open_nifti_scene
    from raysegment.tiling.plan import Window

    base = (root or shared_data_dir() or Path("/nonexistent")) / HIPPOCAMPUS_DATASET
    if not (base / "imagesTr").is_dir() or n > len(HIPPOCAMPUS_CASES):
        raise FileNotFoundError(f"hippocampus volumes not found under {base}")
    images, targets = [], []
    for case in HIPPOCAMPUS_CASES[:n]:
        pair = []
        for folder in ("imagesTr", "labelsTr"):
            with open_nifti_scene(str(base / folder / f"{case}.nii.gz")) as scene:
                whole = scene.read(Window(0, (0, 0, 0), scene.info.shape))[..., 0]
            pair.append(_crop_or_pad(whole, size))
        images.append(pair[0].astype(np.float32))
        targets.append(np.rint(pair[1]).astype(np.int64))
    return np.stack(images), np.stack(targets)


def class_prior_loss(targets: np.ndarray, ignore_index: int = 255) -> float:
    """Cross-entropy of predicting the class frequencies everywhere: what a model that ignores its input reaches."""
    values = targets[targets != ignore_index]
    freq = np.bincount(values.ravel()) / max(values.size, 1)
    freq = freq[freq > 0]
    return float(-(freq * np.log(freq)).sum())


def learning_curve(model: SegmentationModel, images: np.ndarray, targets: np.ndarray, *, steps: int = 100,
                   lr: float = 1e-2, seed: int = 0) -> list[float]:
    """Adam on one fixed batch; the loss at every step. Inputs go through the plugin's own ``preprocess``,
    targets through its ``encode_target``, the loss is its ``loss``: the hooks ``raysegment train`` calls.

    ``images`` is (N, H, W) or, for volume models, (N, D, H, W); the one band is repeated to
    ``in_channels``. ``seed`` seeds torch before ``build()``, so the initial weights (and the
    curve) are reproducible. The defaults are :class:`ModelLearns`'s. Raises ``AssertionError``
    when no trainable parameter reaches the loss (a frozen or detached head), which would
    otherwise fail inside autograd.
    """
    torch.manual_seed(seed)
    names = ("depth", "height", "width")[-(images.ndim - 1):]
    x = torch.from_numpy(np.stack([
        model.preprocess(Sample(data=np.repeat(img[..., None], model.in_channels, axis=-1),
                                meta=dict(zip(names, img.shape))))
        for img in images
    ]))
    y = torch.from_numpy(np.stack([model.encode_target(t) for t in targets]))
    module = model.build().train()
    trainable = [p for p in module.parameters() if p.requires_grad]
    if not trainable:
        raise AssertionError(f"{type(model).__name__} has no trainable parameters")
    optim = torch.optim.Adam(trainable, lr=lr)
    losses = []
    for _ in range(steps):
        optim.zero_grad()
        loss = model.loss(model.forward(module, x), y)
        if not loss.requires_grad:
            raise AssertionError(f"{type(model).__name__}'s loss has no gradient: no trainable parameter reaches "
                                 "the output (a frozen or detached head?)")
        loss.backward()
        optim.step()
        losses.append(float(loss.detach()))
    return losses


#: The names :meth:`ModelLearns.check` takes, each a class attribute of :class:`ModelLearns`.
SETTINGS = ("steps", "lr", "seed", "size", "dataset", "volumes", "max_ratio", "max_prior_ratio")


class ModelLearns:
    """pytest base class: ``test_learns`` trains the model on a tiny real set and asserts that it learned.

    Subclass it and set ``model_name`` (the installed registry name) and ``params`` (a small
    configuration), or override :meth:`make_model`; or, for a table of models, call
    :meth:`check` from a parametrized test. The run is :func:`learning_curve`: Adam for
    ``steps`` steps at learning rate ``lr`` on one fixed batch, the whole ``dataset`` at
    ``size`` pixels a side. The test passes when the mean loss of the last five steps (the
    tail) is

    - finite at every step,
    - below ``max_ratio`` times the first step's loss: it clearly fell, and
    - below ``max_prior_ratio`` times :func:`class_prior_loss`, the cross-entropy of
      predicting the class frequencies everywhere. That is what a model whose output ignores
      its input reaches at best, however far its loss falls from a bad start.

    The defaults (100 steps, lr 1e-2, 0.7 and 0.85) pass a plain three-layer
    conv-ReLU-conv-ReLU-conv(1x1) plugin of width 16 on the EM set at each of 16 seeds, also
    with 3 bands or 3 classes, with margin (tail at most 0.53x its start and 0.76x the prior),
    in about half a second on a CPU; they fail such a model whose head sees no input, or whose
    head is frozen and detached. (30 steps at lr 1e-3, the earlier defaults, failed it.) Larger
    models usually want a smaller ``lr`` (deep nets without batch norm: 1e-4 to 1e-3) and
    fewer ``steps`` (each costs a forward and a backward pass); models that predict on a
    coarse grid cannot beat the prior by much on thin EM membranes: give them
    ``dataset = "voc"``, a larger ``size``, or a looser ``max_prior_ratio`` (``None`` drops
    that bar). Mark heavy models slow with ``pytestmark = [pytest.mark.slow]``.
    """

    model_name: ClassVar[str | None] = None
    params: ClassVar[Mapping[str, Any]] = {}
    #: Adam steps on the one batch; the tail is the mean loss of the last 5
    steps: ClassVar[int] = 100
    #: Adam's learning rate
    lr: ClassVar[float] = 1e-2
    #: seeds torch before ``build()``: the initial weights, hence the whole curve
    seed: ClassVar[int] = 0
    #: the side, in pixels (voxels for "hippocampus"), every image is scaled (or cropped) to; a
    #: multiple of the model's ``size_divisor``
    size: ClassVar[int] = 64
    #: "em" (four ISBI-2012 slices, membrane vs cell: thin structures, 23% membrane), "voc" (three
    #: photos, object vs background: large shapes that coarse-grid models can draw) or
    #: "hippocampus" (volume models: two MRI volumes, 3 classes, ``size`` voxels per axis; needs nibabel)
    dataset: ClassVar[str] = "em"
    #: how many hippocampus volumes to fit (the dataset "hippocampus" only; at most 4)
    volumes: ClassVar[int] = 2
    #: the tail must fall below this fraction of the first step's loss
    max_ratio: ClassVar[float] = 0.7
    #: the tail must also fall below this fraction of the class-prior loss (the cross-entropy of
    #: the best constant prediction); ``None`` drops this bar. It is what catches a model that
    #: learns the class frequencies alone: from a bad start that passes ``max_ratio``, and with
    #: 90% background, as in the hippocampus crops, it does from any start
    max_prior_ratio: ClassVar[float | None] = 0.85

    def make_model(self) -> SegmentationModel:
        """The model under test: the installed ``model_name`` with ``params``. Override it to test
        a plugin class before it is installed."""
        if self.model_name is None:
            raise TypeError(f"{type(self).__name__} must set model_name or override make_model()")
        return get_registry().create(self.model_name, dict(self.params))

    def load_dataset(self) -> tuple[np.ndarray, np.ndarray]:
        """The ``dataset`` at ``size``; skips the test when the shared data is not there."""
        import pytest

        try:
            if self.dataset == "hippocampus":
                pytest.importorskip("nibabel", reason="the hippocampus volumes need nibabel (raysegment[medical])")
                return tiny_hippocampus_set(self.volumes, size=self.size)
            if self.dataset not in ("em", "voc"):
                raise ValueError(f"dataset must be 'em', 'voc' or 'hippocampus', got {self.dataset!r}")
            return (tiny_voc_set if self.dataset == "voc" else tiny_em_set)(size=self.size)
        except FileNotFoundError as exc:
            pytest.skip(f"{exc} (../shared/data is checked out beside the repo in CI)")

    def test_learns(self) -> None:
        self.assert_learns()

    def assert_learns(self) -> list[float]:
        """Train as the class doc says, assert each bar, and return the losses."""
        images, targets = self.load_dataset()
        model = self.make_model()
        name = self.model_name or type(model).__name__
        d = int(model.size_divisor)
        if self.size % d:
            raise ValueError(f"size {self.size} is not a multiple of the model's size_divisor {d}")
        losses = learning_curve(model, images, targets, steps=self.steps, lr=self.lr, seed=self.seed)
        assert all(np.isfinite(losses)), f"non-finite loss: {losses}"
        tail = float(np.mean(losses[-5:]))
        run = f"{self.steps} Adam steps, lr {self.lr}, {self.dataset} at {self.size}"
        assert tail < self.max_ratio * losses[0], (
            f"{name} did not learn: loss {losses[0]:.4f} -> {tail:.4f} (mean of last 5) in {run}; "
            f"need < {self.max_ratio:.2f}x"
        )
        if self.max_prior_ratio is not None:
            prior = class_prior_loss(targets, model.ignore_index)
            assert tail < self.max_prior_ratio * prior, (
                f"{name} learned little beyond the class frequencies: loss {tail:.4f} (mean of last 5) in {run} "
                f"vs {prior:.4f} for the best constant prediction; need < {self.max_prior_ratio:.2f}x"
            )
        return losses

    @classmethod
    def case(cls, model: str | type[SegmentationModel], params: Mapping[str, Any] | None = None, *,
             slow: bool = False, id: str | None = None, **settings: Any) -> Any:
        """One row of a table of models: a ``pytest.param`` of ``(model, params, settings)`` for
        ``@pytest.mark.parametrize(("model", "params", "settings"), rows)`` and a test that calls
        :meth:`check`. ``slow`` marks it slow; ``id`` defaults to the model's name. Settings are
        checked here, so a misspelt one fails at collection.
        """
        import pytest

        cls._check_settings(settings)
        name = id or (model if isinstance(model, str) else model.__name__)
        return pytest.param(model, dict(params or {}), settings, id=name, marks=[pytest.mark.slow] if slow else [])

    @staticmethod
    def _check_settings(settings: Mapping[str, Any]) -> None:
        unknown = sorted(set(settings) - set(SETTINGS))
        if unknown:
            raise TypeError(f"unknown ModelLearns setting(s) {', '.join(unknown)}; settings: {', '.join(SETTINGS)}")

    @classmethod
    def check(cls, model: str | type[SegmentationModel], params: Mapping[str, Any] | None = None,
              **settings: Any) -> list[float]:
        """Run the check for one model outside a subclass: for a table of models in one parametrized test.

        ``model`` is an installed registry name or a plugin class; ``settings`` are any of
        :data:`SETTINGS` (a misspelt one raises ``TypeError`` rather than being ignored).
        Returns the losses; fails as ``test_learns`` does.
        """
        cls._check_settings(settings)
        attrs: dict[str, Any] = {"params": dict(params or {}), **settings}
        if isinstance(model, str):
            attrs["model_name"] = model
        else:
            attrs["model_name"] = model.__name__
            attrs["make_model"] = lambda self: model(**self.params)
        return type(f"{cls.__name__}Case", (cls,), attrs)().assert_learns()
