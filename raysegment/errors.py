"""The error-row policy: what an expected failure is, and the one line an error row shows.

Every stage (decode, predict, encode, tiled merge, training data, evaluation)
turns the failure of one item into that item's error row and goes on; this module
is where the row's text comes from, so every stage words failures the same way.
Every line it makes is redacted (:mod:`raysegment.redaction`): a presigned URL's
signature or an environment credential that a library put in its message never
reaches the ``error`` column, a log or the terminal.

A storage library's failure says little on its own (s3fs turns an S3 503 into
``[Errno 16] Service Unavailable``: no URL, no operation, and an errno that means
"device busy"), so :func:`storage_failure` reads the exception chain for the HTTP
status, the service's operation and the retries, and :class:`StorageError` (made by
:func:`raysegment.uri.storage_step`) adds the operation and URL raysegment was at.

It is the bottom layer: it imports nothing of raysegment but :mod:`raysegment.redaction`.
"""

from __future__ import annotations

import dataclasses
import errno
import sys
import traceback
from collections.abc import Iterator, Mapping
from types import TracebackType

from raysegment.redaction import redact, redact_text, secret_values

__all__ = [
    "InputSpecError",
    "ItemError",
    "StorageError",
    "StorageFailure",
    "describe_error",
    "describe_fatal",
    "own_error_line",
    "exception_text",
    "redacted_traceback",
    "redacting_excepthook",
    "stage_failed",
    "storage_error",
    "storage_failure",
]

#: Statuses and errnos of a store that is down, overloaded or throttling: worth a retry.
_TRANSIENT_STATUS = {408, 429, 500, 502, 503, 504}
_TRANSIENT_ERRNO = {errno.EBUSY, errno.EAGAIN, errno.ETIMEDOUT, errno.ECONNRESET, errno.ECONNREFUSED,
                    errno.ECONNABORTED, errno.EHOSTUNREACH, errno.ENETUNREACH, getattr(errno, "EREMOTEIO", errno.EIO)}
#: A service operation (S3's, or an HTTP method) as the verb a user knows.
_VERBS = (("List", "list"), ("Head", "read"), ("Get", "read"), ("Select", "read"), ("CompleteMultipart", "commit"),
          ("Copy", "copy"), ("Put", "write"), ("Upload", "write"), ("CreateMultipart", "write"),
          ("Delete", "delete"), ("GET", "read"), ("HEAD", "read"), ("PUT", "write"), ("POST", "write"),
          ("PATCH", "write"), ("DELETE", "delete"))
_TRANSIENT_HINT = "the store is unavailable or throttling: retry later"
_DENIED_HINT = ("check the credentials (for S3 the environment: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, "
                "AWS_PROFILE) and the permissions on it")
_RESUME_HINT = "rerun the same command with --resume to keep the work already done"


def is_transient_message(message: str | None) -> bool:
    """Whether an error row's message is a storage failure that outlasted the retries (worth a
    ``--resume``), as :func:`describe_error` words one."""
    return bool(message) and _TRANSIENT_HINT in message


#: raysegment's errors whose message is the whole story (no type name needed in a line).
_OWN_ERRORS = ("StorageError", "ItemError", "InputSpecError", "InputError", "OutputError", "LeaseHeld", "LeaseLost",
               "IncompleteOutputError")


class InputSpecError(ValueError):
    """The input spec names nothing usable: missing, empty, or a bad manifest."""


class ItemError(ValueError):
    """An expected failure of one item (a bad file, an input the model cannot take).

    Its message is already the clear line for the error row, so no type name is added.
    """


class StorageError(OSError):
    """A read, listing or write of storage failed; the message names the operation, the URL,
    why and what to do. An ``OSError``, so callers that catch those still do."""

    operation: str = ""
    transient: bool = False


