"""A Ray Data ``Datasource`` over a sharded input listing.

One read task per shard yields that shard's ``(uri, index, shard)`` rows. The
listing is made once on the driver (sorted, so reruns cut the same shards);
items are fetched later, inside the decode stage, so a read task holds names,
never pixels (except for process-local ``memory://`` inputs, see ``PROCESS_LOCAL``).
"""

from __future__ import annotations

from collections.abc import Sequence

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


def _shard_table(shard: Shard, inline: tuple[bytes, ...] | None) -> pa.Table:
    n = len(shard.uris)
    return pa.table(
        {
            "uri": pa.array(shard.uris, pa.string()),
            "index": pa.array(range(shard.start, shard.start + n), pa.int64()),
            "shard": pa.array([shard.id] * n, pa.int32()),
            "data": pa.array(inline if inline is not None else [b""] * n, pa.binary()),
            "inline": pa.array([inline is not None] * n, pa.bool_()),
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
    """Yields the items of the given shards, one read task per shard."""

    def __init__(self, shards: Sequence[Shard], storage_options: dict | None = None):
        self.shards = list(shards)
        self.storage_options = storage_options

    def get_name(self) -> str:
        return "RaysegmentShards"

    def estimate_inmemory_data_size(self) -> int | None:
        return sum(len(u) + 12 for s in self.shards for u in s.uris)

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None, data_context=None) -> list[ReadTask]:
        tasks = []
        for shard in self.shards:
            size = sum(len(u) + 12 for u in shard.uris)
            meta = BlockMetadata(num_rows=len(shard.uris), size_bytes=size, exec_stats=None, input_files=None)

            inline = _inline_bytes(shard, self.storage_options)

            def read(shard: Shard = shard, inline: tuple[bytes, ...] | None = inline) -> list[pa.Table]:
                return [_shard_table(shard, inline)]

            tasks.append(ReadTask(read, meta, schema=ITEM_SCHEMA, per_task_row_limit=per_task_row_limit))
        return tasks
