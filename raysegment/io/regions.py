"""Spatial regions of a scene: the hold-out of ``train --val-region`` and the scope of ``eval --region``.

A user states a region once, in the terms they think in, and it becomes pixel boxes
of each scene it is applied to. The same text means the same pixels in training and
in evaluation, so a model is scored on exactly the part of the scene it never saw.

Forms (``F`` a fraction in (0, 1)):

* ``east:F`` / ``west:F``: the last / first ``F`` of the columns; ``south:F`` /
  ``north:F``: the last / first ``F`` of the rows; ``depth:F``: the last ``F`` of a
  volume's slices (rows and columns are a scene's last two axes, so the sides also
  hold for volumes). The boundary index is ``round(n * (1 - F))`` (east, south, depth)
  or ``round(n * F)`` (west, north);
* ``bbox:L,B,R,T``: a box in the scene's CRS units (needs a georeferenced scene),
  widened outward to whole pixels;
* ``pixels:R0,C0,R1,C1`` (2D) or ``pixels:D0,R0,C0,D1,R1,C1`` (volumes): a pixel box,
  stops exclusive;
* any other text is a vector file (GeoJSON, GeoParquet, shapefile, GeoPackage): the
  pixel bounding box of each of its geometries, reprojected to the scene's CRS. A
  box holds its polygon, so a hold-out by boxes is at least as wide as the polygons.

A box is ``((start, stop), ...)``, one pair per spatial axis, clipped to the scene;
a region that misses a scene has no boxes there.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

from raysegment.errors import InputSpecError
from raysegment.io.vector_labels import as_affine, geometry_pixel_boxes, is_vector_labels, read_vector_labels

__all__ = ["Box", "Region", "parse_region", "boxes_overlap", "box_pixels"]

Box = tuple[tuple[int, int], ...]

SIDES = {"east": (-1, True), "west": (-1, False), "south": (-2, True), "north": (-2, False), "depth": (-3, True)}
FORMS = "east:F, west:F, north:F, south:F, depth:F, bbox:L,B,R,T, pixels:R0,C0,R1,C1 or a vector file"


@dataclasses.dataclass(frozen=True)
class Region:
    """A parsed region; :meth:`pixel_boxes` places it on one scene."""

    kind: str  # "side" | "bbox" | "pixels" | "vector"
    text: str  # as the user wrote it (for reports)
    side: str | None = None
    fraction: float = 0.0
    values: tuple[float, ...] = ()
    uri: str | None = None

    def pixel_boxes(self, shape: Sequence[int], transform: Any = None, crs: str | None = None,
                    storage_options: dict[str, Any] | None = None) -> list[Box]:
        """The region on a scene of spatial ``shape``; ``transform`` (an ``Affine`` or six numbers) and
        ``crs`` are needed by ``bbox`` and vector regions only."""
        shape = tuple(int(n) for n in shape)
        full = [(0, n) for n in shape]
        if self.kind == "side":
            axis, last = SIDES[str(self.side)]
            if -axis > len(shape):
                raise InputSpecError(f"region {self.text!r} needs a volume; the scene is {len(shape)}D")
            n = shape[axis]
            cut = round(n * (1 - self.fraction)) if last else round(n * self.fraction)
            full[axis] = (cut, n) if last else (0, cut)
            return _kept([tuple(full)])
        if self.kind == "pixels":
            if len(self.values) != 2 * len(shape):
                raise InputSpecError(f"region {self.text!r} has {len(self.values)} numbers; a {len(shape)}D scene "
                                     f"needs {2 * len(shape)} (starts, then stops)")
            k = len(shape)
            return _kept([tuple((int(self.values[i]), int(self.values[i + k])) for i in range(k))], shape)
        if transform is None:
            raise InputSpecError(f"region {self.text!r} is in map units but the scene has no georeferencing")
        if len(shape) != 2:
            raise InputSpecError(f"region {self.text!r} is a map region; the scene is {len(shape)}D")
        if self.kind == "bbox":
            return _kept([_bbox_pixels(self.values, as_affine(transform))], shape)
        labels = read_vector_labels(str(self.uri), crs, storage_options=storage_options)
        boxes = [((r0, r1), (c0, c1)) for r0, c0, r1, c1 in geometry_pixel_boxes(labels, as_affine(transform), shape)]
        return _kept(boxes, shape)


def _bbox_pixels(values: Sequence[float], transform: Any) -> Box:
    """A CRS box -> the pixel box covering it (outward to whole pixels)."""
    left, bottom, right, top = values
    inverse = ~transform
    cols, rows = zip(*(inverse @ (x, y) for x in (left, right) for y in (bottom, top)))
    eps = 1e-9  # a CRS edge on a pixel edge must not take the next pixel
    return ((math.floor(min(rows) + eps), math.ceil(max(rows) - eps)),
            (math.floor(min(cols) + eps), math.ceil(max(cols) - eps)))


def _kept(boxes: list[Box], shape: Sequence[int] | None = None) -> list[Box]:
    """Boxes clipped to the scene, empty ones dropped."""
    out = []
    for box in boxes:
        if shape is not None:
            box = tuple((max(0, s), min(int(n), e)) for (s, e), n in zip(box, shape))
        if all(e > s for s, e in box):
            out.append(box)
    return out


def _fraction(text: str, spec: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise InputSpecError(f"region {spec!r}: {text!r} is not a fraction") from None
    if not 0.0 < value < 1.0:
        raise InputSpecError(f"region {spec!r}: the fraction must be in (0, 1), got {value}")
    return value


def _numbers(text: str, spec: str, count: int | None) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise InputSpecError(f"region {spec!r}: expected comma-separated numbers") from None
    if count is not None and len(values) != count:
        raise InputSpecError(f"region {spec!r}: expected {count} numbers, got {len(values)}")
    return values


def parse_region(spec: str) -> Region:
    """``east:0.3``, ``bbox:...``, ``pixels:...`` or a vector file; a malformed spec is one line."""
    text = str(spec).strip()
    if not text:
        raise InputSpecError(f"empty region; use {FORMS}")
    head, sep, rest = text.partition(":")
    head = head.lower()
    if sep and head in SIDES:
        return Region("side", text, side=head, fraction=_fraction(rest, text))
    if sep and head == "bbox":
        values = _numbers(rest, text, 4)
        if values[0] >= values[2] or values[1] >= values[3]:
            raise InputSpecError(f"region {text!r}: expected left < right and bottom < top")
        return Region("bbox", text, values=values)
    if sep and head == "pixels":
        values = _numbers(rest, text, None)
        if len(values) not in (4, 6) or any(v != int(v) or v < 0 for v in values):
            raise InputSpecError(f"region {text!r}: expected 4 (2D) or 6 (volume) whole numbers >= 0")
        return Region("pixels", text, values=values)
    if not is_vector_labels(text):
        raise InputSpecError(f"region {text!r} is not one of {FORMS}")
    return Region("vector", text, uri=text)


def boxes_overlap(a: Box, b: Box) -> bool:
    """Whether two boxes share a pixel (stops are exclusive)."""
    return all(s1 < e2 and s2 < e1 for (s1, e1), (s2, e2) in zip(a, b))


def box_pixels(box: Box) -> int:
    """Pixels (voxels) in a box."""
    return math.prod(e - s for s, e in box)
