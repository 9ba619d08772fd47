"""Rendering one output row over its source image, to eyeball what a run produced."""

from __future__ import annotations

import io
import os
from typing import Any

import fsspec
import numpy as np
import pyarrow.compute as pc

from raysegment.io.decoders import decode
from raysegment.masks.rle import row_masks
from raysegment.output.root import OutputRoot
from raysegment.plugin.contract import Modality
from raysegment.uri import read_bytes

__all__ = ["find_row", "render_overlay", "PALETTE"]

# Distinct, colour-blind-friendly-ish colours (Okabe-Ito first), cycled per label.
PALETTE = np.array(
    [
        (230, 159, 0), (86, 180, 233), (0, 158, 115), (240, 228, 66),
        (0, 114, 178), (213, 94, 0), (204, 121, 167), (153, 153, 153),
    ],
    dtype=np.float32,
)


def _candidates(uri: str) -> list[str]:
    out = [uri]
    if "://" not in uri:
        out.append(os.path.abspath(uri))
    return out


def find_row(output: str, uri: str, storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """The output row for ``uri`` (as given, or as an absolute local path).

    A path that holds no output at all is said to be one, not reported as a missing row.
    """
    root = OutputRoot(output, storage_options)
    root.part_files()  # raises InputSpecError: not a raysegment output
    table = root.read()
    for candidate in _candidates(uri):
        hits = table.filter(pc.equal(table.column("uri"), candidate))
        if hits.num_rows:
            return hits.slice(0, 1).to_pylist()[0]
    raise LookupError(f"no row for {uri!r} in {output} ({table.num_rows} rows)")


def _display(data: np.ndarray) -> np.ndarray:
    """(H, W, C) of any dtype -> (H, W, 3) float in [0, 255], stretched per band."""
    bands = data[..., :3] if data.shape[-1] >= 3 else np.repeat(data[..., :1], 3, axis=-1)
    bands = bands.astype(np.float32)
    lo = np.percentile(bands, 1, axis=(0, 1), keepdims=True)
    hi = np.percentile(bands, 99, axis=(0, 1), keepdims=True)
    return np.clip((bands - lo) / np.maximum(hi - lo, 1e-6), 0, 1) * 255.0


def render_overlay(
    output: str,
    uri: str,
    out_path: str,
    *,
    alpha: float = 0.45,
    skip_labels: tuple[int, ...] = (),
    storage_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write a PNG of the source image with its masks blended in; returns the row.

    Every label gets its colour from :data:`PALETTE` (label modulo its length);
    ``skip_labels`` (e.g. a background class) are left unpainted.
    """
    from PIL import Image

    row = find_row(output, uri, storage_options)
    if row["status"] != "ok":
        raise ValueError(f"{uri} is an error row: {row['error']}")
    sample = decode(row["uri"], read_bytes(row["uri"], storage_options), Modality.IMAGE)
    canvas = _display(sample.data)
    masks, labels, _ = row_masks(row)
    if canvas.shape[:2] != masks.shape[1:]:
        raise ValueError(f"image is {canvas.shape[1]}x{canvas.shape[0]} but the row's masks are {row['width']}x{row['height']}")
    for mask, label in zip(masks, labels):
        if int(label) in skip_labels:
            continue
        colour = PALETTE[int(label) % len(PALETTE)]
        canvas[mask] = (1 - alpha) * canvas[mask] + alpha * colour
    buf = io.BytesIO()
    Image.fromarray(canvas.round().astype(np.uint8)).save(buf, format="PNG")
    with fsspec.open(out_path, "wb", **(storage_options or {})) as f:
        f.write(buf.getvalue())
    return row
