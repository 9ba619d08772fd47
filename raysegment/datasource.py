"""A Ray Data ``Datasource`` over a sharded input listing.

One read task per shard yields that shard's ``(uri, index, shard)`` rows. The
listing is made once on the driver (sorted, so reruns cut the same shards);
items are fetched later, inside the decode stage, so a read task holds names,
never pixels.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from raysegment.sources import Shard

__all__ = ["ShardDatasource", "ITEM_SCHEMA"]

ITEM_SCHEMA = pa.schema([("uri", pa.string()), ("index", pa.int64()), ("shard", pa.int32())])


def _shard_table(shard: Shard) -> pa.Table:
    n = len(shard.uris)
    return pa.table(
        {
            "uri": pa.array(shard.uris, pa.string()),
            "index": pa.array(range(shard.start, shard.start + n), pa.int64()),
            "shard": pa.array([shard.id] * n, pa.int32()),
        },
        schema=ITEM_SCHEMA,
    )


class ShardDatasource(Datasource):
    """Yields the items of the given shards, one read task per shard."""

    def __init__(self, shards: Sequence[Shard]):
        self.shards = list(shards)

    def get_name(self) -> str:
        return "RaysegmentShards"

    def estimate_inmemory_data_size(self) -> int | None:
        return sum(len(u) + 12 for s in self.shards for u in s.uris)

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None, data_context=None) -> list[ReadTask]:
        tasks = []
        for shard in self.shards:
            size = sum(len(u) + 12 for u in shard.uris)
            meta = BlockMetadata(num_rows=len(shard.uris), size_bytes=size, exec_stats=None, input_files=None)

            def read(shard: Shard = shard) -> list[pa.Table]:
                return [_shard_table(shard)]

            tasks.append(ReadTask(read, meta, schema=ITEM_SCHEMA, per_task_row_limit=per_task_row_limit))
        return tasks
