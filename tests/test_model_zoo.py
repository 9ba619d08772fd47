"""Every installed model, end to end: `raysegment infer` on real files, bad parameters, bad weights.

The list of models is the registry's, so a new plugin is covered by installing it.
Each model runs in its small ``smoke_params`` configuration.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from click.testing import CliRunner
from PIL import Image

from raysegment.cli import main
from raysegment.masks.rle import row_label_map
from raysegment.output.root import read_output
from raysegment.plugin.contract import Modality, ParamError
from raysegment.plugin.registry import get_registry

REGISTRY = get_registry()
NAMES = sorted(REGISTRY.plugins)
WITH_WEIGHTS = [n for n in NAMES if any(p.loads_weights for p in REGISTRY.get(n).cls.params)]
FIRST_PARTY = {"unet", "resunet", "denseunet", "unet3d", "fcn8s", "fcn16s", "fcn32s", "segnet", "deeplabv1", "deeplabv2",
               "deeplabv3", "deeplabv3plus", "pspnet", "refinenet", "espnet", "danet", "fcn_resnet50",
               "fcn_resnet101", "deeplabv3_resnet50", "lraspp_mobilenet_v3_large"}


def _params(name: str) -> dict[str, object]:
    cls = REGISTRY.get(name).cls
    return {**{p.name: p.default for p in cls.params}, **dict(cls.smoke_params)}


def _write(path: Path, bands: int, height: int, width: int, seed: int) -> Path:
    """A textured image with ``bands`` bands: PNG where Pillow has a mode for it, else TIFF."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = ((np.sin(xx / 5.0) + np.cos(yy / 7.0)) * 60 + 128).astype(np.uint8)
    data = np.stack([np.roll(base, 3 * b, axis=1) for b in range(bands)], axis=-1)
    data = np.clip(data.astype(int) + rng.integers(-20, 20, data.shape), 0, 255).astype(np.uint8)
    if bands in (1, 3, 4):
        path = path.with_suffix(".png")
        Image.fromarray(data[..., 0] if bands == 1 else data).save(path)
    else:
        path = path.with_suffix(".tif")
        tifffile.imwrite(path, data)
    return path


def test_the_first_party_zoo_is_installed() -> None:
    missing = sorted(FIRST_PARTY - set(NAMES))
    assert not missing, f"first-party models not registered: {missing}; broken: {dict(REGISTRY.broken)}"


@pytest.mark.parametrize("name", [
    pytest.param(n, marks=pytest.mark.skip(reason="volume models run tiled; covered by tests/test_tiled_volumes.py"))
    if REGISTRY.get(n).cls.modality is Modality.VOLUME else n
    for n in NAMES
])
def test_every_model_runs_through_infer_and_wrong_bands_are_error_rows(name: str, ray_local, tmp_path: Path) -> None:
    params = _params(name)
    bands = int(params["in_channels"])
    folder = tmp_path / "in"
    folder.mkdir()
    good = _write(folder / "a_good", bands, 45, 70, 0)  # odd sizes: padding and cropping are exercised
    wrong = _write(folder / "b_wrong", bands + 1 if bands != 3 else 1, 40, 40, 1)
    args = ["infer", str(folder), str(tmp_path / "out"), "--model", name, "--batch-size", "2"]
    for key, value in REGISTRY.get(name).cls.smoke_params.items():
        args += ["--param", f"{key}={value}"]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 3, result.output  # 3: finished, some items are error rows
    rows = {Path(r["uri"]).name: r for r in read_output(str(tmp_path / "out")).to_pylist()}
    assert set(rows) == {good.name, wrong.name}
    ok = rows[good.name]
    assert ok["status"] == "ok", ok["error"]
    labels = row_label_map(ok)
    assert labels.shape == (45, 70)
    assert labels.min() >= 0 and labels.max() < max(int(params["num_classes"]), 2)
    assert ok["model"]["name"] == name
    bad = rows[wrong.name]
    assert bad["status"] == "error" and "band" in bad["error"], bad["error"]


@pytest.mark.parametrize("name", NAMES)
def test_unknown_and_mistyped_params_list_the_valid_ones(name: str) -> None:
    cls = REGISTRY.get(name).cls
    with pytest.raises(ParamError) as exc:
        cls.resolve_params({"no_such_param": 1})
    for p in cls.params:
        assert p.name in str(exc.value)
    with pytest.raises(ParamError, match="num_classes.*expects int"):
        cls.resolve_params({"num_classes": "many"})


@pytest.mark.parametrize("name", WITH_WEIGHTS)
def test_weights_that_do_not_fit_are_one_line_naming_the_tensor(name: str, tmp_path: Path) -> None:
    cls = REGISTRY.get(name).cls
    weights_param = next(p.name for p in cls.params if p.loads_weights)
    bogus = tmp_path / "bogus.pth"
    torch.save({"conv1.weight": torch.zeros(2, 2, 1, 1), "not_a_layer.weight": torch.zeros(3)}, bogus)
    args = ["infer", str(tmp_path), str(tmp_path / "out"), "--model", name, "--param", f"{weights_param}={bogus}"]
    for key, value in cls.smoke_params.items():
        args += ["--param", f"{key}={value}"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1, result.output
    message = result.output.strip()
    assert len(message.splitlines()) == 1 and "Traceback" not in message, message
    assert "bogus.pth" in message and ("conv1.weight" in message or "not_a_layer.weight" in message), message


def test_dense_crf_runs_through_infer(ray_local, tmp_path: Path) -> None:
    """DeepLab's CRF (probabilities and the image leave the actor, the CRF runs in the encode task)."""
    pytest.importorskip("pydensecrf", reason="pydensecrf2 (the raysegment-deeplab[crf] extra) is not installed")
    folder = tmp_path / "in"
    folder.mkdir()
    _write(folder / "scene", 3, 48, 64, 0)
    out = tmp_path / "out"
    args = ["infer", str(folder), str(out), "--model", "deeplabv2"]
    for key, value in {**REGISTRY.get("deeplabv2").cls.smoke_params, "in_channels": 3, "crf": True,
                       "crf_iterations": 3}.items():
        args += ["--param", f"{key}={value}"]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    (row,) = read_output(str(out)).to_pylist()
    assert row["status"] == "ok" and '"crf": true' in row["model"]["params"]
    assert row_label_map(row).shape == (48, 64)
