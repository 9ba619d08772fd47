"""A folder of links through one real run: every entry is one row, the bad links error rows naming them."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import png_bytes

from raysegment.errors import InputSpecError
from raysegment.infer.pipeline import InferenceConfig, run_inference


def _folder(tmp_path: Path) -> Path:
    folder, elsewhere = tmp_path / "in", tmp_path / "elsewhere"
    folder.mkdir()
    elsewhere.mkdir()
    image = png_bytes(np.random.default_rng(0).integers(0, 255, (32, 48), dtype=np.uint8))
    (folder / "good.png").write_bytes(image)
    (elsewhere / "target.png").write_bytes(image)
    os.symlink(elsewhere / "target.png", folder / "good_link.png")
    os.symlink(tmp_path / "gone.png", folder / "dangling.png")
    os.symlink("loop.png", folder / "loop.png")
    os.mkfifo(folder / "pipe.png")  # read by a worker, it would block it: refused unopened
    return folder


@pytest.mark.usefixtures("ray_local")
def test_links_and_special_files_are_each_one_row(tmp_path: Path, unet_checkpoint: str) -> None:
    folder = _folder(tmp_path)
    out = tmp_path / "out"
    summary = run_inference(InferenceConfig(input=str(folder), output=str(out), checkpoint=unet_checkpoint,
                                            batch_size=4, shard_size=4))
    rows = pq.read_table(out, columns=["uri", "status", "error", "width"]).to_pylist()
    by_uri = {row["uri"]: row for row in rows}
    assert len(rows) == len(by_uri) == 5 == summary.items  # one row per entry, exactly once
    assert (summary.ok, summary.failed) == (2, 3)
    for name in ("good.png", "good_link.png"):
        row = by_uri[str(folder / name)]
        assert (row["status"], row["error"], row["width"]) == ("ok", None, 48), row
    expected = {
        "dangling.png": f"broken symbolic link {folder}/dangling.png -> {tmp_path}/gone.png: its target does not exist",
        "loop.png": f"symbolic link loop at {folder}/loop.png -> loop.png",
        "pipe.png": f"{folder}/pipe.png is not a regular file (a FIFO)",
    }
    for name, message in expected.items():
        row = by_uri[str(folder / name)]
        assert row["status"] == "error" and row["error"].startswith(message), row


def test_an_output_inside_the_input_is_refused_before_ray(tmp_path: Path, unet_checkpoint: str) -> None:
    folder = _folder(tmp_path)
    config = InferenceConfig(input=str(folder), output=str(folder / "out"), checkpoint=unet_checkpoint)
    with pytest.raises(InputSpecError, match=f"^output {folder}/out lies inside the input folder {folder}: "):
        run_inference(config)
    assert not (folder / "out").exists()
