"""End to end through real local Ray: inputs in, Parquet out, every item accounted for."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from conftest import SMALL_UNET, write_bad_inputs

from raysegment.infer.pipeline import InferenceConfig, run_inference
from raysegment.io.decoders import decode
from raysegment.masks.rle import row_label_map
from raysegment.output.lease import Fence
from raysegment.output.root import OutputError, read_output
from raysegment.output.schema import OUTPUT_SCHEMA
from raysegment.output.sink import ShardedParquetSink
from raysegment.plugin.checkpoint import load_checkpoint
from raysegment.plugin.contract import Modality
from raysegment.plugin.registry import get_registry

pytestmark = pytest.mark.usefixtures("ray_local")


def _config(inp: str | Path, out: str | Path, checkpoint: str, **kw) -> InferenceConfig:
    kw.setdefault("batch_size", 4)
    kw.setdefault("shard_size", 4)
    return InferenceConfig(input=str(inp), output=str(out), checkpoint=checkpoint, **kw)


@pytest.fixture(scope="module")
def em_subset(em_images: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Ten real EM slices (a copy, so tests can add files beside them)."""
    folder = tmp_path_factory.mktemp("em")
    for name in sorted(em_images.iterdir(), key=lambda p: int(p.stem))[:10]:
        shutil.copy(name, folder / name.name)
    return folder


@pytest.fixture(scope="module")
def em_run(em_subset: Path, unet_checkpoint: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("out") / "masks"
    return out, run_inference(_config(em_subset, out, unet_checkpoint))


def test_every_item_has_one_row_readable_by_pyarrow_pandas_and_duckdb(em_run, em_subset: Path) -> None:
    out, summary = em_run
    inputs = sorted(str(p) for p in em_subset.iterdir())
    assert (summary.items, summary.ok, summary.failed, summary.rows_written) == (10, 10, 0, 10)
    table = pq.read_table(out)  # the directory as a dataset; _-prefixed files are skipped
    assert table.schema.remove_metadata().equals(OUTPUT_SCHEMA.remove_metadata())
    assert sorted(table.column("uri").to_pylist()) == inputs
    df = pd.read_parquet(out)
    assert len(df) == 10 and set(df["status"]) == {"ok"} and df["error"].isna().all()
    assert (df["height"] == 512).all() and (df["width"] == 512).all()
    counts = duckdb.sql(f"select count(*), count(distinct uri) from read_parquet('{out}/part-*.parquet')").fetchall()[0]
    assert counts == (10, 10)
    assert sorted(p.name for p in out.glob("part-*.parquet")) == [f"part-{i:06d}.parquet" for i in range(3)]
    assert (out / "_SUCCESS").exists() and not (out / "_staging").exists()


def test_masks_round_trip_and_match_a_plain_forward(em_run, unet_checkpoint: str) -> None:
    """RLE decoded with pycocotools equals the arg-max of the same weights run directly."""
    out, _ = em_run
    row = read_output(str(out)).slice(0, 1).to_pylist()[0]
    ckpt = load_checkpoint(unet_checkpoint)
    assert row["model"]["name"] == "unet" and row["model"]["checkpoint_sha256"] == ckpt.sha256
    plugin = get_registry().create("unet", ckpt.params)
    module = plugin.build().eval()
    module.load_state_dict(ckpt.state_dict)
    sample = decode(row["uri"], Path(row["uri"]).read_bytes(), Modality.IMAGE)
    with torch.inference_mode():
        logits = module(torch.from_numpy(plugin.preprocess(sample))[None])
    expected = logits.argmax(1)[0].numpy()
    labels = row_label_map(row)
    assert labels.shape == (512, 512) and (labels >= 0).all()  # the segments tile the image
    assert np.array_equal(labels, expected)
    names = {s["label"]: s["label_name"] for s in row["segments"]}
    assert set(names.values()) <= {"cell", "membrane"}
    for seg in row["segments"]:
        mask = labels == seg["label"]
        assert seg["area"] == int(mask.sum())
        ys, xs = np.nonzero(mask)
        assert list(seg["bbox"]) == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]


