"""The sharded Parquet sink without Ray: fragments, atomic commit, de-duplication, sweeps."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raysegment.output.schema import OUTPUT_SCHEMA
from raysegment.output.sink import IncompleteOutputError, ShardedParquetSink, part_name


def rows(shard: int, indices: list[int]) -> pa.Table:
    return pa.Table.from_pylist(
        [{"uri": f"img-{i}.png", "index": i, "shard": shard, "status": "ok", "height": 4, "width": 4, "segments": []}
         for i in indices],
        schema=OUTPUT_SCHEMA,
    )


class _Result:
    def __init__(self, returns: list[list[int]]):
        self.write_returns = returns


def test_a_shard_commits_only_when_complete(tmp_path: Path) -> None:
    sink = ShardedParquetSink(str(tmp_path), {0: range(0, 4), 1: range(4, 6)})
    assert sink.write([rows(0, [0, 1]), rows(1, [4])], None) == []
    assert not list(tmp_path.glob("part-*"))  # nothing half-done is visible
    assert sink.write([rows(0, [2, 3])], None) == [0]
    assert pq.read_table(tmp_path / part_name(0)).column("index").to_pylist() == [0, 1, 2, 3]
    assert sink.write([rows(1, [5])], None) == [1]
    assert sorted(p.name for p in tmp_path.glob("part-*")) == [part_name(0), part_name(1)]
    assert not list((tmp_path / "_staging").rglob("*.parquet"))


def test_retried_rows_are_written_once(tmp_path: Path) -> None:
    sink = ShardedParquetSink(str(tmp_path), {0: range(0, 3)})
    sink.write([rows(0, [0, 1])], None)
    sink.write([rows(0, [1, 2])], None)  # a retried task re-sends index 1
    table = pq.read_table(tmp_path / part_name(0))
    assert table.column("index").to_pylist() == [0, 1, 2]


def test_a_short_shard_fails_the_run_loudly(tmp_path: Path) -> None:
    sink = ShardedParquetSink(str(tmp_path), {0: range(0, 2), 1: range(2, 4)})
    committed = sink.write([rows(0, [0, 1]), rows(1, [2])], None)
    with pytest.raises(IncompleteOutputError, match="1 shard"):
        sink.on_write_complete(_Result([committed]))


def test_wrong_indices_never_commit(tmp_path: Path) -> None:
    sink = ShardedParquetSink(str(tmp_path), {0: range(0, 2)})
    assert sink.write([rows(0, [0, 7])], None) == []  # two rows, but not the two expected
    assert not (tmp_path / part_name(0)).exists()


def test_rows_written_counts_staged_fragments_and_committed_parts(tmp_path: Path) -> None:
    """What the driver's progress bar polls while Ray Data writes: from file names alone, never over the total."""
    sink = ShardedParquetSink(str(tmp_path / "out"), {0: range(0, 4), 1: range(4, 6)})
    assert sink.rows_written() == 0  # the root does not exist yet
    sink.write([rows(0, [0, 1]), rows(1, [4])], None)
    assert sink.rows_written() == 3  # staged fragments
    sink.write([rows(0, [2, 3])], None)
    assert (tmp_path / "out" / part_name(0)).exists()
    assert sink.rows_written() == 5  # shard 0 committed (4) + a fragment of shard 1 (1)
    sink.write([rows(1, [4])], None)  # a retried task's duplicate fragment
    assert sink.rows_written() == 6
    sink.write([rows(1, [5])], None)
    assert sink.rows_written() == 6  # both committed: exactly the total
