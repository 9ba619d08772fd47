"""The conformance kit (raysegment.testing.conformance): it passes real plugins and names what broken ones break."""

from __future__ import annotations

import ast
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

import raysegment.testing.conformance as kit
from raysegment.cli import main
from raysegment.plugin.contract import Param, Sample, SegmentationModel, SemanticPrediction
from raysegment.plugin.registry import UnknownModelError
from raysegment.testing import CHECKS, ModelConformance, assert_conforms, check_model, format_results

SMALL_UNET = {"depth": 2, "base_channels": 4}
ALL = list(CHECKS)


class Tiny(SegmentationModel):
    """A correct plugin, small enough to check in milliseconds: the base of the broken ones."""

    params = (Param("in_channels", int, 1), Param("num_classes", int, 2))
    size_divisor = 4

    def build(self) -> nn.Module:
        return nn.Conv2d(self.in_channels, self.num_classes, 3, padding=1)


class WrongSize(Tiny):
    def forward(self, module: nn.Module, batch: torch.Tensor) -> Any:
        return module(batch)[..., ::2, ::2]


class _NoisyConv(nn.Conv2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noise regardless of eval(): a stuck dropout
        return super().forward(x) + 0.01 * torch.randn(x.shape[0], self.out_channels, *x.shape[2:])


class Noisy(Tiny):
    def build(self) -> nn.Module:
        return _NoisyConv(self.in_channels, self.num_classes, 3, padding=1)


class IgnoresMeta(Tiny):
    def postprocess(self, reduced: Mapping[str, np.ndarray], sample_meta: Mapping[str, Any]) -> SemanticPrediction:
        return SemanticPrediction(labels=reduced["labels"])


class BadNames(Tiny):
    def class_names(self) -> tuple[str, ...]:
        return ("background",)


class BuildRaises(Tiny):
    def build(self) -> nn.Module:
        raise RuntimeError("weights server down")


class AnyBands(Tiny):
    def preprocess(self, sample: Sample) -> np.ndarray:
        return np.moveaxis(sample.data, -1, 0).astype(np.float32) / 255


class DetachedLoss(Tiny):
    def loss(self, output: Any, target: torch.Tensor) -> torch.Tensor:
        return super().loss(output, target).detach()


def failures(results: list[kit.CheckResult]) -> dict[str, str]:
    return {r.name: r.message for r in results if not r.ok}


def test_real_unet_plugin_passes_every_check() -> None:
    results = check_model("unet", SMALL_UNET)
    assert [r.name for r in results] == ALL
    assert failures(results) == {}
    by_name = {r.name: r.message for r in results}
    assert "UNet2d" in by_name["build"] and "(2, 32, 36)" in by_name["forward_shapes"]
    assert by_name["padding"] == "31x33 padded to 32x36 -> labels (31, 33)"
    assert all(r.seconds >= 0 for r in results)


def test_reference_plugin_passes_so_the_broken_ones_fail_for_their_one_defect() -> None:
    assert_conforms(Tiny)
    assert failures(check_model(Tiny(in_channels=3), {"num_classes": 4})) == {}


SKIPPED_AFTER_FORWARD = {"determinism", "reduce_postprocess", "rle_roundtrip", "padding", "checkpoint_roundtrip"}


@pytest.mark.parametrize(
    ("cls", "failed", "check", "fragment"),
    [
        (WrongSize, {"forward_shapes", "training_step"} | SKIPPED_AFTER_FORWARD, "forward_shapes",
         "reduce()['labels'] has shape (2, 16, 18), expected (2, 32, 36)"),
        (Noisy, {"determinism", "checkpoint_roundtrip"}, "determinism", "differ between two runs"),
        (IgnoresMeta, {"padding"}, "padding", "gave labels of shape (32, 36), expected (31, 33)"),
        (BadNames, set(ALL), "contract", "class_names() has 1 name(s) but num_classes=2"),
        (BuildRaises, set(ALL) - {"contract", "preprocess"}, "build", "raised RuntimeError: weights server down"),
        (AnyBands, set(ALL) - {"contract", "build"}, "preprocess", "2 bands was accepted"),
        (DetachedLoss, {"training_step"}, "training_step", "does not require grad"),
    ],
)
def test_broken_plugin_fails_the_check_that_names_its_defect(
    cls: type[SegmentationModel], failed: set[str], check: str, fragment: str
) -> None:
    results = failures(check_model(cls))
    assert set(results) == failed
    assert fragment in results[check]
    assert not results[check].startswith("skipped")


def test_checks_that_need_a_failed_one_are_failed_as_skipped_naming_the_root_cause() -> None:
    results = {r.name: r for r in check_model(BuildRaises)}
    assert results["preprocess"].ok
    for name in SKIPPED_AFTER_FORWARD | {"forward_shapes", "training_step"}:
        # checkpoint_roundtrip needs determinism, which needs forward_shapes, which needs build
        assert results[name].message == "skipped: build failed" and results[name].seconds == 0.0
    noisy = {r.name: r.message for r in check_model(Noisy)}
    assert noisy["checkpoint_roundtrip"] == "skipped: determinism failed"
    contract_broken = failures(check_model(BadNames))
    assert {m for n, m in contract_broken.items() if n != "contract"} == {"skipped: contract failed"}


def test_only_runs_what_the_requested_checks_need_and_reports_just_those() -> None:
    (result,) = check_model(Tiny, only=["padding"])
    assert result.name == "padding" and result.ok
    (skipped,) = check_model(BuildRaises, only=["padding"])
    # the failed need was not requested, so its message travels along
    assert skipped.message == "skipped: build failed: raised RuntimeError: weights server down"
    with pytest.raises(ValueError, match=r"unknown check\(s\) \['nope'\]"):
        check_model(Tiny, only=["nope"])


def test_a_model_that_cannot_be_created_fails_contract_and_an_unknown_name_raises() -> None:
    results = check_model(Tiny, {"bogus": 1})
    assert results[0].name == "contract" and "cannot create the model: " in results[0].message
    assert "unknown parameter(s) bogus" in results[0].message
    assert all(r.message == "skipped: contract failed" for r in results[1:]) and len(results) == len(ALL)
    with pytest.raises(UnknownModelError, match="installed: .*unet"):
        check_model("no-such-model")


def test_assert_conforms_lists_every_failed_check() -> None:
    with pytest.raises(AssertionError) as info:
        assert_conforms(Noisy)
    text = str(info.value)
    assert text.startswith("2 conformance check(s) failed")
    assert "  determinism: eval-mode outputs differ" in text and "  checkpoint_roundtrip: skipped" in text
    assert "padding" not in text


def test_format_results_is_a_table_with_a_summary() -> None:
    table = format_results(check_model(Noisy)).splitlines()
    assert table[0].split() == ["check", "result", "time", "message"]
    rows = {line.split()[0]: line.split()[1] for line in table[1:-1]}
    assert rows == {name: "FAIL" if name in {"determinism", "checkpoint_roundtrip"} else "PASS" for name in ALL}
    assert table[-1] == "8/10 checks passed"


def test_model_conformance_gives_one_test_per_check_and_fails_the_broken_one() -> None:
    assert [n for n in dir(ModelConformance) if n.startswith("test_")] == sorted(f"test_{n}" for n in ALL)

    class NoisyConformance(ModelConformance):
        def make_model(self) -> SegmentationModel:
            return Noisy()

    suite = NoisyConformance()
    suite.test_build()
    suite.test_padding()
    with pytest.raises(AssertionError, match="'determinism' failed: eval-mode outputs differ"):
        suite.test_determinism()

    class Unnamed(ModelConformance):
        pass

    with pytest.raises(AssertionError, match="must set model_name"):
        Unnamed().test_contract()


def test_check_model_leaves_the_callers_torch_state_alone() -> None:
    threads = torch.get_num_threads()
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    check_model(Tiny)
    assert torch.equal(torch.rand(3), expected)
    assert torch.get_num_threads() == threads


def test_kit_module_does_not_import_pytest() -> None:
    tree = ast.parse(open(kit.__file__, encoding="utf-8").read())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {(n.module or "").split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert "torch" in imported and "pytest" not in imported


def test_cli_models_check_prints_the_table() -> None:
    ok = CliRunner().invoke(main, ["models", "check", "unet", "--param", "depth=2", "--param", "base_channels=4"])
    assert ok.exit_code == 0, ok.output
    assert "10/10 checks passed" in ok.output and "rle_roundtrip" in ok.output
    bad = CliRunner().invoke(main, ["models", "check", "unet", "--param", "depth=2", "--param", "class_names=a"])
    assert bad.exit_code == 1
    assert "FAIL" in bad.output and "class_names has 1 names but num_classes=2" in bad.output
