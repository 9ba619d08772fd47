"""``write_atomic``: whole files or none, locally and on a real S3 protocol (moto + s3fs)."""

from __future__ import annotations

from pathlib import Path

import fsspec
import pytest

from raysegment.output.atomic import write_atomic
from raysegment.uri import filesystem


def test_bytes_and_uploads_land_whole_and_leave_no_temporary(tmp_path: Path) -> None:
    fs = fsspec.filesystem("file")
    target = tmp_path / "deep" / "er" / "a.bin"
    write_atomic(fs, str(target), b"one")
    write_atomic(fs, str(target), b"two")  # replaces
    local = tmp_path / "local.txt"
    local.write_bytes(b"uploaded")
    write_atomic(fs, str(tmp_path / "up" / "b.txt"), local_file=str(local), staging=str(tmp_path / "_staging"))
    assert target.read_bytes() == b"two" and (tmp_path / "up" / "b.txt").read_bytes() == b"uploaded"
    leftovers = [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []
    with pytest.raises(ValueError, match="exactly one of data and local_file"):
        write_atomic(fs, str(target))


def test_a_failed_move_keeps_the_old_file_and_removes_the_temporary(tmp_path: Path) -> None:
    class FailingMove(fsspec.implementations.local.LocalFileSystem):
        def mv(self, *args, **kwargs):
            raise OSError("disk went away")

    target = tmp_path / "a.bin"
    target.write_bytes(b"old")
    with pytest.raises(OSError, match="disk went away"):
        write_atomic(FailingMove(), str(target), b"new")
    assert target.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["a.bin"]


def test_s3_object_at_the_bucket_root_and_below(s3_bucket: str) -> None:
    fs, path = filesystem(f"s3://{s3_bucket}/top.txt", {})
    write_atomic(fs, path, b"root")
    fs2, deep = filesystem(f"s3://{s3_bucket}/a/b/c.txt", {})
    write_atomic(fs2, deep, b"deep")
    fs.invalidate_cache()
    assert fs.cat(path) == b"root" and fs.cat(deep) == b"deep"
    assert sorted(p.rsplit("/", 1)[-1] for p in fs.find(s3_bucket)) == ["c.txt", "top.txt"]
