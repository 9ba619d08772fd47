"""COCO RLE of a mask too large to hold, built strip by strip in column-major order.

COCO's uncompressed RLE lists alternating run lengths of 0s and 1s over the mask
flattened column by column (Fortran order), starting with 0s. A scene merged in
vertical strips (full height, a band of columns, left to right) therefore yields
its runs in order: each strip's runs continue the previous strip's last run. This
module keeps only the runs (the size of the output, never the mask) and hands the
finished runs to pycocotools, which writes the compressed string, so the result
is byte-identical to ``pycocotools.mask.encode`` of the whole mask.
"""

from __future__ import annotations

import numpy as np
from pycocotools import mask as mask_utils

__all__ = ["RunLengthBuilder", "run_lengths"]


def run_lengths(flat: np.ndarray) -> tuple[bool, np.ndarray]:
    """A 1D bool array -> (value of its first run, lengths of its runs)."""
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate(([0], change, [flat.size]))
    return bool(flat[0]), np.diff(bounds)


class RunLengthBuilder:
    """Appends column-major chunks of one binary mask of size ``(height, width)``."""

    def __init__(self, height: int, width: int) -> None:
        self.height = int(height)
        self.width = int(width)
        self._closed: list[np.ndarray] = []  # finished runs, alternating from a 0-run
        self._value = False  # value of the open run
        self._run = 0  # length of the open run
        self._seen = 0  # pixels appended so far
        self.area = 0

    def append(self, flat: np.ndarray) -> None:
        """Add the next pixels in column-major order (a whole number of columns or not)."""
        flat = np.asarray(flat, dtype=bool).ravel()
        if flat.size == 0:
            return
        if self._seen + flat.size > self.height * self.width:
            raise ValueError(f"RLE chunk overruns the mask: {self._seen + flat.size} > {self.height * self.width} pixels")
        first, lengths = run_lengths(flat)
        self._seen += flat.size
        self.area += int(np.count_nonzero(flat))
        if first == self._value:
            lengths = lengths.copy()
            lengths[0] += self._run
        else:
            self._closed.append(np.array([self._run], dtype=np.uint32))
        self._closed.append(lengths[:-1].astype(np.uint32))
        self._run = int(lengths[-1])
        self._value = first if len(lengths) % 2 == 1 else not first

    def append_zeros(self, count: int) -> None:
        """Add ``count`` pixels outside the mask without materialising them."""
        if count <= 0:
            return
        if self._seen + count > self.height * self.width:
            raise ValueError("RLE run overruns the mask")
        self._seen += count
        if not self._value:
            self._run += count
        else:
            self._closed.append(np.array([self._run], dtype=np.uint32))
            self._value, self._run = False, count

    def counts(self) -> np.ndarray:
        """The uncompressed COCO counts (uint32, as pycocotools holds them) once every pixel is in.

        4 bytes per run: a noisy mask of a large scene has tens of millions of runs, which
        a Python list would hold at about 36 bytes each.
        """
        if self._seen != self.height * self.width:
            raise ValueError(f"mask incomplete: {self._seen} of {self.height * self.width} pixels appended")
        runs = np.concatenate([*self._closed, np.array([self._run], dtype=np.uint32)])
        self._closed = [runs[:-1]]  # one array from now on; the open run stays apart
        return runs

    def encode(self) -> dict:
        """The compressed COCO RLE (``{"size": [h, w], "counts": bytes}``), via pycocotools."""
        return mask_utils.frPyObjects({"size": [self.height, self.width], "counts": self.counts()},
                                      self.height, self.width)
