"""ValidationBatches: a rank's validation batches are read once and kept while they fit, else streamed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from raysegment.io.payload import pack
from raysegment.train.augment import AugmentConfig
from raysegment.train.loop import Collate, ValidationBatches

pytestmark = pytest.mark.usefixtures("ray_local")


class _CountedDataset:
    """A real Ray dataset whose ``iter_torch_batches`` calls are counted (one per pass)."""

    def __init__(self, ds):
        self.ds, self.passes = ds, 0

    def iter_torch_batches(self, **kw):
        self.passes += 1
        return self.ds.iter_torch_batches(**kw)


def _dataset(n: int) -> _CountedDataset:
    import ray.data

    rng = np.random.default_rng(0)
    rows = [{"index": i, "payload": pack({"image": rng.random((1, 16, 16), dtype=np.float32),
                                          "target": rng.integers(0, 2, (16, 16))})} for i in range(n)]
    return _CountedDataset(ray.data.from_items(rows))


def _passes(limit: int) -> tuple[int, list[list[torch.Tensor]]]:
    shard = _dataset(5)
    batches = ValidationBatches(shard, Collate(AugmentConfig.none(), 0, 0, 1, 255), batch_size=2, limit=limit)
    epochs = [[b["target"] for b in batches] for _ in range(3)]
    return shard.passes, epochs


def test_batches_that_fit_are_read_once_and_every_epoch_sees_the_same() -> None:
    passes, epochs = _passes(limit=2**20)
    assert passes == 1
    assert [len(e) for e in epochs] == [3, 3, 3]  # 5 items in batches of 2
    for later in epochs[1:]:
        assert all(torch.equal(a, b) for a, b in zip(epochs[0], later))


def test_batches_over_the_limit_are_streamed_every_epoch() -> None:
    passes, epochs = _passes(limit=1000)  # one batch alone is 2 x (16 x 16 x 4 + 16 x 16 x 8) bytes
    assert passes == 3
    for later in epochs[1:]:
        assert all(torch.equal(a, b) for a, b in zip(epochs[0], later))


def test_no_validation_share_is_no_batch() -> None:
    batches = ValidationBatches(None, Collate(AugmentConfig.none(), 0, 0, 1, 255), batch_size=2)
    assert list(batches) == [] and list(batches) == []
