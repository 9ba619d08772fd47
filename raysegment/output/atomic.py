"""Write-then-rename: the one way raysegment puts a file where readers look.

A reader (a resumed run, DuckDB over the output, a GIS tool) must see a file whole
or not at all, under faults too. Every writer of the output root, the sink's
fragments and parts, the geo side files and the training run folder write the
bytes to a temporary name first and move it into place; a failure removes the
temporary file where it can and re-raises, for the caller to word.
"""

from __future__ import annotations

import posixpath
import uuid
from typing import Any

from fsspec.implementations.local import LocalFileSystem

__all__ = ["write_atomic"]


def write_atomic(fs: Any, path: str, data: bytes | None = None, *, local_file: str | None = None,
                 staging: str | None = None) -> None:
    """Put ``data`` (or upload the local file ``local_file``) at ``path`` of ``fs`` atomically.

    The temporary file is a hidden name in ``staging`` (a folder of the same
    filesystem, such as the output root's staging area), or beside ``path``.
    Folders are made where the filesystem has them; on object stores only below
    the bucket, since ``makedirs`` of a bucket root would try to create a bucket.
    """
    if (data is None) == (local_file is None):
        raise ValueError("write_atomic takes exactly one of data and local_file")
    parent, name = posixpath.split(path.rstrip("/"))
    folder = (staging or parent).rstrip("/")
    tmp = f"{folder}/.{name}.{uuid.uuid4().hex}.tmp" if folder else f".{name}.{uuid.uuid4().hex}.tmp"
    try:
        for where in {parent, folder}:
            if where and (isinstance(fs, LocalFileSystem) or "/" in where.strip("/")):
                fs.makedirs(where, exist_ok=True)
        if local_file is not None:
            fs.put_file(local_file, tmp)
        else:
            with fs.open(tmp, "wb") as f:
                f.write(data)
        fs.mv(tmp, path)
    except BaseException:
        try:
            if fs.exists(tmp):
                fs.rm(tmp)
        except Exception:  # noqa: BLE001 - best effort; the original error matters
            pass
        raise
