"""Input listing and sharding over fsspec.

A job's input is one string: a directory or object prefix, a glob, a manifest
(``.csv`` / ``.parquet`` with a ``uri`` column, or the ``image_uri`` column of a
training/eval manifest) or a single file. It is turned
into an ordered list of full URIs once, on the driver, and cut into fixed-size
shards; the digest of the listing lets a resumed job check it sees the same input.

Every entry a listing sees is accounted for: it becomes an item (whose read may fail
into an error row naming it) or one warning says why it was left out.

* **Links.** Symbolic links are listed under the link's own path. A link to a file is
  an item like the file. A dangling link, a link loop, a link to a FIFO or device, and a
  link to a directory that is not followed are items too, and their read fails with one
  line naming the link (:func:`raysegment.io.entries.read_item`), so each is an error row;
  a FIFO or device itself is such an item as well, never opened. A *directory* listing
  follows a link to a directory once, listing its files under the link's path, unless
  the link's real target is, holds or lies inside a folder already listed (the input
  itself, or another linked folder): following it would loop or list files twice. A glob
  never enters a linked folder (nor does a shell's ``**``).
* **Output folders.** A folder below the input that holds ``_raysegment.json`` is a
  raysegment output: its Parquet parts and ``_masks/`` rasters are not inputs, so the
  listing leaves it out with one warning. An input that is itself an output folder is
  listed as asked. :func:`refuse_output_inside_input` refuses a job whose OUTPUT its
  own INPUT listing would reach.
* **Globs.** A spec is a glob only when it holds ``*``, ``?`` or ``[`` and does not
  exist as written, so a file named ``a?b.png`` or ``c[1].png`` is itself; an
  ``http(s)://`` URL is never a glob (its ``?`` starts a query string) and is one item
  (or a manifest). Inside a pattern, bracket a literal glob character: ``[?]``,
  ``[*]``, ``[[]`` (``scan[[]1]/*.png`` lists ``scan[1]/``).
* **Manifests** keep the user's order; a URI listed twice is two items (one warning
  counts the duplicates). Before any Ray starts, the entries are checked against one
  listing per distinct parent folder or prefix (a few LIST calls, not a HEAD per file):
  one warning counts the missing ones, which become "file not found" rows, and a
  manifest none of whose files exist is refused.

Errors about the input spec are :class:`InputSpecError` with one-line messages,
because the CLI shows them to users without a traceback.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import logging
import os
import posixpath
import re
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

import fsspec
from fsspec.implementations.local import LocalFileSystem

from raysegment.errors import InputSpecError
from raysegment.io.entries import entry_problem, full_uri, is_http, is_within
from raysegment.io.manifests import INPUT_COLUMNS, MANIFEST_SUFFIXES, manifest_inputs, read_manifest
from raysegment.uri import filesystem, redact, storage_step

__all__ = [
    "InputSpecError",
    "INPUT_COLUMNS",
    "OUTPUT_MARKER",
    "Shard",
    "list_inputs",
    "read_manifest",
    "refuse_output_inside_input",
    "make_shards",
    "listing_digest",
]

log = logging.getLogger("raysegment")

_GLOB_CHARS = re.compile(r"[*?\[]")
#: The file that marks a raysegment output folder (``output/root.py`` writes it; named here
#: too because the output layer imports this module).
OUTPUT_MARKER = "_raysegment.json"


@dataclasses.dataclass(frozen=True)
class Shard:
    """A consecutive chunk of the listing; ``start`` is its first item's index."""

    id: int
    start: int
    uris: tuple[str, ...]


# -- paths ----------------------------------------------------------------------------
def _is_hidden(path: str, base: str) -> bool:
    """Whether any component of ``path`` below ``base`` starts with a dot."""
    rel = path[len(base):] if path.startswith(base) else path
    return any(part.startswith(".") for part in rel.split("/") if part)


def _is_glob(fs: fsspec.AbstractFileSystem, path: str) -> bool:
    """A glob holds a glob character and does not exist as written (a file may be named ``a?b.png``)."""
    return bool(_GLOB_CHARS.search(path)) and not is_http(fs) and not fs.exists(path)


def _glob_base(pattern: str) -> str:
    """The fixed folder of a glob, with a trailing slash: everything before the first glob character's component."""
    magic = _GLOB_CHARS.search(pattern)
    assert magic is not None
    return pattern[: magic.start()].rpartition("/")[0] + "/"


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
    if is_http(fs):  # a URL is one object: its "?" starts a query string, and it cannot be listed
        if urlsplit(path).path.lower().endswith(MANIFEST_SUFFIXES):
            return manifest_inputs(fs, path, shown, storage_options)
        return [path]
    try:
        fs.invalidate_cache()  # the instance is shared; a cached listing may be stale
        if _is_glob(fs, path):
            uris = _list_glob(fs, path)
            if not uris:
                raise InputSpecError(f"input is empty: no files match {shown}")
            return uris
        try:
            info = fs.info(path)
        except OSError as exc:  # a broken link or a loop as the input itself: say which
            problem = entry_problem(path) if isinstance(fs, LocalFileSystem) else None
            if problem is not None:
                raise InputSpecError(f"input: {problem}") from None
            if isinstance(exc, FileNotFoundError):
                raise InputSpecError(f"input not found: {shown}") from None
            raise
        if info.get("type") == "directory":
            uris = _list_directory(fs, path)
            if not uris:
                raise InputSpecError(f"input is empty: no files under {shown}")
            return uris
        if path.lower().endswith(MANIFEST_SUFFIXES):
            return manifest_inputs(fs, path, shown, storage_options)
        return [full_uri(fs, path)]
    except PermissionError as exc:
        raise InputSpecError(f"cannot read {shown}: permission denied ({exc})") from None


