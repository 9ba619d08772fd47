"""The three plugins keep the raysegment contract (conformance kit) and learn the tiny EM set.

Conformance runs each model's ``smoke_params`` (ResNet-18, 1 band, 2 classes).

ModelLearns: at 64x64 the EM membranes are about 1 px wide. A model predicting at
1/8 and upsampling bilinearly cannot get much below ~0.74x of a uniform start there
(an oracle 1/8 map, bilinearly upsampled, scores CE 0.515 against ln 2 = 0.693; the
class prior alone 0.545), and PSPNet and DANet start uniform (their classifiers start
at N(0, 0.01)). So they train at 128x128 (a 16x16 map at 1/8), for 40 steps.
RefineNet predicts at 1/4 and keeps 64x64 and 30 steps.
"""

from __future__ import annotations

from typing import Any, ClassVar

import pytest

from raysegment.testing import ModelConformance, ModelLearns, installed_model


def _smoke(name: str) -> dict[str, Any]:
    return dict(installed_model(name).cls.smoke_params)


class TestPSPNetConformance(ModelConformance):
    model_name = "pspnet"
    params: ClassVar[dict[str, Any]] = _smoke("pspnet")


class TestRefineNetConformance(ModelConformance):
    model_name = "refinenet"
    params: ClassVar[dict[str, Any]] = _smoke("refinenet")


class TestDANetConformance(ModelConformance):
    model_name = "danet"
    params: ClassVar[dict[str, Any]] = _smoke("danet")


# Each model learns at its smoke_params. Each row states its steps, learning rate and bars, as
# measured; the class-prior bar is off (the 1/8 models' floor above is near the prior).
LEARNS = [
    # 108-140 s measured on a shared 2-core box; the loss is main + 0.4 aux: at lr 1e-3 it needs ~45
    # steps to reach 0.7x
    ModelLearns.case("pspnet", _smoke("pspnet"), slow=True, size=128, steps=40, lr=2e-3,
                     max_prior_ratio=None),
    # 11 s measured on a shared 2-core box (21 s under heavy load): not marked slow
    ModelLearns.case("refinenet", _smoke("refinenet"), steps=30, lr=1e-3, max_prior_ratio=None),
    # 87-142 s measured on a shared 2-core box
    ModelLearns.case("danet", _smoke("danet"), slow=True, size=128, steps=40, lr=1e-3, max_prior_ratio=None),
]


@pytest.mark.parametrize(("model", "params", "settings"), LEARNS)
def test_learns(model: str, params: dict[str, Any], settings: dict[str, Any]) -> None:
    ModelLearns.check(model, params, **settings)
