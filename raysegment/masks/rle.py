"""COCO RLE encoding of predictions, and decoding of output rows back to arrays.

All RLE work goes through pycocotools so the strings interoperate with every
COCO tool: ``counts`` is the compressed RLE string for size ``[height, width]``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from raysegment.plugin.contract import InstancePrediction, Prediction, SemanticPrediction

__all__ = [
    "encode_masks",
    "decode_counts",
    "segments_from_prediction",
    "semantic_segments",
    "instance_segments",
    "row_masks",
    "row_label_map",
]


def encode_masks(masks: np.ndarray) -> list[str]:
    """(N, H, W) boolean masks -> N compressed RLE strings."""
    if masks.ndim != 3:
        raise ValueError(f"expected (N, H, W) masks, got shape {masks.shape}")
    if masks.shape[0] == 0:
        return []
    fortran = np.asfortranarray(np.moveaxis(masks.astype(np.uint8, copy=False), 0, -1))
    return [rle["counts"].decode("ascii") for rle in mask_utils.encode(fortran)]


def decode_counts(counts: str, height: int, width: int) -> np.ndarray:
    """One compressed RLE string -> (H, W) boolean mask."""
    rle = {"size": [int(height), int(width)], "counts": counts.encode("ascii")}
    return mask_utils.decode(rle).astype(bool)


def _segment_dicts(
    counts: Sequence[str],
    labels: Sequence[int],
    scores: Sequence[float],
    height: int,
    width: int,
    class_names: Sequence[str],
) -> list[dict[str, Any]]:
    if not counts:
        return []
    rles = [{"size": [height, width], "counts": c.encode("ascii")} for c in counts]
    areas = mask_utils.area(rles)
    boxes = mask_utils.toBbox(rles)
    out = []
    for c, label, score, area, box in zip(counts, labels, scores, areas, boxes):
        label = int(label)
        out.append(
            {
                "label": label,
                "label_name": class_names[label] if 0 <= label < len(class_names) else str(label),
                "score": float(score),
                "bbox": [float(v) for v in box],
                "area": int(area),
                "counts": c,
            }
        )
    return out


def semantic_segments(pred: SemanticPrediction, class_names: Sequence[str]) -> list[dict[str, Any]]:
    """One segment per class present, scored by the mean confidence over its pixels."""
    labels_map = np.asarray(pred.labels)
    h, w = labels_map.shape
    present = np.unique(labels_map)
    masks = labels_map[None, :, :] == present[:, None, None]
    if pred.confidence is not None:
        conf = np.asarray(pred.confidence, dtype=np.float64)
        scores = [float(conf[m].mean()) for m in masks]
    else:
        scores = [1.0] * len(present)
    return _segment_dicts(encode_masks(masks), present.tolist(), scores, h, w, class_names)


def instance_segments(pred: InstancePrediction, class_names: Sequence[str]) -> list[dict[str, Any]]:
    """One segment per instance mask, with its label and score."""
    masks = np.asarray(pred.masks, dtype=bool)
    _, h, w = masks.shape
    return _segment_dicts(
        encode_masks(masks), np.asarray(pred.labels).tolist(), np.asarray(pred.scores).tolist(), h, w, class_names
    )


def segments_from_prediction(pred: Prediction, class_names: Sequence[str]) -> list[dict[str, Any]]:
    """A plugin's prediction -> the ``segments`` list of an output row.

    Semantic maps give one segment per class present, scored by the mean
    confidence over its pixels; instances give one segment each.
    """
    if isinstance(pred, SemanticPrediction):
        return semantic_segments(pred, class_names)
    if isinstance(pred, InstancePrediction):
        return instance_segments(pred, class_names)
    raise TypeError(f"postprocess returned {type(pred).__name__}, expected a raysegment.plugin Prediction")


def row_masks(row: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An output row -> ((N, H, W) bool masks, (N,) labels, (N,) scores)."""
    h, w = int(row["height"]), int(row["width"])
    segments = list(row.get("segments") or [])
    masks = np.zeros((len(segments), h, w), dtype=bool)
    for i, seg in enumerate(segments):
        masks[i] = decode_counts(seg["counts"], h, w)
    labels = np.array([int(s["label"]) for s in segments], dtype=np.int64)
    scores = np.array([float(s["score"]) for s in segments], dtype=np.float32)
    return masks, labels, scores


def row_label_map(row: Mapping[str, Any], fill: int = -1) -> np.ndarray:
    """A semantic output row -> (H, W) int32 label map; ``fill`` where no segment covers."""
    masks, labels, _ = row_masks(row)
    out = np.full((int(row["height"]), int(row["width"])), fill, dtype=np.int32)
    for m, label in zip(masks, labels):
        out[m] = label
    return out
