"""Manifests: the URI columns of a CSV or Parquet file, resolved, and checked before any Ray starts.

A manifest names its files, so unlike a listing it can name files that do not exist or
the same file twice. Both are told on the driver, where they cost nothing: a URI listed
twice stays two items (the user's rows, in the user's order) with one warning, and the
entries are checked against one listing per distinct parent folder or prefix (a few
LIST calls on S3, not a HEAD per file). Missing files are counted in one warning and
become "file not found" rows; a manifest none of whose files exist is refused, so
ten thousand typos do not start a cluster.
"""

from __future__ import annotations

import csv
import io
import logging
import posixpath
from collections.abc import Sequence
from urllib.parse import urljoin, urlsplit

import fsspec

from raysegment.errors import InputSpecError
from raysegment.io.entries import full_uri, is_http
from raysegment.uri import SCHEME, filesystem, redact

__all__ = ["INPUT_COLUMNS", "MANIFEST_SUFFIXES", "MAX_EXISTENCE_LISTINGS", "read_manifest", "manifest_inputs"]

log = logging.getLogger("raysegment")

MANIFEST_SUFFIXES = (".csv", ".parquet")
#: The input column of a manifest, the first present: ``uri``, else the training/eval manifests' ``image_uri``,
#: so the manifest a model was trained or scored on can be segmented as it is.
INPUT_COLUMNS = ("uri", "image_uri")
#: At most this many folder listings check a manifest's entries exist; past it the rest
#: are left to the reads (a manifest spread over more folders costs no more LIST calls).
MAX_EXISTENCE_LISTINGS = 256


def manifest_inputs(fs: fsspec.AbstractFileSystem, path: str, shown: str, storage_options: dict | None) -> list[str]:
    """The input column (:data:`INPUT_COLUMNS`) of the manifest at ``path`` on ``fs``, duplicates and missing files told."""
    return _checked(_read_manifest(fs, path, shown, INPUT_COLUMNS), shown, storage_options)


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
    name = urlsplit(path).path if is_http(fs) else path  # a URL's query string is not its suffix
    read = _csv_column if name.lower().endswith(".csv") else _parquet_column
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
    out: list[str] = []
    for row, entry in enumerate(entries, start=1):
        if entry is None or not str(entry).strip():
            raise InputSpecError(f"manifest {shown} has an empty {column} in data row {row}")
        out.append(_resolve_entry(fs, path, str(entry).strip()))
    return out


def _checked(uris: list[str], shown: str, storage_options: dict | None) -> list[str]:
    """The manifest's items as they are, once duplicates and missing files are told (before Ray starts)."""
    seen: set[str] = set()
    duplicates = []
    for uri in uris:
        if uri in seen:
            duplicates.append(uri)
        seen.add(uri)
    if duplicates:
        log.warning(
            "manifest %s lists %d duplicate URI(s) (first: %s); each occurrence is its own item and row",
            shown, len(duplicates), redact(duplicates[0]),
        )
    missing = _missing(uris, storage_options)
    if missing:
        first = ", ".join(redact(uris[i]) for i in missing[:3]) + (", ..." if len(missing) > 3 else "")
        if len(missing) == len(uris):
            raise InputSpecError(
                f"none of the {len(uris)} file(s) listed in manifest {shown} exist (first: {first}); "
                "check its paths (relative entries are taken from the manifest's folder)"
            )
        log.warning("%d of the %d file(s) listed in manifest %s do not exist (first: %s); they become error rows",
                    len(missing), len(uris), shown, first)
    return uris


def _missing(uris: Sequence[str], storage_options: dict | None) -> list[int]:
    """Indices of entries absent from a listing of their parent folder: one ``ls`` per distinct parent.

    URLs (no listing) and folders that cannot be listed are not checked: their reads tell.
    """
    groups: dict[str, list[int]] = {}
    for i, uri in enumerate(uris):
        if not uri.lower().startswith(("http://", "https://")):
            groups.setdefault(uri.rpartition("/")[0] or "/", []).append(i)
    missing: list[int] = []
    for parent, members in list(groups.items())[:MAX_EXISTENCE_LISTINGS]:
        present = _names_in(parent, storage_options)
        if present is not None:
            missing += [i for i in members if uris[i].rpartition("/")[2] not in present]
    return sorted(missing)


def _names_in(folder: str, storage_options: dict | None) -> set[str] | None:
    """The entry names in ``folder`` (empty when it does not exist), or None when it cannot be listed."""
    try:
        fs, path = filesystem(folder, storage_options)
        if is_http(fs):
            return None
        fs.invalidate_cache(path)
        return {posixpath.basename(str(name).rstrip("/")) for name in fs.ls(path, detail=False)}
    except FileNotFoundError:
        return set()
    except Exception:  # a store that cannot list (permissions, no such operation): leave it to the reads
        return None


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


def _resolve_entry(fs: fsspec.AbstractFileSystem, manifest: str, entry: str) -> str:
    """A manifest entry -> full URI; relative entries are taken from the manifest's directory."""
    if entry.startswith("file://"):
        return entry[len("file://"):] or "/"
    if SCHEME.match(entry) or entry.startswith("/"):
        return entry
    if is_http(fs):  # a URL's folder ends before its query string
        return urljoin(manifest, entry)
    return full_uri(fs, posixpath.normpath(posixpath.join(posixpath.dirname(manifest), entry)))
