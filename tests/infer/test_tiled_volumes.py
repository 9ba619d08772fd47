"""3D sliding windows end to end: real MSD hippocampus MRI volumes through ``unet3d`` on real Ray.

Shapes, affines and spacing of the output rows are checked against nibabel's own reading;
the per-slice RLE must cover every voxel exactly once.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import SHARED

from raysegment.cli import main
from raysegment.masks.rle import decode_counts
from raysegment.output.root import read_output

nib = pytest.importorskip("nibabel", reason="volume tests need raysegment[medical]")

HIPPO = SHARED / "msd_task04_hippocampus" / "imagesTr"
#: Cases of uneven shapes; 001 is stored as uint8, the others as float32.
CASES = ("hippocampus_001.nii.gz", "hippocampus_003.nii.gz", "hippocampus_017.nii.gz")
SMOKE_3D = ["--param", "in_channels=1", "--param", "depth=2", "--param", "base_channels=4",
            "--param", "intensity_scale=0.00025"]


@pytest.fixture(scope="module")
def volumes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not HIPPO.is_dir():
        pytest.skip(f"shared data not present: {HIPPO} (../shared/data is checked out beside the repo in CI)")
    folder = tmp_path_factory.mktemp("volumes")
    for name in CASES:
        shutil.copy(HIPPO / name, folder / name)
    nib.save(nib.Nifti1Image(np.ones((12, 10, 8), dtype=np.float32), np.eye(4)), folder / "z-degenerate.nii")
    header = nib.load(folder / "z-degenerate.nii").header.copy()
    header["srow_y"] = [0, 0, 0, 0]  # voxel axis j maps to nothing; nibabel will not write this itself
    with open(folder / "z-degenerate.nii", "r+b") as f:
        f.write(header.binaryblock)
    (folder / "z-truncated.nii.gz").write_bytes((HIPPO / CASES[1]).read_bytes()[:4000])
    return folder


@pytest.fixture(scope="module")
def rows(volumes: Path, ray_local, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    out = tmp_path_factory.mktemp("vol-out") / "out"
    result = CliRunner().invoke(main, ["infer", str(volumes), str(out), "--model", "unet3d", *SMOKE_3D,
                                       "--tile", "32", "--overlap", "8", "--batch-size", "4"],
                                catch_exceptions=False)
    assert result.exit_code == 3, result.output  # two volumes are bad on purpose
    return {Path(r["uri"]).name: r for r in read_output(str(out)).to_pylist()}


def test_every_volume_has_a_row_and_bad_ones_say_why(rows: dict[str, dict]) -> None:
    assert sorted(rows) == sorted([*CASES, "z-degenerate.nii", "z-truncated.nii.gz"])
    assert all(rows[name]["status"] == "ok" for name in CASES), {n: rows[n]["error"] for n in CASES}
    assert "degenerate" in rows["z-degenerate.nii"]["error"]
    assert rows["z-truncated.nii.gz"]["status"] == "error" and rows["z-truncated.nii.gz"]["error"]


@pytest.mark.parametrize("name", CASES)
def test_shape_affine_and_spacing_follow_the_nifti(rows: dict[str, dict], name: str) -> None:
    row = rows[name]
    image = nib.load(HIPPO / name)
    i, j, k = image.shape[:3]
    assert (row["depth"], row["height"], row["width"]) == (k, j, i)  # scene [d, h, w] = voxel (w, h, d)
    np.testing.assert_array_equal(np.array(row["affine"]).reshape(4, 4), image.affine)
    zooms = image.header.get_zooms()[:3]
    assert tuple(row["spacing"]) == pytest.approx((zooms[2], zooms[1], zooms[0]))
    assert row["crs"] is None and row["transform"] is None
    tiling = json.loads(row["meta"])["tiling"]
    assert tiling["tile"] == [32, 32, 32] and tiling["windows"] > 1


@pytest.mark.parametrize("name", CASES)
def test_per_slice_rle_covers_every_voxel_once(rows: dict[str, dict], name: str) -> None:
    row = rows[name]
    d, h, w = row["depth"], row["height"], row["width"]
    cover = np.zeros((d, h, w), dtype=np.int32)
    for seg in row["segments"]:
        assert seg["counts"] is None and len(seg["slice_counts"]) == d
        volume = np.stack([decode_counts(c, h, w) for c in seg["slice_counts"]])
        assert int(volume.sum()) == seg["area"] and 0 <= seg["score"] <= 1
        cover += volume
    assert (cover == 1).all()


def test_a_2d_image_given_to_a_volume_model_is_an_error_row(ray_local, tmp_path: Path) -> None:
    from PIL import Image

    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(np.zeros((40, 40), dtype=np.uint8)).save(folder / "flat.png")
    result = CliRunner().invoke(main, ["infer", str(folder), str(tmp_path / "out"), "--model", "unet3d", *SMOKE_3D])
    assert result.exit_code == 3, result.output
    (row,) = read_output(str(tmp_path / "out")).to_pylist()
    assert row["status"] == "error" and "volume" in row["error"]
