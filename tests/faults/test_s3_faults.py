"""Object storage that fails: S3 through a fault-injecting proxy in front of moto.

The proxy (tests/faults/conftest.py) answers ``503 Slow Down`` / ``503 Service Unavailable``
with S3's XML error body and drops connections, before the request reached the store or after
it (the reply cut), at seeded rates and at chosen steps. The promise under test: every input
item is one row, exactly once, stamped with the run's id, or the run fails in one clear line
and ``--resume`` through a healthy store then finishes it exactly once.

The Python API runs reach the proxy through ``storage_options`` (which travel with the
stages to every Ray worker of the shared session Ray); the command line runs in its own
process with its own embedded Ray, its workers seeing the proxy through ``AWS_ENDPOINT_URL``.
Inputs are uploaded and outputs read back straight from moto, never through the proxy.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from conftest import png_bytes

from raysegment.errors import describe_fatal
from raysegment.infer.pipeline import InferenceConfig, run_inference
from raysegment.output.root import OutputError, read_output
from raysegment.runtime import describe_failure

ROOT = Path(__file__).resolve().parents[2]
ITEMS = 6
SHARD = 2
PARAMS = {"depth": 2, "base_channels": 4}
#: botocore's attempts per request where a test fails one step on purpose (its default is 5, with
#: backoff: seconds per failed step).
TRIES = 2


@pytest.fixture
def inputs(s3_bucket: str) -> list[str]:
    """Six small real PNGs uploaded straight to moto; their URIs in listing (= index) order."""
    import s3fs

    fs = s3fs.S3FileSystem()
    uris = []
    for i in range(ITEMS):
        image = np.random.default_rng(i).integers(0, 255, (64, 64), dtype=np.uint8)
        fs.pipe(f"{s3_bucket}/images/img-{i:02d}.png", png_bytes(image))
        uris.append(f"s3://{s3_bucket}/images/img-{i:02d}.png")
    return uris


def _config(bucket: str, proxy: Any, *, tries: int | None = None, **kw: object) -> InferenceConfig:
    """The run, its storage through ``proxy``; ``tries``: botocore's attempts per request in all
    (default: botocore's own, 5), fewer where a test fails one step on purpose."""
    options: dict[str, Any] = {"endpoint_url": proxy.url}
    if tries is not None:
        options["config_kwargs"] = {"retries": {"total_max_attempts": tries, "mode": "standard"}}
    return InferenceConfig(input=f"s3://{bucket}/images", output=f"s3://{bucket}/masks", model="unet",
                           params=PARAMS, batch_size=2, shard_size=SHARD, storage_options=options, **kw)


def _fatal_line(exc: BaseException) -> str:
    """What the command line prints for ``exc`` after ``error: `` (raysegment/cli.py ``_fail``)."""
    return describe_fatal(exc, describe_failure(exc))


def _exactly_once(bucket: str, uris: list[str], *, released: bool = True) -> pa.Table:
    """The output, read back from moto: one row per item by uri and index, all of the manifest's
    run, one part per shard, ``_SUCCESS`` written and (``released``) the lease released: the
    release is best effort, so a run that ended under heavy faults may leave it to expire."""
    import s3fs

    fs = s3fs.S3FileSystem()
    fs.invalidate_cache()
    table = read_output(f"s3://{bucket}/masks")
    pairs = list(zip(table.column("uri").to_pylist(), table.column("index").to_pylist()))
    assert pairs == list(zip(uris, range(len(uris)))), pairs
    manifest = json.loads(fs.cat(f"{bucket}/masks/_raysegment.json"))
    assert set(table.column("run_id").to_pylist()) == {manifest["run_id"]}
    names = {p.rsplit("/", 1)[-1] for p in fs.ls(f"{bucket}/masks")}
    assert {n for n in names if n.startswith("part-")} == {f"part-{s:06d}.parquet" for s in range(ITEMS // SHARD)}
    assert "_SUCCESS" in names, names
    newest = sorted(fs.ls(f"{bucket}/masks/_lease"))[-1]
    assert json.loads(fs.cat(newest))["released"] or not released
    return table


def _transient_error_rows(table: pa.Table) -> list[str]:
    """The error rows' texts, each checked to be a storage read of its own item worth retrying."""
    rows = [r for r in table.select(["uri", "status", "error"]).to_pylist() if r["status"] != "ok"]
    for row in rows:
        assert row["error"].startswith(f"cannot read {row['uri']}: ") and "retry later" in row["error"], row
        assert "\n" not in row["error"], row
    return [r["error"] for r in rows]


def _report(name: str, proxy: Any) -> None:
    counts = {k: proxy.counts[k] for k in ("requests", *proxy.KINDS)}
    print(f"\n{name}: {counts}")  # seen with -s; the numbers the docs quote


# -- 1. a low rate: retries absorb it -----------------------------------------------------------
@pytest.mark.usefixtures("ray_local")
def test_a_low_rate_of_503s_and_drops_is_absorbed_exactly_once(faulty_s3, s3_bucket: str,
                                                                inputs: list[str]) -> None:
    proxy = faulty_s3(seed=5)
    proxy.set_rates(rate_503=0.05, rate_drop=0.03)
    # Beside the random faults, one of each kind at a step a Ray worker takes, so every kind is
    # met where it matters and the workers are shown to go through the proxy.
    steps = [("GET", "/images/img-", "slow_down"), ("GET", "/images/img-", "drop_after"),
             ("PUT", "/_staging/.frag-", "drop_before"), ("PUT", "/_staging/shard-", "drop_after"),
             ("PUT", "/masks/part-0", "unavailable")]
    for step in steps:
        proxy.add_rule(*step)
    summary = run_inference(_config(s3_bucket, proxy))
    _report("low rate", proxy)
    assert (summary.items, summary.ok, summary.failed) == (ITEMS, ITEMS, 0)
    _exactly_once(s3_bucket, inputs)
    assert proxy.rules_left() == []  # each worker step was taken through the proxy
    assert all(proxy.counts[kind] > 0 for kind in proxy.KINDS), proxy.counts
    assert proxy.injected() > len(steps), proxy.faulted  # the random faults happened too


# -- 2. a high rate, through the command line: exactly once, or one line and --resume -----------
def _cli(*args: str, endpoint: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAYSEGMENT_DEBUG", "RAY_ADDRESS"))}
    # botocore's standard retry mode, 3 attempts: the same failures sooner than the legacy
    # mode's 5 attempts with their longer backoff (the command line run's time is mostly backoff).
    env |= {"AWS_ENDPOINT_URL": endpoint, "AWS_RETRY_MODE": "standard", "AWS_MAX_ATTEMPTS": "3"}
    return subprocess.run([sys.executable, "-m", "raysegment.cli", *args], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=420)


@pytest.mark.slow
def test_a_high_rate_finishes_exactly_once_or_fails_in_one_line_and_resume_finishes(
        faulty_s3, s3_bucket: str, inputs: list[str]) -> None:
    proxy = faulty_s3(seed=11)
    proxy.set_rates(rate_503=0.4, rate_drop=0.2)
    args = ("infer", f"s3://{s3_bucket}/images", f"s3://{s3_bucket}/masks", "--model", "unet",
            "--param", "depth=2", "--param", "base_channels=4", "--batch-size", "2", "--shard-size", str(SHARD))
    first = _cli(*args, endpoint=proxy.url)
    _report(f"high rate (exit {first.returncode})", proxy)
    assert proxy.injected() > 0, proxy.counts
    assert "Traceback" not in first.stderr, first.stderr
    if first.returncode == 1:  # a clear failure: one line, then --resume through a healthy store finishes
        # What the line says of the failed step is checked step by step below, where it is known.
        assert len([x for x in first.stderr.splitlines() if x.startswith("error:")]) == 1, first.stderr
        proxy.set_rates(0.0, 0.0)
        done = _cli(*args, "--resume", endpoint=proxy.url)
        assert "Traceback" not in done.stderr, done.stderr
    else:
        done = first
    # Finished: exactly once; an item whose read never got through is an error row saying so (exit 3).
    assert done.returncode in (0, 3), done.stderr
    errors = _transient_error_rows(_exactly_once(s3_bucket, inputs, released=done is not first))
    assert bool(errors) == (done.returncode == 3), (done.returncode, errors)


# -- 3. one fault at one step: what a run that met it leaves, and what it says ------------------
@pytest.mark.usefixtures("ray_local")
def test_a_lost_reply_to_the_lease_create_does_not_make_the_run_refuse_itself(
        faulty_s3, s3_bucket: str, inputs: list[str]) -> None:
    proxy = faulty_s3()
    proxy.add_rule("PUT", "/masks/_lease/gen-000001.json", "drop_after")
    summary = run_inference(_config(s3_bucket, proxy, tries=TRIES))
    assert proxy.rules_left() == []
    assert summary.ok == ITEMS
    _exactly_once(s3_bucket, inputs)


@pytest.mark.usefixtures("ray_local")
def test_a_run_that_failed_writing_its_manifest_can_be_run_again(
        faulty_s3, s3_bucket: str, inputs: list[str]) -> None:
    proxy = faulty_s3()
    proxy.add_rule("PUT", "/masks/_staging/._raysegment.json", "unavailable", times=TRIES)  # every try
    with pytest.raises(OutputError) as info:
        run_inference(_config(s3_bucket, proxy, tries=TRIES))
    line = _fatal_line(info.value)
    assert line.startswith(f"cannot write output s3://{s3_bucket}/masks: ") and "\n" not in line, line
    assert proxy.rules_left() == []
    summary = run_inference(_config(s3_bucket, proxy, tries=TRIES))  # the same command again
    assert summary.ok == ITEMS
    _exactly_once(s3_bucket, inputs)


@pytest.mark.usefixtures("ray_local")
def test_a_resume_whose_manifest_read_fails_says_so_and_keeps_the_run(
        faulty_s3, s3_bucket: str, inputs: list[str]) -> None:
    import s3fs

    proxy = faulty_s3()
    # A first run that stops after its manifest, before Ray: the look at shard 0's staging fails.
    proxy.add_rule("HEAD", "/masks/_staging/shard-000000", "unavailable", times=TRIES)
    with pytest.raises(OSError):
        run_inference(_config(s3_bucket, proxy, tries=TRIES))
    run_id = json.loads(s3fs.S3FileSystem().cat(f"{s3_bucket}/masks/_raysegment.json"))["run_id"]
    proxy.add_rule("GET", "/masks/_raysegment.json", "unavailable", times=1000)  # the store keeps failing it
    with pytest.raises(Exception) as info:
        run_inference(_config(s3_bucket, proxy, tries=TRIES, resume=True))
    line = _fatal_line(info.value)
    assert "differs" not in line and f"s3://{s3_bucket}/masks/_raysegment.json" in line, line
    assert "HTTP 503" in line and "--resume" in line, line
    proxy.clear_rules()
    proxy.add_rule("GET", "/masks/_raysegment.json", "unavailable", times=TRIES)  # one read fails, the next works
    try:
        run_inference(_config(s3_bucket, proxy, tries=TRIES, resume=True))
    except Exception as exc:  # noqa: BLE001 - either is right, as long as the run keeps its id
        assert "differs" not in _fatal_line(exc), _fatal_line(exc)
    run_inference(_config(s3_bucket, proxy, tries=TRIES, resume=True))
    assert set(_exactly_once(s3_bucket, inputs).column("run_id").to_pylist()) == {run_id}


def _worker_step(step: str) -> Any:
    return pytest.param(step, marks=pytest.mark.slow, id=step)


@pytest.mark.usefixtures("ray_local")
@pytest.mark.parametrize("step", ["list input", "probe output", _worker_step("stage fragment"),
                                  _worker_step("commit part")])
def test_a_step_the_store_keeps_failing_is_named_in_one_line(
        step: str, faulty_s3, s3_bucket: str, inputs: list[str]) -> None:
    where, method, path = {
        "list input": (f"s3://{s3_bucket}/images", "GET", "list-type=2&prefix=images"),
        "probe output": (f"s3://{s3_bucket}/masks", "HEAD", f"/{s3_bucket}/masks"),
        "stage fragment": (f"s3://{s3_bucket}/masks", "PUT", "/masks/_staging/.frag-"),
        "commit part": (f"s3://{s3_bucket}/masks", "PUT", "/masks/part-000000.parquet"),
    }[step]
    proxy = faulty_s3()
    proxy.add_rule(method, path, "unavailable", times=TRIES)  # every try
    with pytest.raises(Exception) as info:
        run_inference(_config(s3_bucket, proxy, tries=TRIES))
    assert proxy.rules_left() == []
    line = _fatal_line(info.value)
    assert "\n" not in line and "Errno" not in line, line
    assert where in line and "HTTP 503" in line and "--resume" in line, line
    proxy.clear_rules()
    run_inference(_config(s3_bucket, proxy, resume=True))
    _exactly_once(s3_bucket, inputs)


@pytest.mark.usefixtures("ray_local")
def test_resume_redoes_only_the_items_whose_read_outlasted_the_retries(
        faulty_s3, s3_bucket: str, inputs: list[str], caplog: pytest.LogCaptureFixture) -> None:
    """Every try of one item's read answered 503: the run finishes with that item an error row
    worth retrying; `--resume` reopens its shard, keeps the shard's other row and redoes that item
    alone (a resume used to count committed shards as done, so only --overwrite retried it)."""
    proxy = faulty_s3()
    proxy.add_rule("GET", "/images/img-03.png", "unavailable", times=TRIES)  # every try of that read
    first = run_inference(_config(s3_bucket, proxy, tries=TRIES))
    assert (first.ok, first.failed) == (ITEMS - 1, 1) and proxy.rules_left() == []
    (error,) = _transient_error_rows(read_output(f"s3://{s3_bucket}/masks"))
    assert inputs[3] in error and "HTTP 503" in error, error
    kept = read_output(f"s3://{s3_bucket}/masks").filter(pc.not_equal(pc.field("index"), 3))
    caplog.set_level("WARNING", logger="raysegment")
    again = run_inference(_config(s3_bucket, proxy, resume=True))
    assert "redoing 1 item(s) whose storage read failed in an earlier attempt" in caplog.text
    assert (again.rows_written, again.ok, again.failed) == (1, ITEMS, 0)
    table = _exactly_once(s3_bucket, inputs)
    assert table.filter(pc.not_equal(pc.field("index"), 3)).select(["index", "segments"]).equals(
        kept.select(["index", "segments"]))  # the other items' rows are the first run's, not redone
    again_again = run_inference(_config(s3_bucket, proxy, resume=True))  # nothing left to retry
    assert again_again.rows_written == 0
