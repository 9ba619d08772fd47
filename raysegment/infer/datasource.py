"""A Ray Data ``Datasource`` over a sharded input listing.

One read task per shard (or per ``chunk`` items of it) yields its ``(uri, index, shard)``
rows, leaving out items already staged by a killed attempt (``skip``, item-level resume). The
listing is made once on the driver (sorted, so reruns cut the same shards);
items are fetched later, inside the decode stage, so a read task holds names,
never pixels (except for process-local ``memory://`` inputs, see ``PROCESS_LOCAL``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pyarrow as pa
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from raysegment.io.sources import Shard
from raysegment.uri import read_bytes

__all__ = ["ShardDatasource", "ITEM_SCHEMA"]

ITEM_SCHEMA = pa.schema([("uri", pa.string()), ("index", pa.int64()), ("shard", pa.int32()), ("data", pa.binary()), ("inline", pa.bool_())])

#: Filesystems that live inside one process: Ray workers cannot see them, so
#: their bytes travel with the items (they are in the driver's memory anyway).
PROCESS_LOCAL = ("memory://",)


def _chunk_table(shard: Shard, indices: Sequence[int], inline: tuple[bytes, ...] | None) -> pa.Table:
    offsets = [i - shard.start for i in indices]
    return pa.table(
        {
            "uri": pa.array([shard.uris[o] for o in offsets], pa.string()),
            "index": pa.array(list(indices), pa.int64()),
            "shard": pa.array([shard.id] * len(offsets), pa.int32()),
            "data": pa.array([inline[o] for o in offsets] if inline is not None else [b""] * len(offsets), pa.binary()),
            "inline": pa.array([inline is not None] * len(offsets), pa.bool_()),
        },
        schema=ITEM_SCHEMA,
    )


def _inline_bytes(shard: Shard, storage_options: dict | None) -> tuple[bytes, ...] | None:
    if not any(u.startswith(PROCESS_LOCAL) for u in shard.uris):
        return None
    if not all(u.startswith(PROCESS_LOCAL) for u in shard.uris):
        return None  # a manifest mixing memory:// with other stores: read each where it runs
    try:
        return tuple(read_bytes(uri, storage_options) for uri in shard.uris)
    except Exception:
        return None  # the decode stage reads them again and reports why, item by item


class ShardDatasource(Datasource):
    """Yields the items of the given shards, one read task per ``chunk`` items of a shard."""

    def __init__(self, shards: Sequence[Shard], storage_options: dict | None = None, chunk: int | None = None,
                 skip: Mapping[int, set[int]] | None = None):
        self.shards = list(shards)
        self.storage_options = storage_options
        self.chunk = chunk
        self.skip = dict(skip or {})

    def chunks(self) -> list[tuple[Shard, list[int]]]:
        """(shard, item indices) of every read task: the items to do, ``chunk`` at a time."""
        out = []
        for shard in self.shards:
            todo = [i for i in range(shard.start, shard.start + len(shard.uris)) if i not in self.skip.get(shard.id, ())]
            step = self.chunk or max(1, len(todo))
            out += [(shard, todo[k:k + step]) for k in range(0, len(todo), step)]
        return out

    def get_name(self) -> str:
        return "RaysegmentShards"

    def estimate_inmemory_data_size(self) -> int | None:
        return sum(len(u) + 12 for s in self.shards for u in s.uris)

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None, data_context=None) -> list[ReadTask]:
        tasks = []
        inline_of: dict[int, tuple[bytes, ...] | None] = {}
        for shard, indices in self.chunks():
            if shard.id not in inline_of:
                inline_of[shard.id] = _inline_bytes(shard, self.storage_options)
            # Each task carries the names of its own items only, not the whole shard's.
            lo, hi = indices[0] - shard.start, indices[-1] - shard.start + 1
            piece = Shard(shard.id, shard.start + lo, shard.uris[lo:hi])
            inline = inline_of[shard.id][lo:hi] if inline_of[shard.id] is not None else None
            meta = BlockMetadata(num_rows=len(indices), size_bytes=sum(len(u) + 12 for u in piece.uris),
                                 exec_stats=None, input_files=None)

            def read(piece: Shard = piece, indices: list[int] = indices,
                     inline: tuple[bytes, ...] | None = inline) -> list[pa.Table]:
                return [_chunk_table(piece, indices, inline)]

            tasks.append(ReadTask(read, meta, schema=ITEM_SCHEMA, per_task_row_limit=per_task_row_limit))
        return tasks
