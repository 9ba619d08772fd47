"""How one output row's pixels reach the metric accumulator: all of them, only those in a region,
and against vector labels burnt onto the row's own grid.

``raysegment eval`` scores mask files and COCO masks whole; a spatial hold-out
(``--region east:0.3``) must leave every pixel outside it out of the metric, and
polygon ground truth (``GT`` a GeoJSON, GeoParquet, shapefile or GeoPackage) has
no mask to load: it is rasterised onto the row's ``crs`` / ``transform`` grid.
A scene can be far larger than memory allows as one more array beside its
label map, so the polygons are burnt in strips of at most :data:`STRIP_PIXELS`
pixels (cut to the region's columns in that strip); strips the region misses are
never burnt. With a region the accumulator receives the selected pixels as
flat arrays, which pixel-wise metrics (the confusion matrix) take as they are.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from raysegment.errors import ItemError
from raysegment.io.vector_labels import as_affine, cached_vector_labels, rasterize_window, read_vector_labels
from raysegment.train.data import apply_value_map

__all__ = ["STRIP_PIXELS", "VectorTruth", "parse_region_spec", "region_boxes", "region_mask", "score_pixels",
           "score_against_vector"]

#: Most ground-truth pixels burnt at once (16 Mpx: 16 MB as uint8, 64 MB as int32).
STRIP_PIXELS = 1 << 24

Box = Sequence[tuple[int, int]]  # one (start, stop) per axis


@dataclasses.dataclass(frozen=True)
class VectorTruth:
    """Polygon ground truth, shipped to every task by name; each task reads it in the CRS of its rows."""

    uri: str
    label_field: str | None = None
    storage_options: Mapping[str, Any] | None = dataclasses.field(default=None, hash=False)

    def check(self) -> None:
        """Read it once on the driver, so a missing file or field is one line before Ray starts."""
        read_vector_labels(self.uri, None, self.label_field, dict(self.storage_options or {}))

    def labels_in(self, crs: str) -> Any:
        """The polygons reprojected to ``crs``; the last few CRSs stay cached in this worker."""
        return cached_vector_labels(self.uri, crs, self.label_field, self.storage_options)


def parse_region_spec(spec: str) -> Any:
    """``--region`` text -> a region object of :mod:`raysegment.io.regions`."""
    from raysegment.io.regions import parse_region

    return parse_region(spec)


def _row_transform(row: Mapping[str, Any]) -> Any:
    if not row.get("transform"):
        return None
    return as_affine(row["transform"])


def region_boxes(region: Any, shape: tuple[int, ...], row: Mapping[str, Any]) -> list[Box] | None:
    """The region's pixel boxes on this row's grid; None without a region (score every pixel)."""
    if region is None:
        return None
    return list(region.pixel_boxes(tuple(shape), transform=_row_transform(row), crs=row.get("crs")))


def region_mask(shape: tuple[int, ...], boxes: Sequence[Box], origin: Sequence[int] | None = None) -> np.ndarray:
    """A boolean array of ``shape`` (a block whose first pixel is ``origin`` in the scene), True inside any box.

    Overlapping boxes count their shared pixels once.
    """
    origin = tuple(origin) if origin is not None else (0,) * len(shape)
    mask = np.zeros(shape, dtype=bool)
    for box in boxes:
        mask[tuple(slice(max(0, int(a) - o), max(0, min(s, int(b) - o)))
                   for (a, b), o, s in zip(box, origin, shape))] = True
    return mask


def score_pixels(acc: Any, pred: np.ndarray, target: np.ndarray, mask: np.ndarray | None, ignore_index: int) -> int:
    """Add ``pred`` against ``target`` (only where ``mask``); returns the scored pixels at the ignore index."""
    if mask is not None:
        pred, target = pred[mask], target[mask]
    acc.update(pred, target)
    return int(np.count_nonzero(target == ignore_index))


def score_against_vector(acc: Any, pred: np.ndarray, row: Mapping[str, Any], truth: VectorTruth,
                         boxes: Sequence[Box] | None, value_map: Mapping[int, int], ignore_index: int,
                         strip_pixels: int = STRIP_PIXELS) -> int:
    """Score a 2D row's label map against the polygons burnt on its grid, strip by strip.

    Strips hold at most ``strip_pixels`` pixels (one row at least). Returns the
    scored pixels at the ignore index. A row without ``crs`` and
    ``transform`` (an untiled or non-georeferenced output) or a volume cannot be
    placed and fails with one line.
    """
    transform = _row_transform(row)
    if pred.ndim != 2 or row.get("depth"):
        raise ItemError(f"vector labels score 2D scenes only; this row is {pred.ndim}D")
    if transform is None or not row.get("crs"):
        raise ItemError("the row has no crs/transform, so vector labels cannot be placed on it "
                        "(score a tiled run over georeferenced scenes)")
    labels = truth.labels_in(row["crs"])
    height, width = pred.shape
    step = max(1, strip_pixels // max(width, 1))
    ignored = 0
    for r0 in range(0, height, step):
        r1 = min(height, r0 + step)
        c0, c1, mask = 0, width, None
        if boxes is not None:
            mask = region_mask((r1 - r0, width), boxes, (r0, 0))
            cols = np.flatnonzero(mask.any(axis=0))
            if cols.size == 0:
                continue  # the region misses this strip: nothing to burn
            c0, c1 = int(cols[0]), int(cols[-1]) + 1
            mask = mask[:, c0:c1]
        target = rasterize_window(labels, transform, (r0, c0, r1 - r0, c1 - c0), truth.label_field)
        ignored += score_pixels(acc, pred[r0:r1, c0:c1], apply_value_map(target, value_map), mask, ignore_index)
    return ignored
