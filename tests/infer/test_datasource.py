"""ShardDatasource: one read task (one block) per batch of a shard, items a killed attempt staged left out."""

from __future__ import annotations

import pytest
from ray import cloudpickle

from raysegment.infer.datasource import ShardDatasource
from raysegment.io.sources import make_shards


def _rows(tasks) -> list[tuple[str, int, int]]:
    out = []
    for task in tasks:
        for table in task():
            out += list(zip(table.column("uri").to_pylist(), table.column("index").to_pylist(),
                            table.column("shard").to_pylist()))
    return out


@pytest.mark.parametrize("chunk", [None, 1, 3, 8, 100])
def test_every_item_is_read_once_in_blocks_of_chunk_items(chunk: int | None) -> None:
    uris = [f"/data/img-{i:03d}.png" for i in range(23)]
    shards = make_shards(uris, 10)  # 10, 10, 3
    tasks = ShardDatasource(shards, chunk=chunk).get_read_tasks(1)
    sizes = [t.metadata.num_rows for t in tasks]
    assert sizes == ([10, 10, 3] if chunk in (None, 100) else
                     [n for size in (10, 10, 3) for n in [chunk] * (size // chunk) + ([size % chunk] if size % chunk else [])])
    assert _rows(tasks) == [(u, i, i // 10) for i, u in enumerate(uris)]


def test_staged_items_are_skipped_and_a_task_carries_only_its_own_names() -> None:
    uris = [f"/data/{'x' * 200}-{i:04d}.png" for i in range(256)]
    shards = make_shards(uris, 256)
    skip = {0: set(range(0, 100)) | {150, 151}}
    tasks = ShardDatasource(shards, chunk=8, skip=skip).get_read_tasks(1)
    assert sum(t.metadata.num_rows for t in tasks) == 256 - 102
    assert [i for _, i, _ in _rows(tasks)] == [i for i in range(256) if i not in skip[0]]
    # A read task is shipped to a worker: it holds its 8 names, not the shard's 256.
    assert max(len(cloudpickle.dumps(t)) for t in tasks) < 40 * 210
