"""Segments built from strips equal the segments of the whole label map."""

from __future__ import annotations

import numpy as np
import pytest

from raysegment.masks.rle import decode_counts, segments_from_prediction
from raysegment.masks.scene_segments import PlaneSegments, VolumeSegments
from raysegment.plugin.contract import SemanticPrediction

NAMES = ("a", "b", "c", "d")


def _labels(shape: tuple[int, ...], seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, shape).astype(np.uint8)
    labels[..., :2] = 3  # a label present only in the first columns
    return labels, rng.random(shape).astype(np.float32)


def test_plane_segments_from_column_strips_equal_the_whole_image() -> None:
    labels, conf = _labels((23, 31), 0)
    segs = PlaneSegments(23, 31)
    for x0, x1 in ((0, 5), (5, 6), (6, 20), (20, 31)):
        segs.add(labels[:, x0:x1].T, conf[:, x0:x1].T, None)
    got = segs.segments(NAMES)
    want = segments_from_prediction(SemanticPrediction(labels, conf), NAMES)
    assert [s["label"] for s in got] == [s["label"] for s in want]
    for g, w in zip(got, want):
        assert g["counts"] == w["counts"] and g["area"] == w["area"] and g["bbox"] == pytest.approx(w["bbox"])
        assert g["score"] == pytest.approx(w["score"], rel=1e-6)
        assert g["slice_counts"] is None


def test_uncovered_pixels_belong_to_no_segment() -> None:
    labels, conf = _labels((10, 12), 1)
    covered = np.ones_like(labels, dtype=bool)
    covered[:4, 7:] = False
    segs = PlaneSegments(10, 12)
    segs.add(labels[:, :6].T, conf[:, :6].T, covered[:, :6].T)
    segs.add(labels[:, 6:].T, conf[:, 6:].T, covered[:, 6:].T)
    union = np.zeros((10, 12), dtype=int)
    for s in segs.segments(NAMES):
        union += decode_counts(s["counts"], 10, 12)
    assert (union[covered] == 1).all() and (union[~covered] == 0).all()


def test_a_scene_missing_columns_is_refused() -> None:
    segs = PlaneSegments(4, 4)
    segs.add(np.zeros((2, 4), dtype=np.uint8), None, None)
    with pytest.raises(ValueError, match="incomplete"):
        segs.segments(NAMES)


def test_volume_segments_hold_one_rle_per_slice() -> None:
    labels, conf = _labels((5, 9, 11), 2)
    labels[3] = 0  # a slice where labels 1..3 are absent
    segs = VolumeSegments(5, 9, 11)
    segs.add(0, labels[:2], conf[:2], None)
    segs.add(2, labels[2:], conf[2:], None)
    got = {s["label"]: s for s in segs.segments(NAMES)}
    assert sorted(got) == [0, 1, 2, 3]
    for label, seg in got.items():
        assert seg["counts"] is None and len(seg["slice_counts"]) == 5
        volume = np.stack([decode_counts(c, 9, 11) for c in seg["slice_counts"]])
        assert np.array_equal(volume, labels == label)
        assert seg["area"] == int((labels == label).sum())
        assert seg["score"] == pytest.approx(float(conf[labels == label].mean()), rel=1e-6)
    with pytest.raises(ValueError, match="in order"):
        VolumeSegments(5, 9, 11).add(1, labels[1:2], None, None)
