"""Packing of named arrays into one binary cell, to move them between Ray stages.

Items differ in shape, so a batch cannot be one tensor column; a binary
column of ``.npy`` records (read back with ``allow_pickle=False``) keeps every
stage's block a plain Arrow table and never unpickles data.
"""

from __future__ import annotations

import io
import json
import struct

import numpy as np

__all__ = ["pack", "unpack"]

_HEADER = struct.Struct("<I")


def pack(arrays: dict[str, np.ndarray]) -> bytes:
    """Named arrays -> bytes: a JSON index, then each array as an .npy record."""
    bodies = []
    for value in arrays.values():
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(value), allow_pickle=False)
        bodies.append(buf.getvalue())
    index = json.dumps({"names": list(arrays), "sizes": [len(b) for b in bodies]}).encode()
    return _HEADER.pack(len(index)) + index + b"".join(bodies)


def unpack(data: bytes) -> dict[str, np.ndarray]:
    """Inverse of :func:`pack`."""
    (n,) = _HEADER.unpack_from(data, 0)
    index = json.loads(bytes(data[_HEADER.size : _HEADER.size + n]))
    pos = _HEADER.size + n
    out = {}
    view = memoryview(data)
    for name, size in zip(index["names"], index["sizes"]):
        out[name] = np.load(io.BytesIO(view[pos : pos + size]), allow_pickle=False)
        pos += size
    return out
