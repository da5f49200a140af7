"""What an orchestrator asks the worker over HTTP: ``/metrics``, ``/livez`` and ``/readyz`` on
one port, served by a small asyncio HTTP/1.1 server, and ``health``, the client that
``python -m worker health`` runs as an exec probe.

``/livez`` (``Liveness``) follows Karafka's liveness listener: a consumer that is stuck must be
restarted, and two signs give it away. It answers 503 when
- ``poll_ttl``: the fetch loop has not polled for ``poll_ttl`` seconds (the consumer calls
  ``polled()`` each time a fetch returns, records or none), e.g. stuck in a rebalance; the
  TTL must exceed the longest wait the loop is allowed (a full in-flight window, a drain);
- ``record_ttl``: a record has been in flight (``started(key)`` .. ``finished(key)``) for
  more than ``record_ttl`` seconds, far past what its sends and retries are bounded by.
The body is JSON naming the failing signs, with the seconds since the last poll and the age of
the oldest record in flight. The clock starts at construction, so a worker still joining its
group has ``poll_ttl`` seconds before its first poll.

``/readyz`` (``Readiness``) runs named async checks given at wiring time (in the consumer
group, broker reachable, store answers, templates loaded), all at once, each within
``timeout`` seconds. A check passes by returning True; False, a timeout or an exception fails
it. 200 when all pass, else 503, with a JSON body mapping each failing name to why
(``"false"``, ``"timeout"`` or the exception's type). Requests that arrive while the checks
run share that run, so probing faster cannot load the broker or the store.

``/metrics`` is the text of the registry, in the format the ``Accept`` header asks for
(Prometheus text by default, OpenMetrics when asked). Anything else is 404; a method other than
GET or HEAD is 405.

No client can stall or bloat the worker: a request's line and headers must fit in
``MAX_REQUEST_HEAD`` bytes and arrive, and its answer leave, within ``timeout`` seconds;
request bodies are never read; each connection is closed after one response; at most
``MAX_CONNECTIONS`` are served at once, and any above that are closed unanswered.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Awaitable, Callable, Hashable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from types import TracebackType
from typing import Any

from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from worker.logs import get_logger, terminal_text

log = get_logger(__name__)

MAX_REQUEST_HEAD = 8192
MAX_CONNECTIONS = 32
MAX_ANSWER = 65536  # what ``health`` reads of an answer: a probe's body is a few lines

METRICS_PATH, LIVEZ_PATH, READYZ_PATH = "/metrics", "/livez", "/readyz"

Check = Callable[[], Awaitable[bool]]
JSON = "application/json"


@dataclass(frozen=True, slots=True)
class Verdict:
    ok: bool
    detail: Mapping[str, Any]

    def body(self) -> bytes:
        return json.dumps({"status": "ok" if self.ok else "failing", **self.detail}).encode()


class Liveness:
    """The fetch loop's last poll and the records in flight, against their time-to-live."""

    def __init__(
        self,
        *,
        poll_ttl: float,
        record_ttl: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._poll_ttl = poll_ttl
        self._record_ttl = record_ttl
        self._clock = clock
        self._last_poll = clock()
        # start times in the order records started, so the oldest is the first
        self._in_flight: dict[Hashable, float] = {}

    def polled(self) -> None:
        """A fetch returned (with records or without)."""
        self._last_poll = self._clock()

    def started(self, key: Hashable) -> None:
        """The record ``key`` (e.g. its topic, partition and offset) is now in flight."""
        self._in_flight.pop(key, None)
        self._in_flight[key] = self._clock()

    def finished(self, key: Hashable) -> None:
        """The record ``key`` reached its outcome (or was abandoned)."""
        self._in_flight.pop(key, None)

    def check(self) -> Verdict:
        now = self._clock()
        since_poll = now - self._last_poll
        oldest = next(iter(self._in_flight.values()), None)
        oldest_age = None if oldest is None else now - oldest
        failing = []
        if since_poll > self._poll_ttl:
            failing.append("poll_ttl")
        if oldest_age is not None and oldest_age > self._record_ttl:
            failing.append("record_ttl")
        detail = {
            "failing": failing,
            "seconds_since_poll": round(since_poll, 3),
            "oldest_record_seconds": None if oldest_age is None else round(oldest_age, 3),
            "records_in_flight": len(self._in_flight),
        }
        return Verdict(not failing, detail)


class Readiness:
    """Named checks of the worker's dependencies, run together within a timeout each."""

    def __init__(self, checks: Mapping[str, Check], *, timeout: float) -> None:
        self._checks = dict(checks)
        self._timeout = timeout
        self._running: asyncio.Future[Verdict] | None = None

    async def check(self) -> Verdict:
        if self._running is None:
            self._running = asyncio.ensure_future(self._check_all())
            self._running.add_done_callback(self._ran)
        # shielded: a caller that gives up does not cancel the run the others wait for
        return await asyncio.shield(self._running)

    def _ran(self, _: asyncio.Future[Verdict]) -> None:
        self._running = None

    async def _check_all(self) -> Verdict:
        names = list(self._checks)
        whys = await asyncio.gather(*(self._why_failing(name) for name in names))
        failing = {name: why for name, why in zip(names, whys, strict=True) if why is not None}
        return Verdict(not failing, {"failing": failing})

    async def _why_failing(self, name: str) -> str | None:
        try:
            async with asyncio.timeout(self._timeout):
                passed = await self._checks[name]()
        except TimeoutError:
            return "timeout"
        except Exception as exc:  # a check's failure is an answer, not the server's
            log.warning("readiness_check_raised", check=name, exc_info=True)
            return type(exc).__name__
        return None if passed is True else "false"


@dataclass(frozen=True, slots=True)
class _Request:
    method: str
    path: str
    accept: str


class ProbeServer:
    """``/metrics``, ``/livez`` and ``/readyz`` on ``host:port`` while entered; port 0 takes
    a free port, which ``port`` then gives."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        registry: Collector,
        liveness: Liveness,
        readiness: Readiness,
        timeout: float = 5.0,
    ) -> None:
        self._host = host
        self._port = port
        self._registry = registry
        self._liveness = liveness
        self._readiness = readiness
        self._timeout = timeout
        self._server: asyncio.Server | None = None
        self._connections = 0

    @property
    def port(self) -> int:
        assert self._server is not None, "the server is not started"
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def __aenter__(self) -> ProbeServer:
        self._server = await asyncio.start_server(
            self._serve, self._host, self._port, limit=MAX_REQUEST_HEAD
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._connections >= MAX_CONNECTIONS:
            writer.transport.abort()
            return
        self._connections += 1
        try:
            # reading and writing each within the timeout; the checks bound themselves
            async with asyncio.timeout(self._timeout):
                head = await _read_head(reader)
            answer = await self._answer(head)
            async with asyncio.timeout(self._timeout):
                writer.write(answer)
                await writer.drain()
        except (TimeoutError, OSError, asyncio.IncompleteReadError):
            writer.transport.abort()  # a client that stalls or leaves gets nothing more
        finally:
            self._connections -= 1
            writer.close()

    async def _answer(self, head: bytes | None) -> bytes:
        if head is None:
            return _response(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, b"", "text/plain")
        request = _parse(head)
        if request is None:
            return _response(HTTPStatus.BAD_REQUEST, b"", "text/plain")
        if request.method not in ("GET", "HEAD"):
            return _response(HTTPStatus.METHOD_NOT_ALLOWED, b"", "text/plain", allow=True)
        status, body, content_type = await self._route(request)
        return _response(status, body, content_type, head_only=request.method == "HEAD")

    async def _route(self, request: _Request) -> tuple[HTTPStatus, bytes, str]:
        if request.path == METRICS_PATH:
            return self._metrics(request.accept)
        if request.path == LIVEZ_PATH:
            verdict = self._liveness.check()
        elif request.path == READYZ_PATH:
            verdict = await self._readiness.check()
        else:
            return HTTPStatus.NOT_FOUND, b"", "text/plain"
        status = HTTPStatus.OK if verdict.ok else HTTPStatus.SERVICE_UNAVAILABLE
        return status, verdict.body(), JSON

    def _metrics(self, accept: str) -> tuple[HTTPStatus, bytes, str]:
        encode, content_type = choose_encoder(accept)
        try:
            return HTTPStatus.OK, encode(self._registry), content_type
        except Exception:  # a collector's bug fails this scrape, not the server
            log.error("metrics_scrape_failed", exc_info=True)
            return HTTPStatus.INTERNAL_SERVER_ERROR, b"", "text/plain"


async def _read_head(reader: asyncio.StreamReader) -> bytes | None:
    """The request line and headers, or None when they overrun ``MAX_REQUEST_HEAD``."""
    try:
        return await reader.readuntil(b"\r\n\r\n")
    except asyncio.LimitOverrunError:
        return None


def _parse(head: bytes) -> _Request | None:
    """The request line and the ``Accept`` header, or None when the line is not HTTP/1."""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        return None
    method, target, _ = parts
    accept = ""
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "accept":
            accept = value.strip()
    return _Request(method, target.partition("?")[0], accept)


def _response(
    status: HTTPStatus,
    body: bytes,
    content_type: str,
    *,
    head_only: bool = False,
    allow: bool = False,
) -> bytes:
    head = (
        f"HTTP/1.1 {status.value} {status.phrase}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n"
        + ("Allow: GET, HEAD\r\n" if allow else "")
        + "Connection: close\r\n\r\n"
    )
    return head.encode("latin-1") + (b"" if head_only else body)


# the timeout is a parameter, not the caller's ``asyncio.timeout``, because the answer's line
# names it: an exec probe's one line is all an operator sees of it
async def health(host: str, port: int, path: str, timeout: float) -> tuple[bool, str]:  # noqa: ASYNC109
    """Ask the worker's probe server for ``path``: (True, line) on a 200, else (False, line),
    the line saying what was answered or why nothing was."""
    where = f"{host}:{port}{path}"
    try:
        async with asyncio.timeout(timeout):
            answer = await _get(host, port, path)
    except TimeoutError:
        return False, f"{where}: no answer within {timeout:g} s"
    except OSError as exc:
        why = os.strerror(exc.errno) if exc.errno else type(exc).__name__
        return False, f"{where}: {why}"
    head, _, body = answer.partition(b"\r\n\r\n")
    parts = head.partition(b"\r\n")[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        return False, f"{where}: not an HTTP answer"
    # whatever answers on the port is printed: one safe line of it
    text = terminal_text(" ".join(body.decode("utf-8", "replace").split()))
    line = f"{where}: {int(parts[1])} {text}".rstrip()
    return int(parts[1]) == HTTPStatus.OK, line


async def _get(host: str, port: int, path: str) -> bytes:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        answer = b""
        while len(answer) < MAX_ANSWER and (chunk := await reader.read(MAX_ANSWER)):
            answer += chunk
        return answer
    finally:
        writer.close()
