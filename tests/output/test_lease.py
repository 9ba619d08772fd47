"""One writer per output: the lease (real files, real processes, real S3 protocol) and the sink's fence."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raysegment.io.sources import make_shards
from raysegment.output.lease import LeaseHeld, LeaseLost, acquire_lease, lease_holder
from raysegment.output.root import OutputRoot, RunManifest
from raysegment.output.schema import OUTPUT_SCHEMA
from raysegment.output.sink import ShardedParquetSink, part_name

LOCAL = fsspec.filesystem("file")


def rows(shard: int, indices: list[int]) -> pa.Table:
    return pa.Table.from_pylist(
        [{"uri": f"img-{i}.png", "index": i, "shard": shard, "status": "ok", "height": 4, "width": 4, "segments": []}
         for i in indices], schema=OUTPUT_SCHEMA)


def test_a_live_lease_refuses_a_second_run_and_a_released_one_passes_on(tmp_path: Path) -> None:
    folder = str(tmp_path / "_lease")
    first = acquire_lease(LOCAL, folder, run_id="run-a", shown="output X")
    with pytest.raises(LeaseHeld, match=r"output X is in use by run run-a \(pid \d+ on .*expires in \d+ s\)"):
        acquire_lease(LOCAL, folder, run_id="run-b", shown="output X")
    first.release()
    second = acquire_lease(LOCAL, folder, run_id="run-b", shown="output X")
    assert (second.record.generation, lease_holder(LOCAL, folder).run_id) == (2, "run-b")
    with pytest.raises(LeaseLost):
        first.check()  # released, then taken: the old holder never writes again


def test_an_expired_lease_is_taken_over_and_its_holder_is_fenced(tmp_path: Path) -> None:
    folder, told = str(tmp_path / "_lease"), []
    old = acquire_lease(LOCAL, folder, run_id="old", shown="output X", ttl=60, clock=lambda: 1000.0)
    with pytest.raises(LeaseHeld):  # 30 s later it is still live
        acquire_lease(LOCAL, folder, run_id="new", shown="output X", ttl=60, clock=lambda: 1030.0)
    new = acquire_lease(LOCAL, folder, run_id="new", shown="output X", ttl=60, clock=lambda: 1100.0,
                        on_takeover=told.append)
    assert told == ["taking over output X from run old: its heartbeat stopped 100 s ago"]
    with pytest.raises(LeaseLost, match="run old lost output X to run new"):
        old.renew()
    new.renew()  # the new holder renews fine
    assert lease_holder(LOCAL, folder).holder == new.record.holder


HOLD = """
import sys, time
from fsspec import filesystem
from raysegment.output.lease import acquire_lease
lease = acquire_lease(filesystem("file"), sys.argv[1], run_id="killed", shown="output X")
print("held", flush=True)
sys.stdin.readline()
"""


def test_a_killed_holder_on_this_host_is_taken_over_at_once(tmp_path: Path) -> None:
    folder, told = str(tmp_path / "_lease"), []
    holder = subprocess.Popen([sys.executable, "-c", HOLD, folder], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(LeaseHeld, match="run killed"):
            acquire_lease(LOCAL, folder, run_id="next", shown="output X")
    finally:
        holder.kill()
        holder.wait()
    lease = acquire_lease(LOCAL, folder, run_id="next", shown="output X", on_takeover=told.append)
    assert lease.record.generation == 2
    assert told == [f"taking over output X from run killed: its process {holder.pid} on this host is gone"]


def _race(folder: str, start: multiprocessing.synchronize.Barrier, done: multiprocessing.synchronize.Barrier,
          results: multiprocessing.queues.Queue) -> None:
    start.wait()
    try:
        acquire_lease(LOCAL, folder, run_id=f"racer-{os.getpid()}", shown="output X")
        results.put("won")
    except LeaseHeld:
        results.put("held")
    done.wait()  # stay alive until every racer has tried, so the winner is not taken for dead


def test_of_racing_runs_exactly_one_takes_the_lease(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    n = 6
    start, done, results = ctx.Barrier(n), ctx.Barrier(n), ctx.Queue()
    racers = [ctx.Process(target=_race, args=(str(tmp_path / "_lease"), start, done, results)) for _ in range(n)]
    for p in racers:
        p.start()
    for p in racers:
        p.join(timeout=120)
    outcomes = sorted(results.get(timeout=5) for _ in range(n))
    assert outcomes == ["held"] * (n - 1) + ["won"]
    assert len(list((tmp_path / "_lease").glob("gen-*.json"))) == 1


def test_s3_honours_the_conditional_put_the_lease_relies_on(s3_bucket: str) -> None:
    fs = fsspec.filesystem("s3")
    folder = f"{s3_bucket}/out/_lease"
    lease = acquire_lease(fs, folder, run_id="s3-run", shown="output s3://b/out")
    with pytest.raises(FileExistsError):  # If-None-Match: * on a key that exists
        with fs.open(f"{folder}/gen-000001.json", "xb") as f:
            f.write(b"{}")
    with pytest.raises(LeaseHeld, match="run s3-run"):
        acquire_lease(fs, folder, run_id="other", shown="output s3://b/out")
    lease.release()
    assert json.loads(fs.cat(f"{folder}/gen-000001.json"))["released"] is True


def test_a_fenced_sink_commits_only_its_own_rows_and_never_after_losing(tmp_path: Path) -> None:
    folder = str(tmp_path / "_lease")
    old = acquire_lease(LOCAL, folder, run_id="old", shown="output X", ttl=60, clock=lambda: 1000.0)
    stale = ShardedParquetSink(str(tmp_path), {0: range(0, 2)}, fence=old.fence())
    assert stale.write([rows(0, [0])], None) == []  # a fragment of the old run
    new = acquire_lease(LOCAL, folder, run_id="new", shown="output X", ttl=60, clock=lambda: 2000.0)
    with pytest.raises(LeaseLost, match="run old lost output X"):
        stale.write([rows(0, [1])], None)  # complete now, but it lost the output: no commit
    assert not (tmp_path / part_name(0)).exists()
    sink = ShardedParquetSink(str(tmp_path), {0: range(0, 2)}, fence=new.fence())
    assert sink.write([rows(0, [1])], None) == []  # the old run's two fragments do not count
    assert sink.write([rows(0, [0])], None) == [0]
    part = pq.read_table(tmp_path / part_name(0))
    assert part.column("index").to_pylist() == [0, 1]
    assert set(part.column("run_id").to_pylist()) == {"new"}


def manifest(n: int = 4) -> RunManifest:
    return RunManifest(input="in", num_items=n, shard_size=2, listing_sha256="x", model={"name": "m"})


def test_the_output_root_keeps_its_run_id_on_resume_and_counts_only_its_parts(tmp_path: Path) -> None:
    root = OutputRoot(str(tmp_path / "out"))
    first = root.prepare(manifest(), resume=False, overwrite=False)
    with pytest.raises(LeaseHeld, match=f"is in use by run {first.run_id}"):
        root.prepare(manifest(), resume=False, overwrite=True)  # the case: --overwrite during a live run
    shards = make_shards([f"i{k}" for k in range(4)], 2)
    ShardedParquetSink(root.url, {0: range(0, 2)}, fence=first.fence()).write([rows(0, [0, 1])], None)
    pq.write_table(rows(1, [2, 3]).set_column(OUTPUT_SCHEMA.get_field_index("run_id"), "run_id", pa.array(["intruder"] * 2)), root.join(part_name(1)))
    first.release()
    again = root.prepare(manifest(), resume=True, overwrite=False)
    assert again.run_id == first.run_id == json.loads(Path(root.join("_raysegment.json")).read_text())["run_id"]
    assert root.committed(shards, again.run_id) == {0}  # part 1 is another run's: redone
    assert root.status_counts(again.run_id)[3] == 2
    again.release()
    fresh = root.prepare(manifest(), resume=False, overwrite=True)
    assert fresh.run_id != first.run_id and not list(Path(root.path).glob("part-*"))
