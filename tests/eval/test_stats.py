"""Per-band statistics on Ray: exact moments, percentiles within the sketch's stated rank error,
partials that merge to one pass, and unreadable items counted, never fatal."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from conftest import EM_DIR

from raysegment.eval.stats import BandStats, compute_stats
from raysegment.io.decoders import decode

HIPPO = EM_DIR.parent / "msd_task04_hippocampus" / "imagesTr"


def _rank(values: np.ndarray, v: float) -> tuple[float, float]:
    """The fractions of ``values`` below and at most ``v``: a percentile's true rank lies between."""
    return float((values < v).mean()), float((values <= v).mean())


def _check_against_numpy(stats: dict, values: np.ndarray) -> None:
    band = stats["bands"][0]
    assert band["count"] == values.size and (band["min"], band["max"]) == (values.min(), values.max())
    assert band["mean"] == pytest.approx(values.mean(), rel=1e-9)
    assert band["std"] == pytest.approx(values.std(), rel=1e-9)
    eps = stats["percentile_rank_error"]
    assert 0 < eps < 0.02  # KLL k=200: about 1.3 %
    for p in (2, 25, 50, 75, 98):
        below, at_most = _rank(values, band["percentiles"][2 * p])
        assert below - eps <= p / 100 <= at_most + eps, (p, below, at_most, eps)


@pytest.mark.usefixtures("ray_local")
def test_em_stats_match_numpy_and_bad_items_are_counted(tmp_path: Path) -> None:
    images = sorted((EM_DIR / "train" / "image").glob("*.png"))[:12]
    if not images:
        pytest.skip(f"shared data not present: {EM_DIR}")
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    stats = compute_stats([str(p) for p in images] + [str(bad)])
    values = np.concatenate([decode(str(p), p.read_bytes(), "image").data.ravel() for p in images]).astype(np.float64)
    _check_against_numpy(stats, values)
    assert (stats["items"], stats["failed"], stats["dtypes"]) == (12, 1, ["uint8"])
    assert stats["problems"][0].startswith(str(bad))


@pytest.mark.usefixtures("ray_local")
def test_volume_stats_through_the_nifti_decoder() -> None:
    volumes = sorted(HIPPO.glob("hippocampus_00[3467].nii.gz"))
    if len(volumes) < 4:
        pytest.skip(f"shared data not present: {HIPPO}")
    stats = compute_stats([str(p) for p in volumes], modality="volume")
    values = np.concatenate([decode(str(p), p.read_bytes(), "volume").data.ravel() for p in volumes]).astype(np.float64)
    _check_against_numpy(stats, values)
    assert stats["modality"] == "volume" and stats["items"] == 4


def test_partials_merge_to_one_pass_and_survive_pickling() -> None:
    rng = np.random.default_rng(0)
    items = [rng.normal(1000 * i, 50 + i, (30, 40, 3)) for i in range(5)]
    whole = BandStats()
    for item in items:
        whole.update(item)
    left, right = BandStats(), BandStats()
    for item in items[:2]:
        left.update(item)
    for item in items[2:]:
        right.update(item)
    merged = pickle.loads(pickle.dumps(left)).merge(pickle.loads(pickle.dumps(right)))
    a, b = whole.to_json(), merged.to_json()
    for x, y in zip(a, b):
        assert x["count"] == y["count"] == 5 * 30 * 40 and (x["min"], x["max"]) == (y["min"], y["max"])
        assert x["mean"] == pytest.approx(y["mean"], rel=1e-12) and x["std"] == pytest.approx(y["std"], rel=1e-12)
    with pytest.raises(ValueError, match="item has 1 band.* earlier items have 3"):
        whole.update(np.zeros((4, 4, 1)))


@pytest.mark.usefixtures("ray_local")
def test_cli_stats_writes_json_and_a_bad_input_is_one_line(tmp_path: Path) -> None:
    import json
    import shutil

    from click.testing import CliRunner

    from raysegment.cli import main

    if not (EM_DIR / "train" / "image").is_dir():
        pytest.skip(f"shared data not present: {EM_DIR}")
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(3):
        shutil.copy(EM_DIR / "train" / "image" / f"{i}.png", folder / f"{i}.png")
    out = tmp_path / "stats.json"
    result = CliRunner().invoke(main, ["stats", str(folder), "--out", str(out)])
    assert result.exit_code == 0, result.output
    stats = json.loads(out.read_text())
    assert stats["items"] == 3 and stats["bands"][0]["count"] == 3 * 512 * 512
    assert any(line.startswith("band 0: n 786432  min ") for line in result.output.splitlines())
    bad = CliRunner().invoke(main, ["stats", str(tmp_path / "nowhere")])
    assert bad.exit_code == 1 and bad.output == f"error: input not found: {tmp_path / 'nowhere'}\n"
