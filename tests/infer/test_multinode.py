"""Joining an existing multi-node Ray cluster (ray.cluster_utils.Cluster) with --address.

Runs in a subprocess: the cluster needs a driver of its own, apart from the
session's local Ray.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SCRIPT = textwrap.dedent(
    """
    import json, subprocess, sys
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    for _ in range(2):
        cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "raysegment.cli", "infer", sys.argv[1], sys.argv[2], "--checkpoint", sys.argv[3],
             "--address", cluster.address, "--actors", "2", "--batch-size", "2", "--shard-size", "3"],
            capture_output=True, text=True, timeout=400)
        ray.init(address=cluster.address)
        nodes = len([n for n in ray.nodes() if n["Alive"]])
        ray.shutdown()
        print(json.dumps({"rc": proc.returncode, "out": proc.stdout, "err": proc.stderr[-3000:], "nodes": nodes}))
    finally:
        cluster.shutdown()
    """
)


@pytest.mark.slow
def test_infer_joins_a_three_node_cluster(em_images: Path, unet_checkpoint: str, tmp_path: Path) -> None:
    import pandas as pd

    inputs = tmp_path / "in"
    inputs.mkdir()
    for path in sorted(em_images.iterdir())[:8]:
        (inputs / path.name).write_bytes(path.read_bytes())
    script = tmp_path / "cluster.py"
    script.write_text(SCRIPT)
    proc = subprocess.run([sys.executable, str(script), str(inputs), str(tmp_path / "out"), unet_checkpoint],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["nodes"] == 3
    assert result["rc"] == 0, result["err"]
    assert "2 predictor actor(s)" not in result["err"]  # the summary goes to stdout, not errors
    assert "items 8  ok 8  failed 0" in result["out"]
    df = pd.read_parquet(tmp_path / "out")
    assert len(df) == 8 and df["index"].is_unique and sorted(df["shard"].unique()) == [0, 1, 2]
