"""URIs and filesystems: the bottom layer every other module reads and writes through.

One home for what every layer needs of a URI: the fsspec filesystem behind it,
its bytes, a range-read handle, a loggable (credential-free) form, its stem and
extension, and a join that cannot leave an output root. It imports nothing else
of raysegment but :mod:`raysegment.errors` and :mod:`raysegment.redaction`, so any
module may use it.

:func:`filesystem` is where a URL becomes a filesystem, so it is also where a URL
carrying credentials (``s3://KEY:SECRET@bucket/...``) is refused: inputs, outputs,
checkpoints, weights and run storage all pass through it, and a secret in a URL would
otherwise reach logs, error rows, process lists and shell history. :func:`storage_step`
gives a failed read, listing or write the one line that names the operation and the
(redacted) URL, which the storage library's own ``[Errno 16] Service Unavailable`` does not.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import re
import stat
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import fsspec
from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem

from raysegment.errors import InputSpecError, ItemError, StorageError, storage_error
from raysegment.redaction import redact, split_userinfo

__all__ = [
    "SCHEME",
    "RANGE_BLOCK_SIZE",
    "filesystem",
    "refuse_credentials",
    "storage_step",
    "read_bytes",
    "open_ranged",
    "redact",
    "join_inside",
    "stem",
    "safe_stem",
    "extension",
]

#: ``scheme://`` at the start of a URI.
SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")
#: fsspec block size for range reads: small, so a tile read does not fetch
#: megabytes around it (s3fs defaults to 50 MiB blocks).
RANGE_BLOCK_SIZE = 256 * 1024

_EXTRAS = {"s3": "s3", "s3a": "s3", "gs": "gs", "gcs": "gs"}
#: Schemes where ``name@`` before the host is no credential: a user name (sftp, ftp, smb) or an
#: Azure container (``abfs://container@account.dfs.core.windows.net``). A ``user:password@`` is
#: refused for every scheme.
_NAME_BEFORE_HOST = {"sftp", "ssh", "ftp", "smb", "abfs", "abfss", "az", "adl", "hdfs", "webhdfs"}
#: Where the credentials of a store go instead of its URLs.
_CREDENTIALS_GO = {
    "s3": "the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN), a profile "
          "in ~/.aws/credentials chosen with AWS_PROFILE, or storage_options={'key': ..., 'secret': ...} "
          "in the Python API",
    "gs": "GOOGLE_APPLICATION_CREDENTIALS (a service-account JSON file), `gcloud auth application-default "
          "login`, or storage_options={'token': ...} in the Python API",
    "az": "the environment (AZURE_STORAGE_ACCOUNT_NAME with AZURE_STORAGE_ACCOUNT_KEY or AZURE_STORAGE_SAS_TOKEN, "
          "or AZURE_STORAGE_CONNECTION_STRING), or storage_options in the Python API",
    "http": "a presigned URL (its signature is redacted wherever raysegment shows it), or "
            "storage_options={'headers': {'Authorization': ...}} in the Python API",
}
_CREDENTIAL_FAMILY = {"s3": "s3", "s3a": "s3", "gs": "gs", "gcs": "gs", "abfs": "az", "abfss": "az", "az": "az",
                      "adl": "az", "http": "http", "https": "http"}
#: What :func:`storage_step` lets through unchanged: callers test for these types, and
#: raysegment's own errors already say what failed.
_PASS_THROUGH = (FileNotFoundError, IsADirectoryError, NotADirectoryError, StorageError, InputSpecError,
                 ItemError, MemoryError)


def refuse_credentials(spec: str) -> None:
    """Refuse a URL that carries credentials, saying where they go instead; the secret is never echoed."""
    for link in spec.split("::"):  # chained URLs: simplecache::s3://..., zip://a::s3://...
        info, _ = split_userinfo(link)
        if info is None:
            continue
        scheme = link.split("://", 1)[0].lower()
        if ":" not in info and scheme in _NAME_BEFORE_HOST:
            continue
        where = _CREDENTIALS_GO.get(_CREDENTIAL_FAMILY.get(scheme, ""),
                                    "storage_options in the Python API or the storage backend's own configuration")
        raise InputSpecError(
            f"{redact(spec)}: credentials in a URL are refused (they would show in logs, error rows and the "
            f"process list); remove the 'user:secret@' part and give them through {where} "
            "(the command line reads credentials from the environment only)"
        )


def filesystem(spec: str, storage_options: dict | None) -> tuple[fsspec.AbstractFileSystem, str]:
    """Resolve ``spec`` to (filesystem, path), naming the extra to install if one is missing.

    A URL with credentials in it is refused first (:func:`refuse_credentials`).
    """
    refuse_credentials(spec)
    try:
        return url_to_fs(spec, **(storage_options or {}))
    except ImportError as exc:
        protocol = spec.split("://", 1)[0].lower() if "://" in spec else "file"
        extra = _EXTRAS.get(protocol)
        hint = f"pip install 'raysegment[{extra}]'" if extra else f"install the fsspec backend for '{protocol}'"
        raise InputSpecError(f"cannot open {redact(spec)}: support for '{protocol}://' is not installed ({hint})") from exc
    except ValueError as exc:  # "Protocol not known: foo"
        raise InputSpecError(f"cannot open {redact(spec)}: {exc}") from exc


@contextlib.contextmanager
def storage_step(operation: str, url: str, what: str = "") -> Iterator[None]:
    """Run one storage operation (``read``, ``list``, ``write``, ``commit``) on ``url``; a failure
    becomes a :class:`~raysegment.errors.StorageError` naming both, why, and what to do.

    A missing file, a directory where a file was expected and raysegment's own errors
    pass through unchanged, since callers tell those apart by type.
    """
    try:
        yield
    except _PASS_THROUGH:
        raise
    except Exception as exc:
        raise storage_error(operation, redact(url), exc, what=what) from exc


def read_bytes(uri: str, storage_options: dict | None = None) -> bytes:
    """Read one whole object; items are decoded from memory, never streamed.

    A local FIFO or device (listings keep them, so they become error rows) is refused
    unopened: reading one would wait for a writer or never end.
    """
    fs, path = filesystem(uri, storage_options)
    _refuse_special(fs, path)
    with storage_step("read", uri):
        return fs.cat_file(path)


def open_ranged(fs: Any, path: str) -> Any:
    """Open ``path`` for small range reads (readahead cache of one small block); a FIFO or device is refused."""
    _refuse_special(fs, path)
    return fs.open(path, "rb", block_size=RANGE_BLOCK_SIZE, cache_type="readahead")


def _refuse_special(fs: Any, path: str) -> None:
    """An :class:`ItemError` for a local FIFO, socket or device, which is never opened."""
    if not isinstance(fs, LocalFileSystem):
        return
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return  # missing, a loop, ...: the read raises what it is
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise ItemError(f"{path} is not a regular file (a FIFO, socket or device); only regular files are read")


def join_inside(root: str, relative: str) -> str:
    """Join ``relative`` under ``root``, refusing anything that would land outside it.

    Output names can derive from input names, so they are treated as untrusted.
    """
    if not root:
        raise ValueError("output root is empty")
    if not relative or "\x00" in relative:
        raise ValueError(f"invalid relative path {relative!r}")
    if relative.startswith(("/", "\\")) or SCHEME.match(relative) or re.match(r"^[A-Za-z]:[/\\]", relative):
        raise ValueError(f"path {relative!r} must be relative to the output root")
    parts = [p for p in re.split(r"[/\\]", relative) if p not in ("", ".")]
    if ".." in parts:
        raise ValueError(f"path {relative!r} escapes the output root")
    if not parts:
        raise ValueError(f"path {relative!r} names no file under the output root")
    joined = "/".join(parts)
    stripped = root.rstrip("/")
    if stripped and not stripped.endswith(":"):
        return f"{stripped}/{joined}"
    return f"{root}{joined}" if root.endswith("/") else f"{root}/{joined}"  # "/" or "s3://"


def stem(uri: str) -> str:
    """The file name without directory, query or extension: what pairing rules match on."""
    return posixpath.splitext(posixpath.basename(uri.split("?", 1)[0]))[0]


def extension(uri: str) -> str:
    """Lower-case extension with its dot, ``.nii.gz`` kept whole; query strings ignored."""
    path = urlsplit(uri).path if "://" in uri else uri
    name = posixpath.basename(path).lower()
    if name.endswith(".nii.gz"):
        return ".nii.gz"
    return posixpath.splitext(name)[1]


def safe_stem(uri: str) -> str:
    """A file-name-safe stem of an input (its extension per :func:`extension` dropped), for side files."""
    name = uri.rstrip("/").rsplit("/", 1)[-1].split("?", 1)[0]
    name = name[: len(name) - len(extension(name))]
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)[:80] or "scene"
