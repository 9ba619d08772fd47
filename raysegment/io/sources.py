"""Input listing and sharding over fsspec.

A job's input is one string: a directory or object prefix, a glob, a manifest
(``.csv`` / ``.parquet`` with a ``uri`` column, or the ``image_uri`` column of a
training/eval manifest) or a single file. It is turned
into an ordered list of full URIs once, on the driver, and cut into fixed-size
shards; the digest of the listing lets a resumed job check it sees the same input.

Errors about the input spec are :class:`InputSpecError` with one-line messages,
because the CLI shows them to users without a traceback.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import posixpath
import re
from collections.abc import Sequence
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from raysegment.errors import InputSpecError
from raysegment.uri import SCHEME, filesystem, redact

__all__ = [
    "InputSpecError",
    "Shard",
    "list_inputs",
    "make_shards",
    "listing_digest",
]

_GLOB_CHARS = re.compile(r"[*?\[]")
_MANIFEST_SUFFIXES = (".csv", ".parquet")
#: The input column of a manifest, the first present: ``uri``, else the training/eval manifests' ``image_uri``,
#: so the manifest a model was trained or scored on can be segmented as it is.
INPUT_COLUMNS = ("uri", "image_uri")


@dataclasses.dataclass(frozen=True)
class Shard:
    """A consecutive chunk of the listing; ``start`` is its first item's index."""

    id: int
    start: int
    uris: tuple[str, ...]


