"""An unreliable object store for fault tests: a seeded fault-injecting HTTP proxy in front of moto.

Real S3 fails in two ways that retries must absorb: it answers ``503 Slow Down`` (or
``503 Service Unavailable``) with an S3 XML error body, and connections die, either
before the request reached the store or after the store did it but before the client
heard back (the ambiguous case: a write happened that the client thinks failed). This
proxy forwards every request (method, path, query, headers, body) to moto's server and
injects those faults at seeded rates, counting what it did so that a test can tell a run
that met faults from one that was merely lucky.
"""

from __future__ import annotations

import dataclasses
import http.client
import http.server
import random
import socket
import struct
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from urllib.parse import urlsplit

import pytest

#: Request headers a proxy must not pass on (hop-by-hop, RFC 9110 7.6.1); the body is re-framed.
_HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "proxy-authorization", "te", "trailer",
               "transfer-encoding", "upgrade", "expect", "content-length"}
#: The two 503 error codes S3 answers under load; s3fs retries the first itself, botocore both.
SLOW_DOWN = ("SlowDown", "Please reduce your request rate.")
UNAVAILABLE = ("ServiceUnavailable", "Service is unable to handle request.")
#: Fault kinds, as counted in :attr:`FaultyS3Proxy.counts`.
KINDS = ("slow_down", "unavailable", "drop_before", "drop_after")


@dataclasses.dataclass(frozen=True)
class Rule:
    """A fault on the first ``times`` requests matching ``method`` and ``path_contains``: a deterministic
    fault at one exact step (e.g. the reply to the lease's conditional put), beside the random ones."""

    method: str
    path_contains: str
    kind: str  # one of KINDS
    times: int = 1


class FaultyS3Proxy:
    """A threaded reverse proxy on 127.0.0.1 to ``upstream``, failing requests at seeded rates.

    ``rate_503`` of requests are answered 503 (half ``SlowDown``, half ``ServiceUnavailable``)
    without reaching the store; ``rate_drop`` lose their connection: half before the request
    is forwarded, half after the store answered (the reply cut in its body when it has one,
    else never sent). Rates can change while it runs (:meth:`set_rates`), e.g. to 0 to heal.
    """

    KINDS = KINDS

    def __init__(self, upstream: str, *, seed: int = 0) -> None:
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.rate_503 = self.rate_drop = 0.0
        self.rules: list[Rule] = []
        self.counts: Counter[str] = Counter()  # requests, requests_<METHOD>, and one per fault kind
        self.faulted: list[tuple[str, str, str]] = []  # (kind, method, path) of every injected fault
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="faulty-s3", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_port}"

    def set_rates(self, rate_503: float, rate_drop: float) -> None:
        with self._lock:
            self.rate_503, self.rate_drop = float(rate_503), float(rate_drop)

    def add_rule(self, method: str, path_contains: str, kind: str, times: int = 1) -> None:
        """Inject ``kind`` into the next ``times`` requests matching ``method`` and ``path_contains``."""
        if kind not in KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; one of {KINDS}")
        with self._lock:
            self.rules.append(Rule(method, path_contains, kind, times))

    def rules_left(self) -> list[Rule]:
        """The rules that have not fired as often as asked: steps the run never took through here."""
        with self._lock:
            return [rule for rule in self.rules if rule.times > 0]

    def clear_rules(self) -> None:
        with self._lock:
            self.rules.clear()

    def injected(self) -> int:
        return sum(self.counts[k] for k in KINDS)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    # -- one request ---------------------------------------------------------------------
    def _decide(self, method: str, path: str, headers: Mapping[str, str]) -> str | None:
        """The fault for this request (None: forward it faithfully), counted under the lock."""
        with self._lock:
            self.counts["requests"] += 1
            self.counts[f"requests_{method}"] += 1
            kind = None
            for i, rule in enumerate(self.rules):
                if rule.method == method and rule.path_contains in path and rule.times > 0:
                    self.rules[i] = dataclasses.replace(rule, times=rule.times - 1)
                    kind = rule.kind
                    break
            if kind is None:
                draw = self._rng.random()
                if draw < self.rate_503:
                    kind = "slow_down" if self._rng.random() < 0.5 else "unavailable"
                elif draw < self.rate_503 + self.rate_drop:
                    kind = "drop_before" if self._rng.random() < 0.5 else "drop_after"
            if kind is not None:
                self.counts[kind] += 1
                self.faulted.append((kind, method, path))
            return kind

    def _forward(self, method: str, path: str, headers: list[tuple[str, str]],
                 body: bytes) -> tuple[int, str, list[tuple[str, str]], bytes]:
        conn = http.client.HTTPConnection(*self.upstream, timeout=60)
        try:
            conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
            for name, value in headers:
                conn.putheader(name, value)
            if body or method in ("PUT", "POST"):
                conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body or None)
            resp = conn.getresponse()
            data = resp.read()
            return resp.status, resp.reason, resp.getheaders(), data
        finally:
            conn.close()

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as S3 clients expect

            def _body(self) -> bytes:
                if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass  # trailers
                            return b"".join(chunks)
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _hang_up(self) -> None:
                """Close the connection with a reset, as a dying load balancer does."""
                self.close_connection = True
                try:
                    self.wfile.flush()
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.connection.close()
                except OSError:
                    pass

            def _error_503(self, code: str, message: str) -> None:
                body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}'
                        f"</Message><RequestId>{uuid.uuid4().hex[:16].upper()}</RequestId>"
                        f"<HostId>faulty-s3</HostId></Error>").encode()
                self.send_response_only(503, "Slow Down" if code == SLOW_DOWN[0] else "Service Unavailable")
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _handle(self) -> None:
                body = self._body()
                kind = proxy._decide(self.command, self.path, self.headers)
                if kind == "drop_before":
                    return self._hang_up()
                if kind in ("slow_down", "unavailable"):
                    return self._error_503(*(SLOW_DOWN if kind == "slow_down" else UNAVAILABLE))
                headers = [(k, v) for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP]
                status, reason, reply, data = proxy._forward(self.command, self.path, headers, body)
                if kind == "drop_after" and not data:
                    return self._hang_up()  # the store did it; the client never hears
                self.send_response_only(status, reason)
                for name, value in reply:
                    if name.lower() not in _HOP_BY_HOP or (name.lower() == "content-length" and self.command == "HEAD"):
                        self.send_header(name, value)
                if self.command != "HEAD":
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if kind == "drop_after":  # the reply cut in its body
                    self.wfile.write(data[: len(data) // 2])
                    return self._hang_up()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _handle

            def log_message(self, *args: object) -> None:
                pass

        return Handler


@pytest.fixture
def faulty_s3(s3_server: str) -> Iterator[Callable[..., FaultyS3Proxy]]:
    """Make fault-injecting proxies in front of the session's moto server: ``faulty_s3(seed=1)``."""
    made: list[FaultyS3Proxy] = []

    def make(seed: int = 0) -> FaultyS3Proxy:
        made.append(FaultyS3Proxy(s3_server, seed=seed))
        return made[-1]

    yield make
    for proxy in made:
        proxy.close()
