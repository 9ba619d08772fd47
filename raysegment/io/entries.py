"""What a listing entry is: its URI, and for a local one, a regular file, a link to one, or a problem worth one line.

A directory or glob listing keeps every entry it sees (see :mod:`raysegment.io.sources`),
links and special files included, so that none vanishes without a row. The reason an
entry cannot be read is worked out again where it is read (:func:`read_item`, in the
decode stage), from the path alone: the listing then needs to carry nothing but URIs,
and the error row names the entry as the user sees it (the link, not its target).

Nothing here opens a file that is not regular: opening a FIFO waits for a writer and a
character device never ends, so either would hang a worker instead of failing one item.
"""

from __future__ import annotations

import errno
import os
import stat

import fsspec
from fsspec.implementations.local import LocalFileSystem

from raysegment.errors import ItemError
from raysegment.uri import SCHEME, read_bytes

__all__ = ["full_uri", "is_http", "is_within", "is_local", "local_path", "entry_problem", "read_item"]

_KINDS = (
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


# -- names ------------------------------------------------------------------------------
def full_uri(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """A path as returned by ``fs`` -> a URI with protocol (plain absolute path for local files)."""
    if isinstance(fs, LocalFileSystem):
        return path
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    if protocol == "memory":  # memory paths carry a root "/"; keep the short "memory://x" form
        return f"memory://{path.lstrip('/')}"
    return fs.unstrip_protocol(path)


def is_http(fs: fsspec.AbstractFileSystem) -> bool:
    """Whether ``fs`` reads URLs: one object each, never listed, a ``?`` starting a query string."""
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
    return any(p in ("http", "https") for p in protocols)


def is_within(path: str, folder: str) -> bool:
    """Whether ``path`` is ``folder`` or lies below it (plain string paths, ``/`` separated)."""
    folder = folder.rstrip("/")
    return path == folder or path.startswith(folder + "/") or (not folder and path.startswith("/"))


# -- local entries ----------------------------------------------------------------------
def is_local(uri: str) -> bool:
    """Whether ``uri`` names a path on this machine's filesystem (plain path or ``file://``)."""
    return uri.startswith("file://") or not SCHEME.match(uri)


def local_path(uri: str) -> str:
    """The plain path of a local URI (``file://`` dropped)."""
    return (uri[len("file://"):] or "/") if uri.startswith("file://") else uri


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def entry_problem(path: str) -> str | None:
    """The one line saying why local ``path`` is not a readable file, or None when it is one.

    A missing path is None too: the read then says "file not found", as for any store.
    """
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        return None
    if not stat.S_ISLNK(mode):
        if stat.S_ISDIR(mode):
            return f"{path} is a directory, not a file"
        if not stat.S_ISREG(mode):
            return f"{path} is not a regular file ({_kind(mode)}); only regular files are read"
        return None
    return _link_problem(path)


def _link_problem(path: str) -> str | None:
    try:
        dest = os.readlink(path)
    except OSError:
        dest = "?"
    try:
        target = os.stat(path).st_mode
    except FileNotFoundError:
        return f"broken symbolic link {path} -> {dest}: its target does not exist"
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return f"symbolic link loop at {path} -> {dest}: the links never reach a file"
        return f"symbolic link {path} -> {dest} cannot be followed: {exc.strerror or exc}"
    if stat.S_ISDIR(target):
        real = os.path.realpath(path)
        if is_within(os.path.realpath(os.path.dirname(path)), real):
            return f"symbolic link loop at {path} -> {dest}: it links to a folder that contains it; not followed"
        return (
            f"symbolic link {path} -> {dest} is a link to a directory; not followed (a glob does not enter "
            "linked folders and a directory listing enters each linked folder once): list that folder itself"
        )
    if not stat.S_ISREG(target):
        return f"symbolic link {path} -> {dest}: its target is not a regular file ({_kind(target)})"
    return None


def read_item(uri: str, storage_options: dict | None = None) -> bytes:
    """The bytes of one input item; a local entry that is not a readable file is an :class:`ItemError`.

    The check costs one ``lstat`` (two for a link) and is what keeps a FIFO or a
    device in an input folder from blocking the read.
    """
    if is_local(uri):
        problem = entry_problem(local_path(uri))
        if problem is not None:
            raise ItemError(problem)
    return read_bytes(uri, storage_options)