def test_bad_inputs_become_error_rows_and_the_job_goes_on(
    em_images: Path, unet_checkpoint: str, tmp_path: Path
) -> None:
    folder = tmp_path / "in"
    expected = write_bad_inputs(folder)
    for name in sorted(em_images.iterdir())[:3]:
        shutil.copy(name, folder / name.name)
    summary = run_inference(_config(folder, tmp_path / "out", unet_checkpoint, shard_size=3))
    df = pd.read_parquet(tmp_path / "out").set_index("uri")
    assert len(df) == len(expected) + 3 == summary.items
    assert (summary.ok, summary.failed) == (3, len(expected))
    for name, word in expected.items():
        row = df.loc[str(folder / name)]
        assert row["status"] == "error" and word in row["error"], (name, row["error"])
        assert row["segments"] is None and pd.isna(row["height"])
    ok = df[df["status"] == "ok"]
    assert len(ok) == 3 and ok["error"].isna().all()


def test_resume_redoes_only_missing_shards_and_writes_nothing_twice(
    em_subset: Path, unet_checkpoint: str, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    run_inference(_config(em_subset, out, unet_checkpoint))
    parts = sorted(out.glob("part-*.parquet"))
    before = {p.name: p.stat().st_mtime_ns for p in parts}
    # As if the run died before committing shard 1 (items 4-7), having staged items 4 and 5: the
    # resume keeps those (marked here in `meta`) and runs only 6 and 7.
    finished = pq.read_table(parts[1]).slice(0, 2)
    finished = finished.set_column(finished.schema.get_field_index("meta"), "meta", pa.array(['{"kept": 1}'] * 2))
    run_id = json.loads((out / "_raysegment.json").read_text())["run_id"]
    ShardedParquetSink(str(out), {1: range(4, 8)}, fence=Fence("unused", "a killed attempt", run_id, "out")).stage(finished)
    parts[1].unlink()
    (out / "_SUCCESS").unlink()
    summary = run_inference(_config(em_subset, out, unet_checkpoint, resume=True))
    assert (summary.rows_written, summary.shards_skipped, summary.rows_total) == (2, 2, 10)
    shard = pq.read_table(out / "part-000001.parquet")
    assert shard.column("index").to_pylist() == [4, 5, 6, 7]
    assert [m == '{"kept": 1}' for m in shard.column("meta").to_pylist()] == [True, True, False, False]
    assert set(shard.column("run_id").to_pylist()) == {run_id}
    after = {p.name: p.stat().st_mtime_ns for p in out.glob("part-*.parquet")}
    assert after.keys() == before.keys()
    assert [after[n] == before[n] for n in sorted(before)] == [True, False, True]
    df = pd.read_parquet(out)
    assert len(df) == 10 and df["index"].is_unique and df["uri"].is_unique
    again = run_inference(_config(em_subset, out, unet_checkpoint, resume=True))
    assert again.rows_written == 0 and again.rows_total == 10


def test_existing_output_needs_resume_or_overwrite(em_run, em_subset: Path, unet_checkpoint: str, tmp_path: Path) -> None:
    out, _ = em_run
    with pytest.raises(OutputError, match="--resume"):
        run_inference(_config(em_subset, out, unet_checkpoint))
    with pytest.raises(OutputError, match="shard size"):
        run_inference(_config(em_subset, out, unet_checkpoint, resume=True, shard_size=5))
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("not ours")
    with pytest.raises(OutputError, match="not empty"):
        run_inference(_config(em_subset, foreign, unet_checkpoint, overwrite=True))
    assert (foreign / "keep.txt").exists()


def test_s3_in_and_out_through_moto(em_subset: Path, unet_checkpoint: str, s3_bucket: str) -> None:
    import s3fs

    fs = s3fs.S3FileSystem()
    for name in sorted(em_subset.iterdir())[:3]:
        fs.put(str(name), f"{s3_bucket}/images/{name.name}")
    fs.put(unet_checkpoint, f"{s3_bucket}/ckpt/unet.pt")
    summary = run_inference(
        InferenceConfig(input=f"s3://{s3_bucket}/images", output=f"s3://{s3_bucket}/masks",
                        checkpoint=f"s3://{s3_bucket}/ckpt/unet.pt", batch_size=2, shard_size=2)
    )
    assert (summary.items, summary.ok) == (3, 3)
    table = read_output(f"s3://{s3_bucket}/masks")
    assert table.column("uri").to_pylist() == [f"s3://{s3_bucket}/images/{p.name}" for p in sorted(em_subset.iterdir())[:3]]
    fs.invalidate_cache()
    assert sorted(p.rsplit("/", 1)[-1] for p in fs.ls(f"{s3_bucket}/masks")) == [
        "_SUCCESS", "_lease", "_raysegment.json", "part-000000.parquet", "part-000001.parquet"
    ]
    # the run's lease was taken by S3's conditional put and released at the end
    record = json.loads(fs.cat(f"{s3_bucket}/masks/_lease/gen-000001.json"))
    assert record["released"] and record["run_id"] == json.loads(fs.cat(f"{s3_bucket}/masks/_raysegment.json"))["run_id"]
    assert "testing" not in fs.cat(f"{s3_bucket}/masks/_raysegment.json").decode()


def test_random_weights_without_checkpoint(em_subset: Path, tmp_path: Path) -> None:
    summary = run_inference(
        InferenceConfig(input=str(sorted(em_subset.iterdir())[0]), output=str(tmp_path / "o"), model="unet",
                        params={**SMALL_UNET, "num_classes": "3"})
    )
    row = read_output(str(tmp_path / "o")).to_pylist()[0]
    assert summary.ok == 1 and row["model"]["checkpoint_sha256"] is None
    assert {s["label"] for s in row["segments"]} <= {0, 1, 2}


def test_memory_filesystem_input(em_subset: Path, unet_checkpoint: str, tmp_path: Path) -> None:
    """memory:// lives in the driver only; its bytes travel with the items to the workers."""
    import fsspec

    fs = fsspec.filesystem("memory")
    names = sorted(em_subset.iterdir())[:2]
    for path in names:
        fs.pipe(f"/mem-input/{path.name}", path.read_bytes())
    fs.pipe("/mem-input/empty.png", b"")
    summary = run_inference(_config("memory://mem-input", tmp_path / "out", unet_checkpoint))
    df = pd.read_parquet(tmp_path / "out").set_index("uri")
    assert (summary.ok, summary.failed) == (2, 1)
    assert df.loc["memory://mem-input/empty.png", "error"] == "empty file (0 bytes)"
    with pytest.raises(OutputError, match="Ray workers cannot write"):
        run_inference(_config("memory://mem-input", "memory://mem-out", unet_checkpoint))


def test_a_pool_as_large_as_the_cluster_still_leaves_a_cpu_for_decoding(
    em_subset: Path, unet_checkpoint: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Two predictors on the session's two CPUs: with a whole CPU each, no read or decode task could
    ever start (the run stalled until --stall-timeout). They reserve none instead, and with two
    CPUs for three task stages the predictors encode and stage their own batches."""
    caplog.set_level("INFO", logger="raysegment")
    summary = run_inference(_config(em_subset / "*.png", tmp_path / "out", unet_checkpoint, actors=(2, 2),
                                    batch_size=1, shard_size=2, stall_timeout=120))
    assert summary.actors == "2 predictor actor(s), each CPU, 1 threads"
    assert (summary.items, summary.ok) == (10, 10)
    assert "2 CPU actor(s) with " in caplog.text and "they reserve none, so the CPUs stay free" in caplog.text
    assert "the predictor encodes its batches: " in caplog.text
    table = read_output(str(tmp_path / "out"))
    assert sorted(table.column("index").to_pylist()) == list(range(10))
