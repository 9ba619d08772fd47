"""Redaction: the credential-free form of a URL, of a message, and of a traceback.

Everything raysegment shows or stores (the CLI's one line, logs, the ``error``
column of the output, ``RAYSEGMENT_DEBUG=1`` tracebacks) passes through here, so
a secret that reached an exception message by any route (userinfo in a URL, a
presigned URL's signature, a credential from the environment or the storage
options) is replaced before anyone can read it. The output's ``uri`` column takes
:func:`redact` too (the encode stage applies it), so presigned signatures never
land in Parquet; the rows of a run still pair with its inputs by ``index``.

It is the bottom layer: it imports nothing of raysegment, so :mod:`raysegment.uri`
and :mod:`raysegment.errors` can both build on it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from urllib.parse import quote, unquote

__all__ = ["REDACTED", "MIN_SECRET_LENGTH", "redact", "split_userinfo", "redact_text", "secret_values"]

REDACTED = "REDACTED"
#: Environment values shorter than this are not searched for: ``1`` or ``true`` would
#: blank half a message, and no real credential is that short.
MIN_SECRET_LENGTH = 8

#: Words that make a query parameter, an environment variable or a storage option a secret.
_SECRET_WORDS = ("signature", "credential", "token", "secret", "password", "passwd", "key", "auth",
                 "connection_string")
_SECRET_NAMES = {"sig"}  # Azure SAS signature
#: Words of an environment variable's name (split at ``_``) that make its value a secret:
#: whole words, so ``PIP_KEYRING_PROVIDER`` is not one and ``AWS_ACCESS_KEY_ID`` is.
_ENV_WORDS = {"SECRET", "TOKEN", "PASSWORD", "PASSWD", "KEY", "CREDENTIAL", "CREDENTIALS", "AUTH", "SIGNATURE", "SAS"}
#: Environment variables holding credentials whose names carry none of those words.
_SECRET_ENV = {"AZURE_STORAGE_CONNECTION_STRING"}
#: A URL inside free text: a scheme, then anything up to a space, a quote or a bracket.
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>()\[\]{}`]+")
_PORT = re.compile(r"^[^:]*:\d*$")  # host:port, which is no password


def split_userinfo(uri: str) -> tuple[str | None, str]:
    """(userinfo, the URI without it) of one ``scheme://`` URI; userinfo is None when there is none.

    Besides the standard ``scheme://user:pw@host/...`` this recognises a pasted AWS
    secret that holds ``/`` (``s3://AKIA:ab/cd+ef@bucket/x``), which a URL parser would
    read as a host ``AKIA:ab`` and a path, and so would leave the secret in plain sight.
    """
    if "://" not in uri:
        return None, uri
    scheme, rest = uri.split("://", 1)
    end = min((i for i in (rest.find("?"), rest.find("#")) if i >= 0), default=len(rest))
    head, tail = rest[:end], rest[end:]
    authority = head.partition("/")[0]
    if "@" in authority:  # the last @ of the authority: a path may hold @ as well
        info, _, host = authority.rpartition("@")
        return info, f"{scheme}://{host}{head[len(authority):]}{tail}"
    if ":" in authority and not _PORT.match(authority) and "@" in head:
        info, _, remainder = head.partition("@")
        return info, f"{scheme}://{remainder}{tail}"
    return None, uri


def redact(uri: str) -> str:
    """Strip credentials (userinfo, secret-looking query values) so a URI can be logged.

    Chained URLs (``simplecache::s3://...``, ``zip://a.png::s3://...``) are redacted link by link.
    """
    if "::" in uri:
        return "::".join(redact(part) for part in uri.split("::"))
    if "://" not in uri:
        return uri
    _, uri = split_userinfo(uri)
    rest, hash_, fragment = uri.partition("#")
    rest, qmark, query = rest.partition("?")
    if query:
        query = "&".join(_redact_param(p) for p in query.split("&"))
    return f"{rest}{qmark}{query}{hash_}{fragment}"


def _redact_param(param: str) -> str:
    name, eq, _ = param.partition("=")
    if eq and _is_secret_name(name):
        return f"{name}={REDACTED}"
    return param


def _is_secret_name(name: str) -> bool:
    lowered = unquote(name).lower()
    return lowered in _SECRET_NAMES or any(word in lowered for word in _SECRET_WORDS)


def _is_secret_env(name: str) -> bool:
    upper = name.upper()
    return upper in _SECRET_ENV or bool(_ENV_WORDS.intersection(re.split(r"[^A-Z0-9]+", upper)))


def redact_text(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with every known secret value and every URL's credentials replaced.

    ``secrets`` are literal values (see :func:`secret_values`); each is also searched
    for in its URL-encoded form, as it would appear inside a query string.
    """
    values = {s for s in secrets if s}
    values |= {quote(s, safe="") for s in values}
    for value in sorted(values, key=len, reverse=True):  # a longer secret may contain a shorter one
        text = text.replace(value, REDACTED)
    return _URL_IN_TEXT.sub(_redact_match, text)


def _redact_match(match: re.Match[str]) -> str:
    """One URL found in text; punctuation that ends the sentence (``url: reason``) is not part of it."""
    url = match.group(0)
    end = len(url.rstrip(".,;:!?"))
    return redact(url[:end]) + url[end:]


def secret_values(storage_options: Mapping | None = None, environ: Mapping[str, str] | None = None) -> list[str]:
    """The credential values a message must never show: from the environment and the storage options.

    An environment variable counts when a word of its name is secret, token, password,
    key, credential(s), auth or sas (``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``,
    ``AWS_ACCESS_KEY_ID``, ``AZURE_STORAGE_ACCOUNT_KEY``, ...) and its value is at least
    :data:`MIN_SECRET_LENGTH` long; a storage option (at any depth, e.g. inside
    ``client_kwargs`` or ``headers``) when its key says so.
    """
    env = os.environ if environ is None else environ
    found = [v for k, v in env.items() if len(v) >= MIN_SECRET_LENGTH and _is_secret_env(k)]
    found += [v for v in _option_secrets(storage_options or {}) if len(v) >= 4]
    return found


def _option_secrets(options: Mapping) -> list[str]:
    out: list[str] = []
    for key, value in options.items():
        if isinstance(value, Mapping):
            out += _option_secrets(value)
        elif isinstance(value, str) and _is_secret_name(str(key)):
            out.append(value)
    return out
