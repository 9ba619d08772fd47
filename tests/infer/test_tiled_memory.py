"""Streaming with bounded memory: a 8192² COG through the tiled stages never costs a whole scene.

The stages run in one fresh process (the same functions the Ray pipeline runs, fed batch by
batch), so its peak RSS is the sum of what every stage holds at once. A whole-scene approach
would hold the image (8192² x 3 B = 192 MiB) or the blended logits (8192² x 3 classes x 4 B =
768 MiB); the streamed one holds a band of columns and the batches in flight.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from geo_fixtures import make_cog

pytest.importorskip("rasterio", reason="needs raysegment[geo]")

SIZE = 8192

SCRIPT = textwrap.dedent(
    """
    import json, resource, sys
    import numpy as np
    from raysegment.io.decoders import DecodeLimits
    from raysegment.plugin.spec import resolve_model
    from raysegment.infer.scene_merger import SceneMerger
    from raysegment.infer.stages import PredictOptions, Predictor
    from raysegment.infer.tiled_stages import Tiling, plan_scene_windows, read_windows

    def peak_mib():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    spec = resolve_model("unet", {"depth": 1, "base_channels": 2, "in_channels": 3, "num_classes": 3}, None, {})
    tiling = Tiling.resolve(spec.plugin(), 512, 64)
    predictor, merger = Predictor(spec, PredictOptions(tiled=True, threads=2)), SceneMerger(spec)
    scene = {"uri": np.array([sys.argv[1]], dtype=object), "index": np.array([0]), "shard": np.array([0], np.int32)}
    windows = plan_scene_windows(scene, spec=spec, tiling=tiling, limits=DecodeLimits())
    before = peak_mib()
    rows = []
    for start in range(0, len(windows["uri"]), 8):
        batch = {k: v[start : start + 8] for k, v in windows.items()}
        rows += merger(predictor(read_windows(batch, spec=spec, limits=DecodeLimits()))).to_pylist()
    (row,) = rows
    print(json.dumps({"before": before, "after": peak_mib(), "status": row["status"], "error": row["error"],
                      "windows": json.loads(row["meta"])["tiling"]["windows"],
                      "area": sum(s["area"] for s in row["segments"] or [])}))
    """
)


def _peak_growth(cog: Path) -> dict:
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(cog)], capture_output=True, text=True, timeout=1200,
                          env={**_env(), "OMP_NUM_THREADS": "2"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["status"] == "ok", result["error"]
    return result


@pytest.mark.slow
def test_an_8k_scene_streams_through_the_tiled_stages_in_bounded_memory(tmp_path: Path) -> None:
    """Peak RSS growth at 8192² against 4096²: a quarter of the pixels, nearly the same memory.

    Streaming holds a band of 512 columns x the scene height (x 4 float32 buffers), the batch
    of windows in flight and the model's activations, so doubling the side adds about
    512 x 4096 x 16 B = 32 MiB per copy of the band. Holding the scene would add the extra
    three quarters of its logits and pixels: (8192² - 4096²) x 15 B = 720 MiB.
    """
    small = _peak_growth(make_cog(tmp_path / "scene-4k.tif", SIZE // 2))
    large = _peak_growth(make_cog(tmp_path / "scene-8k.tif", SIZE))
    assert large["windows"] == 19 * 19 and small["windows"] == 9 * 9
    assert 0 < large["area"] <= SIZE * SIZE  # nodata corners of the footprint belong to no segment
    grown = (large["after"] - large["before"]) - (small["after"] - small["before"])
    assert grown < 250, f"peak RSS grew {grown:.0f} MiB more at 8192² than at 4096²: memory follows the scene"


def _env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
