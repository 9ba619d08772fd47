"""URIs and filesystems: the bottom layer every other module reads and writes through.

One home for what every layer needs of a URI: the fsspec filesystem behind it,
its bytes, a range-read handle, a loggable (credential-free) form, its stem and
extension, and a join that cannot leave an output root. It imports nothing else
of raysegment but :mod:`raysegment.errors`, so any module may use it.
"""

from __future__ import annotations

import posixpath
import re
from typing import Any
from urllib.parse import unquote, urlsplit

import fsspec
from fsspec.core import url_to_fs

from raysegment.errors import InputSpecError

__all__ = [
    "SCHEME",
    "RANGE_BLOCK_SIZE",
    "filesystem",
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
_SECRET_WORDS = ("signature", "credential", "token", "secret", "password", "key")
_SECRET_NAMES = {"sig"}  # Azure SAS signature


def filesystem(spec: str, storage_options: dict | None) -> tuple[fsspec.AbstractFileSystem, str]:
    """Resolve ``spec`` to (filesystem, path), naming the extra to install if one is missing."""
    try:
        return url_to_fs(spec, **(storage_options or {}))
    except ImportError as exc:
        protocol = spec.split("://", 1)[0].lower() if "://" in spec else "file"
        extra = _EXTRAS.get(protocol)
        hint = f"pip install 'raysegment[{extra}]'" if extra else f"install the fsspec backend for '{protocol}'"
        raise InputSpecError(f"cannot read {redact(spec)}: support for '{protocol}://' is not installed ({hint})") from exc
    except ValueError as exc:  # "Protocol not known: foo"
        raise InputSpecError(f"cannot read {redact(spec)}: {exc}") from exc


def read_bytes(uri: str, storage_options: dict | None = None) -> bytes:
    """Read one whole object; items are decoded from memory, never streamed."""
    fs, path = filesystem(uri, storage_options)
    return fs.cat_file(path)


def open_ranged(fs: Any, path: str) -> Any:
    """Open ``path`` for small range reads (readahead cache of one small block)."""
    return fs.open(path, "rb", block_size=RANGE_BLOCK_SIZE, cache_type="readahead")


def redact(uri: str) -> str:
    """Strip credentials (userinfo, secret-looking query values) so a URI can be logged."""
    if "://" not in uri:
        return uri
    scheme, rest = uri.split("://", 1)
    rest, hash_, fragment = rest.partition("#")
    rest, qmark, query = rest.partition("?")
    authority, slash, tail = rest.partition("/")
    if "@" in authority:
        authority = authority.rpartition("@")[2]
    if query:
        query = "&".join(_redact_param(p) for p in query.split("&"))
    return f"{scheme}://{authority}{slash}{tail}{qmark}{query}{hash_}{fragment}"


def _redact_param(param: str) -> str:
    name, eq, _ = param.partition("=")
    lowered = unquote(name).lower()
    if eq and (lowered in _SECRET_NAMES or any(word in lowered for word in _SECRET_WORDS)):
        return f"{name}=REDACTED"
    return param


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
