"""The output root: its run manifest, resume and overwrite rules, and reading it back.

An output root holds ``part-NNNNNN.parquet`` (one per committed shard),
``_raysegment.json`` (what produced it, with its ``run_id``), ``_lease/`` (which live run
writes there: one writer per output, see output/lease.py) and, once finished, ``_SUCCESS``.
Names starting with ``_`` are skipped by pyarrow and pandas dataset readers,
so ``pd.read_parquet(root)`` sees exactly the committed rows; DuckDB does not
skip them, so read ``root/part-*.parquet`` there.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Iterable, Sequence
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from raysegment import __version__
from raysegment.errors import InputSpecError, is_transient_message
from raysegment.io.sources import Shard
from raysegment.output.atomic import write_atomic
from raysegment.output.lease import LEASE_FOLDER, Lease, LeaseHeld, acquire_lease, lease_holder, new_run_id
from raysegment.output.schema import OUTPUT_SCHEMA, SCHEMA_VERSION
from raysegment.output.sink import STAGING, part_name, staging_dir
from raysegment.uri import redact, refuse_credentials, storage_step

__all__ = ["OutputError", "OutputRoot", "RunManifest", "read_output"]

MANIFEST = "_raysegment.json"
SUCCESS = "_SUCCESS"
#: Per-scene files of tiled runs (``--mask-raster``, ``--polygons``). The leading underscore
#: keeps them out of a Parquet dataset read of the output root (pyarrow, pandas, Ray skip it).
MASKS_FOLDER, POLYGONS_FOLDER = "_masks", "_polygons"
SIDECAR_FOLDERS = (MASKS_FOLDER, POLYGONS_FOLDER)

log = logging.getLogger("raysegment")


class OutputError(ValueError):
    """The output root cannot be used as asked (exists, differs, unwritable)."""


@dataclasses.dataclass(frozen=True)
class RunManifest:
    """What a run was asked to do; a resume must ask for the same thing."""

    input: str  # redacted
    num_items: int
    shard_size: int
    listing_sha256: str
    model: dict[str, Any]
    tiling: dict[str, Any] | None = None  # the tiling of a tiled run (tile, overlap, blend, ...), else None
    schema_version: str = SCHEMA_VERSION
    raysegment_version: str = __version__

    def identity(self) -> dict[str, Any]:
        """The fields that must match for a resume to be safe."""
        return {
            "num_items": self.num_items,
            "shard_size": self.shard_size,
            "listing_sha256": self.listing_sha256,
            "model": self.model,
            "tiling": self.tiling,
            "schema_version": self.schema_version,
        }


class OutputRoot:
    """An fsspec directory that receives one run's Parquet parts."""

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None):
        if not url or not url.strip():
            raise OutputError("output is empty: no output path given")
        self.url = url
        self.shown = redact(url)
        refuse_credentials(url)  # before anything can echo it
        try:
            self.fs, self.path = fsspec.core.url_to_fs(url, **(storage_options or {}))
        except (ImportError, ValueError) as exc:
            raise OutputError(f"cannot write {self.shown}: {exc}") from None
        self.path = self.path.rstrip("/") or "/"

    def join(self, name: str) -> str:
        return f"{self.path}/{name}"

    def _entries(self) -> list[str]:
        try:
            return [p.rsplit("/", 1)[-1] for p in self.fs.ls(self.path, detail=False)]
        except (FileNotFoundError, NotADirectoryError):
            return []

    def part_files(self) -> list[str]:
        """The committed part files, sorted; none at all means the path is not an output (one line, as eval and show say)."""
        self.fs.invalidate_cache()
        files = sorted(self.join(n) for n in self._entries() if n.startswith("part-") and n.endswith(".parquet"))
        if not files:
            raise InputSpecError(f"no part-*.parquet files under {self.shown}: not a raysegment output")
        return files

    def item_count(self) -> int | None:
        """The run's item count from its manifest (a progress bar's total); None without a readable one."""
        try:
            with self.fs.open(self.join(MANIFEST), "rb") as f:
                count = json.loads(f.read()).get("num_items")
        except (OSError, ValueError):
            return None
        return count if isinstance(count, int) else None

    def committed(self, shards: Sequence[Shard], run_id: str) -> set[int]:
        """Shards whose part file exists and whose every row is the run ``run_id``'s.

        A part another run left (one that lost the output, or an older run) is not done.
        """
        names = set(self._entries())
        present = {s.id for s in shards if part_name(s.id) in names}
        if not present:
            return set()
        table = self.read(columns=["shard", "run_id"])
        foreign = set(table.filter(pc.invert(pc.fill_null(pc.equal(table.column("run_id"), run_id), False)))
                      .column("shard").to_pylist())
        return present - foreign

    def retryable(self, shard_ids: Iterable[int]) -> dict[int, pa.Table]:
        """Committed shards among ``shard_ids`` with error rows worth retrying (a storage failure
        that outlasted the retries), each with the rest of its rows: what a resume keeps."""
        wanted = set(shard_ids)
        if not wanted:
            return {}
        errors = self.read(columns=["shard", "error"]).filter(pc.is_valid(pc.field("error")))  # two small columns
        shards = sorted({s for s, e in zip(errors.column("shard").to_pylist(), errors.column("error").to_pylist())
                         if s in wanted and is_transient_message(e)})
        kept = {}
        for shard in shards:
            with self.fs.open(self.join(part_name(shard)), "rb") as f:
                part = pq.read_table(f, schema=OUTPUT_SCHEMA)
            transient = pa.array([is_transient_message(e) for e in part.column("error").to_pylist()], pa.bool_())
            kept[shard] = part.filter(pc.invert(transient))
        return kept

    def prepare(self, manifest: RunManifest, *, resume: bool, overwrite: bool) -> Lease:
        """Check the root before any work starts, take its lease, and write the manifest.

        A fresh or ``--overwrite`` run gets a new run id; ``--resume`` keeps the output's.
        Another live run holding the output fails here in one line (LeaseHeld), whatever the
        flags. The caller keeps the returned lease renewed while it writes, then releases it.
        """
        self.fs.invalidate_cache()
        with storage_step("read", self.url, "the output"):
            is_file = self.fs.exists(self.path) and not self.fs.isdir(self.path)
        if is_file:
            raise OutputError(f"output {self.shown} exists and is a file, not a directory")
        # A run that failed after taking the lease, before its manifest, left only these: not a run.
        found = self._entries()
        entries = [e for e in found if e not in (LEASE_FOLDER, STAGING)]
        old: dict[str, Any] = {}
        if entries:
            if MANIFEST not in entries:
                raise OutputError(f"output {self.shown} is not empty and holds no raysegment run; choose a new path")
            if not (overwrite or resume):
                holder = lease_holder(self.fs, self.join(LEASE_FOLDER))
                if holder is not None and holder.free(time.time()) is None:
                    raise LeaseHeld(f"output {self.shown} is in use by {holder.describe(time.time())}")
                raise OutputError(f"output {self.shown} already holds a run; pass --resume to finish it or --overwrite")
            old = self._read_manifest()
        run_id = str(old.get("run_id") or "") if resume and not overwrite else ""
        try:
            lease = acquire_lease(self.fs, self.join(LEASE_FOLDER), run_id=run_id or new_run_id(),
                                  shown=f"output {self.shown}", on_takeover=log.warning)
        except (PermissionError, OSError) as exc:  # the first write: an unwritable output says so here
            reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
            raise OutputError(f"cannot write output {self.shown}: {reason}") from None
        try:
            if entries and overwrite:
                self._clear(found)
            elif entries and resume:
                self._check_same_run(manifest)
            self._write_json(MANIFEST, {**dataclasses.asdict(manifest), "run_id": lease.run_id, "written": time.time()})
        except BaseException:
            lease.release()
            raise
        return lease

    def _read_manifest(self) -> dict[str, Any]:
        """The manifest; {} when it is absent or not JSON. A read that fails is an error naming
        it: taken for "no manifest", a resume would report a mismatch or start a new run id."""
        try:
            with storage_step("read", f"{self.url.rstrip('/')}/{MANIFEST}", "the run manifest"):
                with self.fs.open(self.join(MANIFEST), "rb") as f:
                    data = json.loads(f.read())
        except (FileNotFoundError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _check_same_run(self, manifest: RunManifest) -> None:
        old = self._read_manifest()
        want = manifest.identity()
        for key, value in want.items():
            if old.get(key) != value:
                raise OutputError(
                    f"cannot --resume {self.shown}: its {key.replace('_', ' ')} differs from this run's; "
                    "use the same input, shard size, model and tiling, or --overwrite"
                )

    def _clear(self, entries: list[str]) -> None:
        for name in entries:
            if name.startswith("part-") or name in (MANIFEST, SUCCESS, STAGING, *SIDECAR_FOLDERS):
                self.fs.rm(self.join(name), recursive=True)

    def clear_staging(self, shard_ids: Sequence[int], keep_run_id: str | None = None) -> None:
        """Drop what a killed run left in the staging of shards that will be (re)done: every
        fragment, or with ``keep_run_id`` (a resume) only other runs' fragments and temporary files."""
        for shard in shard_ids:
            path = self.join(staging_dir(shard))
            if not self.fs.exists(path):
                continue
            if keep_run_id is None:
                self.fs.rm(path, recursive=True)
                continue
            for name in self.fs.ls(path, detail=False):
                if not (name.rsplit("/", 1)[-1].startswith("frag-") and f"-{keep_run_id}-" in name.rsplit("/", 1)[-1]):
                    self.fs.rm(name)
        self.fs.invalidate_cache()

    def _write_json(self, name: str, obj: dict[str, Any]) -> None:
        """Write-then-rename; also the writability check, so it runs before Ray starts."""
        data = json.dumps(obj, indent=2, sort_keys=True, default=str).encode()
        try:
            write_atomic(self.fs, self.join(name), data, staging=self.join(STAGING))
        except (PermissionError, OSError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
            raise OutputError(f"cannot write output {self.shown}: {reason}") from None

    def finish(self, summary: dict[str, Any], lease: Lease | None = None) -> None:
        """Mark the run complete (only while ``lease`` still holds the output), then drop the
        (by now empty) staging area."""
        if lease is not None:
            lease.check()
        self._write_json(SUCCESS, summary)
        try:
            if self.fs.exists(self.join(STAGING)) and not self.fs.find(self.join(STAGING)):
                self.fs.rm(self.join(STAGING), recursive=True)
        except FileNotFoundError:
            pass

    def status_counts(self, run_id: str | None = None) -> tuple[int, int, int, int]:
        """(rows, ok rows, distinct indices, rows of another run) over every committed part file.

        With ``run_id``, a row another run committed is counted as foreign, never as done.
        """
        table = self.read(columns=["index", "status", "run_id"])
        ok = int(pc.sum(pc.equal(table.column("status"), "ok")).as_py() or 0)
        distinct = len(pc.unique(table.column("index")))
        foreign = 0
        if run_id is not None:
            foreign = table.num_rows - int(pc.sum(pc.fill_null(pc.equal(table.column("run_id"), run_id), False)).as_py() or 0)
        return table.num_rows, ok, distinct, foreign

    def read(self, columns: list[str] | None = None) -> pa.Table:
        self.fs.invalidate_cache()
        files = sorted(self.join(n) for n in self._entries() if n.startswith("part-") and n.endswith(".parquet"))
        if not files:
            return OUTPUT_SCHEMA.empty_table().select(columns or OUTPUT_SCHEMA.names)
        dataset = pads.dataset(files, schema=OUTPUT_SCHEMA, format="parquet", filesystem=self.fs)
        return dataset.to_table(columns=columns)


def read_output(url: str, columns: list[str] | None = None, storage_options: dict[str, Any] | None = None) -> pa.Table:
    """Every committed row of an output root, as one Arrow table sorted by input index."""
    table = OutputRoot(url, storage_options).read(columns=columns)
    return table.sort_by("index") if "index" in table.column_names else table
