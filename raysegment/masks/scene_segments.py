"""The ``segments`` of a tiled scene, accumulated from finished strips without its label map.

Tiled inference hands each finished strip's labels here and forgets them, so a
scene's output costs the size of its masks' runs, not its pixels.

* :class:`PlaneSegments` (2D): strips are bands of columns, left to right, each
  given transposed ``(columns, height)`` so that flattening it is COCO's
  column-major order; one :class:`~raysegment.masks.rle_stream.RunLengthBuilder` per
  label appends its runs.
* :class:`VolumeSegments` (3D): strips are whole depth slices; each slice of each
  label is one COCO RLE (pycocotools), the documented per-slice encoding.

Pixels no window covered (nodata) belong to no segment. A segment's ``score`` is
its label's mean confidence, as for whole images.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from raysegment.masks.rle import encode_masks
from raysegment.masks.rle_stream import RunLengthBuilder

__all__ = ["PlaneSegments", "VolumeSegments"]

NO_LABEL = -1


def _labels_with_holes(labels: np.ndarray, covered: np.ndarray | None) -> np.ndarray:
    out = labels.astype(np.int64, copy=True)
    if covered is not None:
        out[~covered] = NO_LABEL
    return out


def _segment(label: int, names: Sequence[str], score: float, bbox: Sequence[float], area: int, **masks: Any) -> dict[str, Any]:
    return {
        "label": int(label),
        "label_name": names[label] if 0 <= label < len(names) else str(label),
        "score": float(score),
        "bbox": [float(v) for v in bbox],
        "area": int(area),
        "counts": masks.get("counts"),
        "slice_counts": masks.get("slice_counts"),
    }


class PlaneSegments:
    """One 2D scene of ``(height, width)``, fed column strips in order."""

    def __init__(self, height: int, width: int) -> None:
        self.height, self.width = int(height), int(width)
        self._builders: dict[int, RunLengthBuilder] = {}
        self._confidence: dict[int, float] = {}
        self._pixels = 0

    def add(self, labels_t: np.ndarray, confidence_t: np.ndarray | None, covered_t: np.ndarray | None) -> None:
        """The next strip, transposed: ``(columns, height)`` labels, confidence and coverage."""
        if labels_t.ndim != 2 or labels_t.shape[1] != self.height:
            raise ValueError(f"strip must be (columns, {self.height}), got {labels_t.shape}")
        flat = _labels_with_holes(labels_t, covered_t).ravel()
        conf = None if confidence_t is None else np.asarray(confidence_t, dtype=np.float64).ravel()
        present = [int(v) for v in np.unique(flat) if v != NO_LABEL]
        for label in present:
            builder = self._builders.get(label)
            if builder is None:
                builder = self._builders[label] = RunLengthBuilder(self.height, self.width)
                builder.append_zeros(self._pixels)
                self._confidence[label] = 0.0
            mask = flat == label
            builder.append(mask)
            self._confidence[label] += float(conf[mask].sum()) if conf is not None else float(mask.sum())
        for label, builder in self._builders.items():
            if label not in present:
                builder.append_zeros(flat.size)
        self._pixels += flat.size

    def segments(self, names: Sequence[str]) -> list[dict[str, Any]]:
        """One segment per label present, in label order; call once every column is in."""
        if self._pixels != self.height * self.width:
            raise ValueError(f"scene incomplete: {self._pixels} of {self.height * self.width} pixels merged")
        out = []
        for label in sorted(self._builders):
            builder = self._builders[label]
            rle = builder.encode()
            bbox = mask_utils.toBbox(rle)
            out.append(_segment(label, names, self._confidence[label] / builder.area, bbox, builder.area,
                                counts=rle["counts"].decode("ascii")))
        return out


class VolumeSegments:
    """One 3D scene of ``(depth, height, width)``, fed strips of whole slices in order."""

    def __init__(self, depth: int, height: int, width: int) -> None:
        self.shape = (int(depth), int(height), int(width))
        self._slices: dict[int, list[str | None]] = {}
        self._area: dict[int, int] = {}
        self._confidence: dict[int, float] = {}
        self._boxes: dict[int, list[np.ndarray]] = {}
        self._next = 0
        self._empty: str | None = None

    def add(self, start: int, labels: np.ndarray, confidence: np.ndarray | None, covered: np.ndarray | None) -> None:
        """Slices ``[start, start + len(labels))``: labels ``(slices, H, W)``, confidence, coverage."""
        if start != self._next:
            raise ValueError(f"slices must arrive in order: expected {self._next}, got {start}")
        if labels.shape[1:] != self.shape[1:]:
            raise ValueError(f"slices must be {self.shape[1:]}, got {labels.shape[1:]}")
        values = _labels_with_holes(labels, covered)
        for offset in range(values.shape[0]):
            plane = values[offset]
            present = [int(v) for v in np.unique(plane) if v != NO_LABEL]
            if not present:
                continue
            masks = plane[None] == np.array(present)[:, None, None]
            counts = encode_masks(masks)
            rles = [{"size": list(self.shape[1:]), "counts": c.encode("ascii")} for c in counts]
            boxes = mask_utils.toBbox(rles)
            for label, mask, c, box in zip(present, masks, counts, boxes):
                if label not in self._slices:
                    self._slices[label] = [None] * self.shape[0]
                    self._area[label], self._confidence[label], self._boxes[label] = 0, 0.0, []
                self._slices[label][start + offset] = c
                self._area[label] += int(mask.sum())
                conf = confidence[offset][mask] if confidence is not None else mask[mask]
                self._confidence[label] += float(np.asarray(conf, dtype=np.float64).sum())
                self._boxes[label].append(box)
        self._next = start + values.shape[0]

    def _empty_counts(self) -> str:
        if self._empty is None:
            self._empty = encode_masks(np.zeros((1, *self.shape[1:]), dtype=bool))[0]
        return self._empty

    def segments(self, names: Sequence[str]) -> list[dict[str, Any]]:
        """One segment per label present; ``slice_counts[d]`` is slice d's RLE (empty slices included)."""
        if self._next != self.shape[0]:
            raise ValueError(f"volume incomplete: {self._next} of {self.shape[0]} slices merged")
        out = []
        for label in sorted(self._slices):
            boxes = np.array(self._boxes[label])
            x0, y0 = boxes[:, 0].min(), boxes[:, 1].min()
            x1, y1 = (boxes[:, 0] + boxes[:, 2]).max(), (boxes[:, 1] + boxes[:, 3]).max()
            slices = [c if c is not None else self._empty_counts() for c in self._slices[label]]
            area = self._area[label]
            out.append(_segment(label, names, self._confidence[label] / area, [x0, y0, x1 - x0, y1 - y0], area,
                                slice_counts=slices))
        return out
