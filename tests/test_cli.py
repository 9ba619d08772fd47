"""The command line as a user meets it: exit codes, one-line errors, summary, overlay."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import write_bad_inputs
from PIL import Image

from raysegment.eval.overlay import find_row
from raysegment.masks.rle import row_label_map


def cli(*args: str, cwd: Path | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "RAYSEGMENT_DEBUG"}
    return subprocess.run([sys.executable, "-m", "raysegment.cli", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=timeout)


def _one_line_error(proc: subprocess.CompletedProcess, code: int = 1) -> str:
    assert proc.returncode == code, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    return errors[0]


@pytest.mark.parametrize(
    "args, words",
    [
        (["infer", "{em}", "{tmp}/o", "--model", "nope"], ["unknown model 'nope'", "installed: ", "unet"]),
        (["infer", "{tmp}/missing", "{tmp}/o", "--model", "unet"], ["input not found"]),
        (["infer", "{tmp}/empty", "{tmp}/o", "--model", "unet"], ["input is empty"]),
        (["infer", "{em}", "/proc/forbidden/o", "--model", "unet"], ["cannot write output"]),
        (["infer", "{em}", "{tmp}/o", "--model", "unet", "--param", "depth=deep"], ["'depth' expects int"]),
        (["infer", "{em}", "{tmp}/o", "--model", "unet", "--param", "colour=red"], ["unknown parameter", "valid:"]),
        (["infer", "{em}", "{tmp}/o", "--checkpoint", "{tmp}/none.pt"], ["checkpoint not found"]),
        (["infer", "{em}", "{tmp}/o", "--model", "unet", "--checkpoint", "{tmp}/junk.pt"], ["weights_only"]),
        (["models", "show", "nope"], ["unknown model"]),
    ],
)
def test_fatal_errors_are_one_line(args: list[str], words: list[str], em_images: Path, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    proc = cli(*[a.format(em=em_images, tmp=tmp_path) for a in args])
    line = _one_line_error(proc)
    for word in words:
        assert word in line, line
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").glob("part-*"))


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    for args in (["infer", "a", "b", "--actors", "3:1"], ["infer", "a", "b", "--batch-size", "0"], ["infer"]):
        proc = cli(*args)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr and "Usage:" in proc.stderr


def test_help_shows_every_option_with_default() -> None:
    text = cli("infer", "--help").stdout
    for option, default in [("--batch-size", "8"), ("--shard-size", "256"), ("--precision", "fp32"),
                            ("--actors", "one per GPU, else 1"), ("--address", "embedded local Ray")]:
        assert option in text and f"default: {default}" in " ".join(text.split()), option


def test_infer_with_failures_exits_3_and_show_renders_an_overlay(
    em_images: Path, unet_checkpoint: str, tmp_path: Path
) -> None:
    inputs = tmp_path / "in"
    write_bad_inputs(inputs)
    for path in sorted(em_images.iterdir())[:2]:
        shutil.copy(path, inputs / path.name)
    proc = cli("infer", str(inputs), str(tmp_path / "out"), "--checkpoint", unet_checkpoint,
               "--batch-size", "2", "--shard-size", "4")
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "items 8  ok 2  failed 6  rows written 8" in proc.stdout
    assert "Traceback" not in proc.stderr
    assert len(pd.read_parquet(tmp_path / "out")) == 8
    good = sorted(inputs.glob("[0-9]*.png"))[0]
    png = tmp_path / "overlay.png"
    shown = cli("show", str(tmp_path / "out"), str(good), "--out", str(png))
    assert shown.returncode == 0, shown.stderr
    overlay = np.asarray(Image.open(png))
    source = np.asarray(Image.open(good))
    assert overlay.shape == (*source.shape, 3)
    row = find_row(str(tmp_path / "out"), str(good))
    labels = row_label_map(row)
    grey = (overlay[..., 0] == overlay[..., 1]) & (overlay[..., 1] == overlay[..., 2])
    assert grey.mean() < 0.05  # every label is painted in its colour
    painted = cli("show", str(tmp_path / "out"), str(good), "--out", str(png), "--skip-label", "0")
    assert painted.returncode == 0
    grey = np.all(np.asarray(Image.open(png)) == np.asarray(Image.open(png))[..., :1], axis=-1)
    assert np.array_equal(grey, labels == 0)  # background left as the grey source, the rest coloured
    bad = cli("show", str(tmp_path / "out"), str(inputs / "bomb.png"), "--out", str(tmp_path / "x.png"))
    assert "error row" in _one_line_error(bad)