# -- filesystems ------------------------------------------------------------------------
def _full_uri(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """A path as returned by ``fs`` -> a URI with protocol (plain absolute path for local files)."""
    if isinstance(fs, LocalFileSystem):
        return path
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    if protocol == "memory":  # memory paths carry a root "/"; keep the short "memory://x" form
        return f"memory://{path.lstrip('/')}"
    return fs.unstrip_protocol(path)


def _is_hidden(path: str, base: str) -> bool:
    """Whether any component of ``path`` below ``base`` starts with a dot."""
    rel = path[len(base):] if path.startswith(base) else path
    return any(part.startswith(".") for part in rel.split("/") if part)


# -- listing ----------------------------------------------------------------------------
def list_inputs(spec: str, storage_options: dict | None = None) -> list[str]:
    """Expand an input spec into the ordered list of item URIs.

    Directory and glob listings are sorted, so every run (and every resume)
    numbers items the same way; manifest order is the user's and is kept.
    """
    if not spec or not spec.strip():
        raise InputSpecError("input is empty: no input path given")
    fs, path = filesystem(spec, storage_options)
    shown = redact(spec)
    try:
        fs.invalidate_cache()  # the instance is shared; a cached listing may be stale
        if _GLOB_CHARS.search(path) and not fs.exists(path):
            uris = _list_glob(fs, path)
            if not uris:
                raise InputSpecError(f"input is empty: no files match {shown}")
            return uris
        try:
            info = fs.info(path)
        except FileNotFoundError:
            raise InputSpecError(f"input not found: {shown}") from None
        if info.get("type") == "directory":
            uris = _list_directory(fs, path)
            if not uris:
                raise InputSpecError(f"input is empty: no files under {shown}")
            return uris
        if path.lower().endswith(_MANIFEST_SUFFIXES):
            return _read_manifest(fs, path, shown, INPUT_COLUMNS)
        return [_full_uri(fs, path)]
    except PermissionError as exc:
        raise InputSpecError(f"cannot read {shown}: permission denied ({exc})") from None


def _list_directory(fs: fsspec.AbstractFileSystem, path: str) -> list[str]:
    base = path.rstrip("/") + "/"
    found = fs.find(path, withdirs=False, detail=True)
    names = [
        name
        for name, info in found.items()
        if info.get("type") == "file" and not name.endswith("/") and not _is_hidden(name, base)
    ]
    return sorted(_full_uri(fs, name) for name in names)


def _list_glob(fs: fsspec.AbstractFileSystem, pattern: str) -> list[str]:
    magic = _GLOB_CHARS.search(pattern)
    assert magic is not None
    base = pattern[: magic.start()].rpartition("/")[0] + "/"
    # A dot the user wrote in the pattern (e.g. "data/.cache/*.png") opts in to hidden names.
    allow_hidden = any(part.startswith(".") for part in pattern[len(base):].split("/"))
    found: dict[str, Any] = fs.glob(pattern, detail=True)
    names = [
        name
        for name, info in found.items()
        if info.get("type") == "file" and not name.endswith("/")
        and (allow_hidden or not _is_hidden(name, base))
    ]
    return sorted(_full_uri(fs, name) for name in names)


# -- manifests --------------------------------------------------------------------------
def read_manifest(spec: str, columns: Sequence[str], storage_options: dict | None = None) -> dict[str, list[str]]:
    """Named URI columns of a CSV/Parquet manifest (e.g. ``image_uri``, ``mask_uri``), resolved."""
    fs, path = filesystem(spec, storage_options)
    shown = redact(spec)
    if not fs.exists(path):
        raise InputSpecError(f"input not found: {shown}")
    return {name: _read_manifest(fs, path, shown, name) for name in columns}


def _read_manifest(fs: fsspec.AbstractFileSystem, path: str, shown: str,
                   column: str | tuple[str, ...] = "uri") -> list[str]:
    """Read one URI column of a CSV/Parquet manifest (the first present of ``column``), resolving relative entries."""
    data = fs.cat_file(path)
    read = _csv_column if path.lower().endswith(".csv") else _parquet_column
    wanted = (column,) if isinstance(column, str) else column
    entries, columns = None, []
    for column in wanted:
        entries, columns = read(data, shown, column)
        if entries is not None:
            break
    if entries is None:
        names = " or ".join(f"'{c}'" for c in wanted)
        raise InputSpecError(f"manifest {shown} has no {names} column (columns: {', '.join(columns) or 'none'})")
    if not entries:
        raise InputSpecError(f"input is empty: manifest {shown} lists no files")
    base_dir = posixpath.dirname(path)
    out: list[str] = []
    for row, entry in enumerate(entries, start=1):
        if entry is None or not str(entry).strip():
            raise InputSpecError(f"manifest {shown} has an empty {column} in data row {row}")
        out.append(_resolve_entry(fs, base_dir, str(entry).strip()))
    return out


def _csv_column(data: bytes, shown: str, column: str) -> tuple[list[str | None] | None, list[str]]:
    try:
        reader = csv.DictReader(io.StringIO(data.decode("utf-8-sig")))
        columns = [c.strip() for c in (reader.fieldnames or [])]
        if column not in columns:
            return None, columns
        key = (reader.fieldnames or [])[columns.index(column)]
        return [row.get(key) for row in reader], columns
    except (UnicodeDecodeError, csv.Error) as exc:
        raise InputSpecError(f"manifest {shown} is not a readable CSV file: {exc}") from None


def _parquet_column(data: bytes, shown: str, column: str) -> tuple[list[str | None] | None, list[str]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(io.BytesIO(data))
        columns = list(parquet.schema_arrow.names)
        if column not in columns:
            return None, columns
        values = parquet.read(columns=[column]).column(column).to_pylist()
    except (pa.ArrowException, OSError) as exc:
        raise InputSpecError(f"manifest {shown} is not a readable Parquet file: {exc}") from None
    bad = next((v for v in values if v is not None and not isinstance(v, str)), None)
    if bad is not None:
        raise InputSpecError(f"manifest {shown} column '{column}' must hold strings, found {type(bad).__name__}")
    return values, columns


def _resolve_entry(fs: fsspec.AbstractFileSystem, base_dir: str, entry: str) -> str:
    """A manifest entry -> full URI; relative entries are taken from the manifest's directory."""
    if entry.startswith("file://"):
        return entry[len("file://"):] or "/"
    if SCHEME.match(entry) or entry.startswith("/"):
        return entry
    return _full_uri(fs, posixpath.normpath(posixpath.join(base_dir, entry)))


# -- sharding ---------------------------------------------------------------------------
def make_shards(uris: Sequence[str], shard_size: int) -> list[Shard]:
    """Cut the listing into consecutive fixed-size shards, the unit of work and of resume."""
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    return [
        Shard(id=i, start=start, uris=tuple(uris[start : start + shard_size]))
        for i, start in enumerate(range(0, len(uris), shard_size))
    ]


def listing_digest(uris: Sequence[str]) -> str:
    """SHA-256 of the listing, so a resume can refuse an input that changed."""
    return hashlib.sha256("\n".join(uris).encode("utf-8")).hexdigest()