@dataclasses.dataclass(frozen=True)
class StorageFailure:
    """What the exception chain of a storage failure says, in words."""

    reason: str  # "HTTP 503 Service Unavailable (S3 HeadObject, after 4 retries)"
    operation: str | None  # "read", "list", "write", ... when the service named it
    url: str | None  # redacted, when the error itself carries one (HTTP)
    transient: bool
    denied: bool

    @property
    def hint(self) -> str:
        return _TRANSIENT_HINT if self.transient else _DENIED_HINT if self.denied else ""


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and what caused it: ``__cause__``, ``__context__`` and a Ray error's ``cause``."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        e = todo.pop(0)
        if id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        context = None if e.__suppress_context__ else e.__context__
        todo += [c for c in (e.__cause__, context, getattr(e, "cause", None)) if isinstance(c, BaseException)]


def _verb(name: str) -> str | None:
    return next((verb for prefix, verb in _VERBS if name.startswith(prefix)), None)


def _service_failure(e: BaseException) -> StorageFailure | None:
    """botocore's ClientError (``response`` + ``operation_name``) or aiohttp's ClientResponseError (``status``)."""
    response, operation = getattr(e, "response", None), getattr(e, "operation_name", None)
    if isinstance(response, Mapping) and isinstance(response.get("Error"), Mapping) and isinstance(operation, str):
        meta = response.get("ResponseMetadata") or {}
        status = meta.get("HTTPStatusCode")
        code, message = str(response["Error"].get("Code", "")), str(response["Error"].get("Message", "")).strip()
        words = message if code.isdigit() or not code or code == message else f"{code}: {message}"
        tries = meta.get("RetryAttempts")
        retried = f", after {tries} {'retry' if tries == 1 else 'retries'}" if tries else ""
        reason = f"{f'HTTP {status} ' if status else ''}{words or code} (S3 {operation}{retried})"
        status = int(status) if isinstance(status, int) else int(code) if code.isdigit() else 0
        return StorageFailure(reason, _verb(operation), None, status in _TRANSIENT_STATUS or code == "SlowDown",
                              status in (401, 403))
    status = getattr(e, "status", None)
    info = getattr(e, "request_info", None)
    if isinstance(status, int) and info is not None:
        method = str(getattr(info, "method", "") or "")
        url = getattr(info, "real_url", None) or getattr(info, "url", None)
        reason = f"HTTP {status} {getattr(e, 'message', '') or ''}".strip()
        return StorageFailure(reason, _verb(method), redact(str(url)) if url is not None else None,
                              status in _TRANSIENT_STATUS, status in (401, 403))
    return None


def _os_failure(e: BaseException) -> StorageFailure | None:
    """A timeout, a refused or reset connection, or an OSError whose errno means a busy store."""
    if isinstance(e, TimeoutError):
        return StorageFailure(f"timed out{': ' + _first_line(str(e)) if str(e).strip() else ''}", None, None, True, False)
    if isinstance(e, ConnectionError) or type(e).__name__.startswith(("ClientConnect", "ServerDisconnected")):
        return StorageFailure(f"cannot connect: {_first_line(str(e)) or type(e).__name__}", None, None, True, False)
    if isinstance(e, PermissionError) and e.filename is None:  # a store's "Access Denied"; a local one names its file
        return StorageFailure(f"permission denied ({_first_line(str(e)) or 'access denied'})", None, None, False, True)
    if isinstance(e, OSError) and e.errno in _TRANSIENT_ERRNO:
        return StorageFailure(e.strerror or _first_line(str(e)) or "storage unavailable", None, None, True, False)
    return None


def storage_failure(exc: BaseException) -> StorageFailure | None:
    """The storage failure somewhere in ``exc``'s chain, in words; None when it is none.

    The service's own error (its HTTP status, operation and retries) is preferred
    to the ``OSError`` a filesystem library made of it.
    """
    chain = list(_chain(exc))
    for e in chain:
        found = _service_failure(e)
        if found is not None:
            return found
    return next((f for f in map(_os_failure, chain) if f is not None), None)


