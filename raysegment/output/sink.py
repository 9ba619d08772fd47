"""A Ray Data ``Datasink`` that writes one Parquet file per input shard, atomically.

Rows of one shard reach the sink spread over many write tasks. Each batch's
rows are written as *fragments* under ``_staging/shard-NNNNNN/`` (every file
first under a temporary name, then renamed; named with the run id), by the encode
stage as each batch finishes (:meth:`ShardedParquetSink.stage`) or by the write task,
which then tries to commit the shards it touched: once a shard's fragments hold every one of its item
indices, they are merged, sorted and de-duplicated by index, written to a
temporary file and renamed to ``part-NNNNNN.parquet``. A reader never sees a
half file, a retried task can never duplicate a row, and the commit is
idempotent, so two tasks racing to commit the same shard write the same bytes.
``on_write_complete`` sweeps once more and fails loudly if a shard is short.
"""

from __future__ import annotations

import dataclasses
import io
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from ray.data.block import Block
from ray.data.datasource import Datasink
from ray.data.datasource.datasink import WriteResult

from raysegment.output.atomic import write_atomic
from raysegment.output.lease import Fence
from raysegment.output.schema import OUTPUT_SCHEMA
from raysegment.uri import storage_step

__all__ = ["ShardedParquetSink", "part_name", "STAGING", "IncompleteOutputError"]

STAGING = "_staging"


class IncompleteOutputError(RuntimeError):
    """A shard could not be committed with all of its rows: something was lost."""


def part_name(shard: int) -> str:
    return f"part-{shard:06d}.parquet"


def staging_dir(shard: int) -> str:
    return f"{STAGING}/shard-{shard:06d}"


@dataclasses.dataclass
class _Layout:
    """Paths under the output root, and atomic writes there."""

    root: str
    storage_options: dict[str, Any]

    @property
    def fs(self) -> fsspec.AbstractFileSystem:
        fs, _ = fsspec.core.url_to_fs(self.root, **self.storage_options)
        return fs

    def path(self, relative: str) -> str:
        _, root = fsspec.core.url_to_fs(self.root, **self.storage_options)
        return root.rstrip("/") + "/" + relative

    def write_atomic(self, relative: str, table: pa.Table) -> None:
        buf = io.BytesIO()
        pq.write_table(table, buf, compression="zstd")
        write_atomic(self.fs, self.path(relative), buf.getvalue(), staging=self.path(STAGING))


def _fragment_rows(path: str) -> int:
    return int(path.rsplit("/", 1)[-1].split("-")[1])


