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


def cli(*args: str, cwd: Path | None = None, timeout: int = 300,
        extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "RAYSEGMENT_DEBUG"} | (extra_env or {})
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
    for args in (["infer", "a", "b", "--actors", "3:1"], ["infer", "a", "b", "--batch-size", "0"], ["infer"],
                 ["infer", "a", "b", "--max-decode-memory", "lots"]):
        proc = cli(*args)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr and "Usage:" in proc.stderr


def test_help_shows_every_option_with_default() -> None:
    text = cli("infer", "--help").stdout
    for option, default in [("--batch-size", "8"), ("--shard-size", "256"), ("--precision", "fp32"),
                            ("--actors", "one per GPU, else 1"), ("--address", "embedded local Ray"),
                            ("--stall-timeout", "300.0"), ("--max-decode-memory", "half the worker's memory")]:
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


@pytest.mark.parametrize("command", ["show", "eval"])
@pytest.mark.parametrize("what", ["missing", "empty folder", "image file", "other files"])
def test_show_and_eval_on_a_path_that_is_no_output_say_so_in_one_line(command: str, what: str, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from raysegment.cli import main

    path = tmp_path / "not-an-output"
    if what == "empty folder":
        path.mkdir()
    elif what == "image file":
        path = tmp_path / "a.png"
        Image.fromarray(np.zeros((4, 4), np.uint8)).save(path)
    elif what == "other files":
        path.mkdir()
        (path / "notes.txt").write_text("hello")
    result = CliRunner().invoke(main, [command, str(path), "a.png", "--out", str(tmp_path / "o.png")])
    assert result.exit_code == 1, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert errors == [f"error: no part-*.parquet files under {path}: not a raysegment output"], result.output
    assert "Traceback" not in result.output and not (tmp_path / "o.png").exists()


def test_infer_shows_one_progress_bar_and_puts_rays_notices_in_the_quiet_log(tmp_path: Path) -> None:
    images = tmp_path / "in"
    images.mkdir()
    for i in range(3):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (32, 32), dtype=np.uint8)).save(images / f"{i}.png")
    quiet = tmp_path / "quiet.log"
    proc = cli("infer", str(images), str(tmp_path / "out"), "--model", "unet", "--param", "depth=2",
               "--param", "base_channels=4", "--shard-size", "2",
               extra_env={"RAYSEGMENT_PROGRESS": "1", "RAYSEGMENT_QUIET_LOG": str(quiet)})
    assert proc.returncode == 0, proc.stderr
    assert "infer: 100%" in proc.stderr and "3/3" in proc.stderr  # ours, forced on off a terminal
    assert "Running Dataset" not in proc.stderr and "Total Progress" not in proc.stderr  # Ray Data's: off meanwhile
    logged = quiet.read_text()
    assert "Progress bars disabled" in logged  # Ray Data's notice of that, kept from the terminal
    notices = [line.split(": ", 1)[1][:60] for line in logged.splitlines() if ": " in line]
    assert notices and not [n for n in notices if n in proc.stderr]