def storage_error(operation: str, shown: str, exc: BaseException, what: str = "") -> StorageError:
    """The :class:`StorageError` for ``exc`` raised while doing ``operation`` on ``shown`` (a redacted URL)."""
    failure = storage_failure(exc)
    reason = failure.reason if failure is not None else _first_line(exception_text(exc))
    hint = f"; {failure.hint}" if failure is not None and failure.hint else ""
    target = f"{what} {shown}" if what else shown
    error = StorageError(redact_text(f"cannot {operation} {target}: {reason}{hint}", secret_values()))
    error.operation, error.transient = operation, bool(failure and failure.transient)
    return error


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else ""


def describe_error(exc: BaseException) -> str:
    """One clear line for an error row; expected failures need no type name. Always redacted."""
    if isinstance(exc, (ItemError, StorageError)):
        line = str(exc)
    elif isinstance(exc, FileNotFoundError):
        line = f"file not found: {exc}"
    elif (isinstance(exc, OSError) or _service_failure(exc)) and (failure := storage_failure(exc)) is not None:
        at = f" on {failure.url}" if failure.url else ""
        line = f"storage {failure.operation or 'request'} failed{at}: {failure.reason}"
        line += f"; {failure.hint}" if failure.hint else ""
    else:
        text = _first_line(str(exc))
        line = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return redact_text(line, secret_values())


def describe_fatal(exc: BaseException, line: str) -> str:
    """The CLI's one line for a fatal ``exc``, from ``line`` (what ``runtime.describe_failure`` made of it).

    Where the line is a storage library's raw text (``[Errno 16] Service Unavailable``),
    that text is replaced by what the chain says (status, operation, retries, what to
    do); a line raysegment already worded is kept. A failure worth retrying says to
    rerun with ``--resume``, and the line is redacted.
    """
    ours = next((e for e in _chain(exc) if isinstance(e, StorageError)), None)
    failure = None if ours is not None else storage_failure(exc)
    if failure is not None:
        raw = next((e for e in _chain(exc) if isinstance(e, OSError) or _service_failure(e) is not None), exc)
        text = _first_line(str(raw))
        at = f" on {failure.url}" if failure.url else ""
        described = f"storage {failure.operation or 'request'} failed{at}: {failure.reason}"
        described += f"; {failure.hint}" if failure.hint else ""
        old = next((o for o in (f"{type(raw).__name__}: {text}", text) if o and o in line), None)
        if old is None:
            failure = None  # raysegment's own words for it: they stay
        else:
            line = line.replace(old, described)
    # A remote StorageError reaches the driver as text only (Ray Data keeps the traceback, not
    # the exception): its transient hint in the line says the same as its flag.
    transient = (ours is not None and ours.transient) or (failure is not None and failure.transient)
    if transient or line.endswith(_TRANSIENT_HINT):
        line += f" ({_RESUME_HINT})"
    return redact_text(line, secret_values())


def own_error_line(line: str) -> str:
    """A remote traceback's ``raysegment.errors.StorageError: cannot ...`` line as raysegment's
    own words (``cannot ...``): its errors' messages say what failed; their type adds nothing."""
    head, sep, rest = line.partition(": ")
    if sep and head.startswith("raysegment.") and head.rpartition(".")[2] in _OWN_ERRORS:
        return rest
    return line


def stage_failed(stage: str, exc: BaseException) -> str:
    """The error-row text for an item that a later stage (``inference``, ``postprocess``) failed."""
    return f"{stage} failed: {describe_error(exc)}"


def exception_text(exc: BaseException) -> str:
    """``Type: message`` (the whole message), for wrapping a library's exception in a clearer one."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def redacted_traceback(exc: BaseException, storage_options: Mapping | None = None) -> str:
    """The whole formatted traceback of ``exc`` (chained causes included), redacted.

    What ``RAYSEGMENT_DEBUG=1`` prints: URLs lose their credentials and signatures,
    and the values of secret environment variables and storage options are blanked.
    """
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return redact_text(text, secret_values(storage_options))


def redacting_excepthook(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    """A ``sys.excepthook`` that prints :func:`redacted_traceback`, so an uncaught error shows no secret."""
    if exc.__traceback__ is None:
        exc = exc.with_traceback(tb)
    sys.stderr.write(redacted_traceback(exc))
    sys.stderr.flush()