class ShardedParquetSink(Datasink[list[int]]):
    """Commit each shard as soon as all its rows have been written.

    ``expected`` maps shard id -> the item indices the shard must hold.
    ``write`` returns the shards it committed. With a ``fence`` (the run's lease, see
    output/lease.py) every row is stamped with the run id, only this run's fragments
    count towards a shard, and each commit first checks the run still holds the output.
    """

    def __init__(self, root: str, expected: Mapping[int, range], storage_options: dict[str, Any] | None = None,
                 fence: Fence | None = None, staged: bool = False):
        self.layout = _Layout(root, dict(storage_options or {}))
        self.expected = {int(k): v for k, v in expected.items()}
        self.fence = fence
        self.staged = staged  # rows reach write() already staged by :meth:`stage` (the encode stage)

    @property
    def supports_distributed_writes(self) -> bool:
        return True

    def get_name(self) -> str:
        return "ShardedParquet"

    def write(self, blocks: Iterable[Block], ctx: Any) -> list[int]:
        """Stage the blocks' rows (unless ``staged`` upstream), then commit the shards they complete."""
        tables = [b if isinstance(b, pa.Table) else pa.Table.from_pandas(b, schema=OUTPUT_SCHEMA) for b in blocks]
        tables = [t for t in tables if t.num_rows]
        if not tables:
            return []
        table = pa.concat_tables([t.cast(OUTPUT_SCHEMA) for t in tables])
        touched = sorted(set(table.column("shard").to_pylist())) if self.staged else self.stage(table)
        return [s for s in touched if self.try_commit(s)]

    def stage(self, table: pa.Table) -> list[int]:
        """Write ``table``'s rows as durable fragments, one per shard it touches; returns those shards.

        Called by the encode stage on every batch (``staged=True``), so a killed run keeps
        every finished item, not just committed shards: ``--resume`` redoes only the rest.
        """
        if not table.num_rows:
            return []
        table = table.cast(OUTPUT_SCHEMA)
        if self.fence is not None:
            stamp = pa.array([self.fence.run_id] * table.num_rows, pa.string())
            table = table.set_column(table.schema.get_field_index("run_id"), OUTPUT_SCHEMA.field("run_id"), stamp)
        touched = sorted(set(table.column("shard").to_pylist()))
        run = self.fence.run_id if self.fence is not None else "none"
        for shard in touched:
            part = table.filter(pc.equal(table.column("shard"), shard))
            name = f"{staging_dir(shard)}/frag-{part.num_rows:08d}-{run}-{uuid.uuid4().hex}.parquet"
            with storage_step("write", self.layout.root, f"finished rows of shard {shard} to"):
                self.layout.write_atomic(name, part)
        return touched

    def reopen(self, shard: int, keep: pa.Table) -> None:
        """Turn committed ``shard`` back into staged rows (``keep``), so a resume redoes only its
        other items: the fragment is written before the part goes, so a crash between the two
        leaves the shard committed as it was."""
        if keep.num_rows:
            self.stage(keep)
        with storage_step("commit", self.layout.root, f"shard {shard} (reopened) to"):
            self.layout.fs.rm(self.layout.path(part_name(shard)))

    def staged_items(self, shard: int) -> set[int]:
        """Indices of ``shard`` already staged by this run id (a killed attempt's finished items)."""
        if self.fence is None:
            return set()
        fs, staging = self.layout.fs, self.layout.path(staging_dir(shard))
        try:
            names = [p for p in fs.ls(staging, detail=False)
                     if p.rsplit("/", 1)[-1].startswith("frag-") and f"-{self.fence.run_id}-" in p.rsplit("/", 1)[-1]]
        except FileNotFoundError:
            return set()
        found: set[int] = set()
        for path in names:
            try:
                with fs.open(path, "rb") as f:
                    found.update(pq.read_table(f, columns=["index"]).column("index").to_pylist())
            except FileNotFoundError:
                continue
        return found

    def try_commit(self, shard: int) -> bool:
        """Merge a shard's fragments into its part file if they are complete."""
        step = ("commit", self.layout.root, f"shard {shard} to")
        with storage_step(*step):
            merged = self._merged(shard)
        if not isinstance(merged, pa.Table):
            return merged
        if self.fence is not None:
            self.fence.check(self.layout.fs)  # outside the storage step: a lost lease says so itself
        with storage_step(*step):
            self.layout.write_atomic(part_name(shard), merged)
            try:
                self.layout.fs.rm(self.layout.path(staging_dir(shard)), recursive=True)
            except FileNotFoundError:
                pass
        return True

    def _merged(self, shard: int) -> pa.Table | bool:
        """The shard's rows merged from this run's fragments; else whether its part exists already
        (True: a racing commit won) or False (not all its items are staged yet)."""
        layout, fs = self.layout, self.layout.fs
        staging = layout.path(staging_dir(shard))
        try:
            names = sorted(p for p in fs.ls(staging, detail=False) if p.endswith(".parquet"))
        except FileNotFoundError:
            return fs.exists(layout.path(part_name(shard)))
        if self.fence is not None:  # another run's fragments never count (their rows are dropped below too)
            names = [p for p in names if f"-{self.fence.run_id}-" in p.rsplit("/", 1)[-1]]
        want = self.expected[shard]
        rows = sum(_fragment_rows(p) for p in names)  # from names alone: no reads until complete
        if rows < len(want):
            return False
        fragments = []
        for p in names:
            try:
                with fs.open(p, "rb") as f:
                    fragments.append(pq.read_table(f, schema=OUTPUT_SCHEMA))
            except FileNotFoundError:  # a racing commit already cleaned up
                return fs.exists(layout.path(part_name(shard)))
        merged = pa.concat_tables(fragments)
        if self.fence is not None:  # a fragment another run left never counts
            merged = merged.filter(pc.equal(merged.column("run_id"), self.fence.run_id))
        merged = merged.sort_by("index")
        indices = merged.column("index").to_numpy()
        keep = [0] + [i for i in range(1, len(indices)) if indices[i] != indices[i - 1]]
        merged = merged.take(keep)
        return merged if merged.column("index").to_pylist() == list(want) else False

    def rows_written(self) -> int:
        """Rows of this sink's shards written so far: committed parts plus staged fragments.

        For the driver's progress bar while Ray Data runs the writes, which the driver does
        not see: one listing of the root and one of the staging area, counted from file
        names alone. A retried task's duplicate fragment counts until its shard commits, so
        the count is capped at the expected total.
        """
        fs = self.layout.fs
        fs.invalidate_cache()
        root = self.layout.path("").rstrip("/") or "/"
        try:
            names = {p.rsplit("/", 1)[-1] for p in fs.ls(root, detail=False)}
        except FileNotFoundError:
            return 0
        done = {s for s in self.expected if part_name(s) in names}
        rows = sum(len(self.expected[s]) for s in done)
        if STAGING in names:
            for path in fs.find(self.layout.path(STAGING)):
                folder, _, name = path.rpartition("/")
                shard = folder.rpartition("/shard-")[2]
                if name.startswith("frag-") and shard.isdigit() and int(shard) in self.expected and int(shard) not in done:
                    rows += _fragment_rows(name)
        return min(rows, sum(len(v) for v in self.expected.values()))

    def on_write_complete(self, write_result: WriteResult[list[int]]) -> None:
        committed = {s for r in write_result.write_returns for s in r}
        short = [s for s in sorted(self.expected) if s not in committed and not self.try_commit(s)]
        if short:
            raise IncompleteOutputError(
                f"{len(short)} shard(s) lack rows at the end of the run (first: shard {short[0]}): a stage that died "
                "can lose what it held (a tiled run's merger, its unfinished scenes); rerun with --resume to redo them")