def _list_directory(fs: fsspec.AbstractFileSystem, path: str) -> list[str]:
    root = path.rstrip("/") or "/"
    base = root.rstrip("/") + "/"
    trees = [os.path.realpath(root)] if isinstance(fs, LocalFileSystem) else []
    names = _walk(fs, root, base, trees)
    markers = {posixpath.dirname(n) for n in names if posixpath.basename(n) == OUTPUT_MARKER}
    names = _skip_output_folders(names, root, markers.__contains__)
    return sorted(full_uri(fs, name) for name in names)


def _walk(fs: fsspec.AbstractFileSystem, folder: str, base: str, trees: list[str]) -> list[str]:
    """Every non-hidden entry under ``folder`` but directories; linked folders followed once (``trees``: real paths listed)."""
    names: list[str] = []
    for name, info in sorted(fs.find(folder, withdirs=False, detail=True).items()):
        if name.endswith("/") or info.get("type") == "directory" or _is_hidden(name, base):
            continue
        if trees and info.get("islink") and os.path.isdir(name):
            real = os.path.realpath(name)
            if not any(is_within(real, t) or is_within(t, real) for t in trees):
                trees.append(real)
                names.extend(_walk(fs, name, base, trees))
                continue
        names.append(name)  # a file, or an entry whose read will say what is wrong with it
    return names


def _skip_output_folders(names: list[str], root: str, is_output: Callable[[str], bool]) -> list[str]:
    """``names`` without those inside a raysegment output folder below ``root`` (one warning names them)."""
    found: dict[str, bool] = {}
    skipped: dict[str, int] = {}
    kept = []
    for name in names:
        folder, inside = posixpath.dirname(name), None
        while folder != root and is_within(folder, root) and folder not in ("", "/"):
            if folder not in found:
                found[folder] = is_output(folder)
            if found[folder]:
                inside = folder
            folder = posixpath.dirname(folder)
        if inside is None:
            kept.append(name)
        else:
            skipped[inside] = skipped.get(inside, 0) + 1
    if skipped:
        folders = sorted(skipped)
        log.warning(
            "skipped %d file(s) in %d raysegment output folder(s) under the input (%s%s): outputs are not inputs",
            sum(skipped.values()), len(folders), ", ".join(redact(f) for f in folders[:3]),
            ", ..." if len(folders) > 3 else "",
        )
    return kept


def _list_glob(fs: fsspec.AbstractFileSystem, pattern: str) -> list[str]:
    base = _glob_base(pattern)
    # A dot the user wrote in the pattern (e.g. "data/.cache/*.png") opts in to hidden names.
    allow_hidden = any(part.startswith(".") for part in pattern[len(base):].split("/"))
    found: dict[str, Any] = fs.glob(pattern, detail=True)
    names = [
        name
        for name, info in sorted(found.items())
        if info.get("type") != "directory" and not name.endswith("/")
        and (allow_hidden or not _is_hidden(name, base))
    ]
    names = _skip_output_folders(names, base.rstrip("/") or "/", lambda d: fs.exists(f"{d}/{OUTPUT_MARKER}"))
    return sorted(full_uri(fs, name) for name in names)


def refuse_output_inside_input(spec: str, output: str, storage_options: dict | None = None) -> None:
    """Refuse (one :class:`InputSpecError` line) an OUTPUT that the INPUT's own listing would reach.

    A directory input is listed recursively, so any OUTPUT at or below it is refused; a
    glob only when it could match a path inside OUTPUT (``/data/*.png`` with
    ``/data/out`` is fine, ``/data/**/*.tif`` is not). A manifest names its files, so it
    never is. Otherwise a rerun would list the first run's Parquet parts as images, and
    a resume would see a different input.
    """
    fs, path = filesystem(spec, storage_options)
    out_fs, out_path = filesystem(output, storage_options)
    if type(fs) is not type(out_fs) or is_http(fs):
        return
    local = isinstance(fs, LocalFileSystem)
    real: Callable[[str], str] = os.path.realpath if local else (lambda p: p.rstrip("/") or "/")
    target = real(out_path)
    if _is_glob(fs, path):
        folder = real(_glob_base(path))
        if not is_within(target, folder):
            return
        parts = [p for p in path[len(_glob_base(path)):].split("/") if p]
        if not _glob_reaches(parts, [p for p in target[len(folder):].split("/") if p]):
            return
        where = f"the folder {redact(full_uri(fs, folder))} that the input glob {redact(spec)} matches in"
    else:
        try:
            with storage_step("list", spec, "the input"):
                if fs.info(path).get("type") != "directory":
                    return
        except (FileNotFoundError, PermissionError):
            return  # list_inputs says what is wrong with the input
        folder = real(path)
        if not is_within(target, folder):
            return
        where = f"the input folder {redact(spec)}"
    raise InputSpecError(
        f"output {redact(output)} lies inside {where}: the run would read its own output as input; "
        "choose an OUTPUT outside the input (e.g. beside it)"
    )


def _glob_reaches(pattern: list[str], folder: list[str]) -> bool:
    """Whether a glob (components below its base) can match a path inside ``folder`` (components below the base)."""
    for i, name in enumerate(folder):
        if i >= len(pattern):
            return False
        if "**" in pattern[i]:
            return True
        if not fnmatch.fnmatchcase(name, pattern[i]):
            return False
    return len(pattern) > len(folder)  # the matches lie deeper than the folder: inside it


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
