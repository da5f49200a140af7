"""A small HTTP/1.1 client for the SMS providers: POST a body, get back the status and body,
over a bounded pool of keep-alive connections. httptools (llhttp, the parser of Node.js)
parses the responses; this module owns the connections, the framing of requests and the
timeouts.

Why not aiohttp (the worker's client until this module): a provider's answer is a status and a
small JSON body, and aiohttp spends most of its CPU on what the worker never uses (its request
and response objects, cookie jar, redirects, multidict headers, one timer context per read).
With 64 requests in flight on one pool against the bench's SMS sink, aiohttp took 80-110 us
of CPU per request and this client 20-30, depending on the machine's day
(``bench/micro.py``), and an SMS is then no longer the costliest step of an event that has
one.

What it does, and no more:
- ``post(url, body, headers)`` -> ``Response(status, body, retry_after)`` (the one response
  header a caller needs: a 429's or 503's ``Retry-After``); no redirects followed, no
  cookies, no proxies, no compression (no ``Accept-Encoding`` is sent, so bodies are plain);
- at most ``pool_size`` requests at once, so at most ``pool_size`` connections to an origin;
  waiting for a free one has no time limit (the caller bounds its waiters);
- https with the certificate and host name verified (``ssl.create_default_context()`` unless
  a context is given);
- a response framed by ``Content-Length``, by chunked transfer coding, or by the server
  closing the connection; interim 1xx responses are skipped; a body over
  ``MAX_RESPONSE_BYTES`` is refused, and so is a response over the limits below;
- a connection is reused unless the response said ``Connection: close`` (or was HTTP/1.0
  without keep-alive), more bytes followed the response, a request on it failed or was
  cancelled, or the server closed it while it sat idle;
- connecting, and receiving the whole response once the request is written, each take at
  most ``timeout`` seconds.

Every failure to get a complete response raises ``HttpError``; the request may or may not have
reached the server, so the caller treats it as transient (the SMS senders send an
``Idempotency-Key``). A URL or header the client cannot send raises ``ValueError`` before
anything is sent.

Limits on what a server may send, each refused as it is passed (an ``HttpError``, the
connection closed), so neither memory nor the time the loop spends in the parser grows with
what a hostile or broken provider streams. httptools keeps a header's name and value until the
header ends, so the client stops feeding it at the limit rather than checking afterwards:
- ``MAX_HEAD_BYTES``: everything before the final response's body (its status line and
  headers, and any interim responses before it). h11 (httpx's parser) caps an incomplete event,
  a head among them, at the same 16 KiB, and so does Node.js's default for a head;
- ``MAX_HEADER_LINE``: one header line, aiohttp's limit for a line and for a field;
- ``MAX_HEADERS``: headers in one response (trailers count too), the standard library's
  ``http.client`` limit;
- ``MAX_INTERIM``: interim 1xx responses before the final one, Go's ``net/http`` bound;
- after the head, the chunk framing and trailers together may take ``MAX_HEAD_BYTES`` beyond
  the body itself: trailers are headers, kept by the parser as they arrive.
"""

from __future__ import annotations

import asyncio
import datetime
import email.utils
import functools
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import cast

import httptools

from worker.addresses import http_url

MAX_RESPONSE_BYTES = 1 << 20
MAX_HEAD_BYTES = 16 * 1024
MAX_HEADER_LINE = 8190
MAX_HEADERS = 100
MAX_INTERIM = 5
# a provider asking for a longer pause is believed for this long: its own hour, not a day's
MAX_RETRY_AFTER = 3600.0
USER_AGENT = "shipment-notifier"


class HttpError(Exception):
    """No complete response: the connection failed or timed out, or the answer was malformed."""


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: bytes
    retry_after: str | None = None  # the Retry-After header's value, as sent


@dataclass(frozen=True, slots=True)
class Origin:
    tls: bool
    host: str
    port: int


@dataclass(frozen=True, slots=True)
class Target:
    origin: Origin
    head: bytes  # the request line and the headers every request to this URL carries


@functools.lru_cache(maxsize=64)
def parse_url(url: str) -> Target:
    """Where ``url`` points and how a POST to it starts; ``ValueError`` if it cannot be sent
    to (``addresses.http_url``'s rules, which the settings check SMS URLs with at start-up)."""
    parts = http_url(url)
    head = (
        f"POST {parts.target} HTTP/1.1\r\nHost: {parts.authority}\r\nUser-Agent: {USER_AGENT}\r\n"
    )
    return Target(Origin(parts.https, parts.host, parts.port), head.encode("ascii"))


# the client frames the request and owns the connection: a caller may not set these
_FRAMING = frozenset({"host", "content-length", "transfer-encoding", "connection"})


def request_bytes(target: Target, body: bytes, headers: Mapping[str, str]) -> bytes:
    """The whole request; ``ValueError`` for a header that would break the framing."""
    if any(name.lower() in _FRAMING for name in headers):
        raise ValueError(f"the client sets {', '.join(sorted(_FRAMING))} itself")
    lines = [f"{name}: {value}\r\n" for name, value in headers.items()]
    text = "".join(lines)
    if text.count("\n") != len(lines) or "\r" in text.replace("\r\n", ""):
        raise ValueError("an HTTP header name or value contains CR or LF")
    fields = f"{text}Content-Length: {len(body)}\r\n\r\n".encode("latin-1")
    return target.head + fields + body


def retry_after_seconds(value: str | None, now: float) -> float | None:
    """How long a ``Retry-After`` value asks to wait, in seconds from ``now`` (RFC 9110: a
    number of seconds or an HTTP date), at most ``MAX_RETRY_AFTER``; None when absent or
    unreadable. A date in the past asks for no wait."""
    if value is None:
        return None
    text = value.strip()
    if text.isascii() and text.isdigit() and len(text) <= 10:
        return float(min(int(text), MAX_RETRY_AFTER))
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # "-0000": RFC 9110 dates are GMT
        when = when.replace(tzinfo=datetime.UTC)
    return min(max(0.0, when.timestamp() - now), MAX_RETRY_AFTER)


class HttpClient:
    """See the module docstring. Make it inside the event loop that uses it."""

    def __init__(
        self, *, timeout: float, pool_size: int, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        self._timeout = timeout
        self._pool_size = pool_size
        self._slots = asyncio.Semaphore(pool_size)
        self._idle: dict[Origin, list[_Connection]] = {}
        self._busy: set[_Connection] = set()
        self._connecting = 0
        self._ssl = ssl_context

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> Response:
        target = parse_url(url)
        request = request_bytes(target, body, headers)
        async with self._slots:
            connection = await self._connection(target.origin)
            self._busy.add(connection)
            try:
                response = await connection.exchange(request)
            except BaseException:
                connection.close()  # its state is unknown: never reused
                raise
            finally:
                self._busy.discard(connection)
            if connection.reusable:
                self._idle.setdefault(target.origin, []).append(connection)
            else:
                connection.close()
            return response

    async def close(self) -> None:
        for connection in [*self._busy, *(c for idle in self._idle.values() for c in idle)]:
            connection.close()
        self._idle.clear()

    async def _connection(self, origin: Origin) -> _Connection:
        idle = self._idle.get(origin)
        while idle:
            connection = idle.pop()
            if connection.reusable:
                return connection
        self._make_room()
        self._connecting += 1
        try:
            return await self._connect(origin)
        finally:
            self._connecting -= 1

    def _make_room(self) -> None:
        """Keep the open connections within the pool: close an idle one of another origin."""
        open_count = self._connecting + len(self._busy) + sum(map(len, self._idle.values()))
        for idle in self._idle.values():
            if open_count < self._pool_size:
                return
            while idle and open_count >= self._pool_size:
                idle.pop().close()
                open_count -= 1

    async def _connect(self, origin: Origin) -> _Connection:
        loop = asyncio.get_running_loop()
        context = None
        if origin.tls:
            context = self._ssl or _default_context()
        try:
            _, protocol = await asyncio.wait_for(
                loop.create_connection(
                    lambda: _Connection(self._timeout),
                    origin.host,
                    origin.port,
                    ssl=context,
                    server_hostname=origin.host if context else None,
                ),
                self._timeout,
            )
        except TimeoutError as exc:
            raise HttpError(f"no connection to {origin.host}:{origin.port} within timeout") from exc
        except OSError as exc:  # ssl.SSLError is one too: a certificate that fails to verify
            raise HttpError(f"cannot connect to {origin.host}:{origin.port}: {exc}") from exc
        return protocol


@functools.cache
def _default_context() -> ssl.SSLContext:
    return ssl.create_default_context()


class _Connection(asyncio.Protocol):
    """One connection, one exchange at a time; the httptools parser calls the ``on_*``
    methods while ``data_received`` feeds it."""

    def __init__(self, read_timeout: float) -> None:
        self._read_timeout = read_timeout
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[Response] | None = None
        self._status = 0
        self._body = bytearray()
        self._framed = False  # the response has Content-Length or Transfer-Encoding
        self._headers_done = False
        self._keep_alive = False
        self._kept_alive = False  # the last exchange completed and allowed keep-alive
        self._head_room = MAX_HEAD_BYTES  # what the rest of the head may take
        self._overhead = 0  # bytes after the head that were not body: framing, trailers
        self._headers = 0
        self._interim = 0
        self._retry_after: str | None = None

    async def exchange(self, request: bytes) -> Response:
        """Write ``request``; the complete response, within the read timeout."""
        assert self._transport is not None and self._waiter is None
        self._kept_alive = False  # until a complete response says otherwise
        # a kept-alive connection's last response left these set: this one starts at its head
        self._headers_done, self._head_room, self._interim = False, MAX_HEAD_BYTES, 0
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[Response] = loop.create_future()
        self._waiter = waiter
        # one timer handle: about 0.6 us a request, asyncio.timeout() about 3.8 (uvloop)
        timer = loop.call_later(self._read_timeout, self._fail, HttpError("no response in time"))
        try:
            self._transport.write(request)
            return await waiter
        finally:
            timer.cancel()
            self._waiter = None

    @property
    def reusable(self) -> bool:
        """Its last exchange completed and allowed keep-alive, and it is still open (neither
        side closed it since, e.g. the server while it sat idle in the pool)."""
        return self._kept_alive and not self.closing()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        if self._waiter is None or self._waiter.done():
            self.close()  # bytes nobody asked for: what follows on it cannot be trusted
            return
        try:
            if self._headers_done:
                self._feed_body(data)
            else:
                self._feed_head(data)
        except httptools.HttpParserUpgrade:  # not a subclass of HttpParserError
            self._fail(HttpError("the server switched protocols"))
        except httptools.HttpParserError as exc:
            self._fail(HttpError(f"malformed HTTP response: {exc}"))

    def _feed_head(self, data: bytes) -> None:
        """Feed the head no further than ``MAX_HEAD_BYTES``: the parser keeps a header until it
        ends, so an endless one is refused at the limit instead of buffered."""
        room = self._head_room
        self._parser.feed_data(memoryview(data)[:room])
        if self._headers_done:  # the final response's head ended within ``room``
            self._overhead = 0
            if len(data) > room:
                self._feed_body(memoryview(data)[room:])
        elif len(data) >= room:
            self._fail(HttpError(f"response head over {MAX_HEAD_BYTES} bytes"))
        else:
            self._head_room = room - len(data)

    def _feed_body(self, data: bytes | memoryview) -> None:
        """Feed what follows the head; its framing and trailers may take ``MAX_HEAD_BYTES``
        beyond the body (``on_body`` takes the body's bytes back off ``_overhead``)."""
        self._overhead += len(data)
        self._parser.feed_data(data)
        if self._overhead > MAX_HEAD_BYTES:
            self._fail(HttpError(f"chunk framing or trailers over {MAX_HEAD_BYTES} bytes"))

    def connection_lost(self, exc: Exception | None) -> None:
        self._kept_alive = False
        if self._waiter is None or self._waiter.done():
            return
        if exc is None and self._headers_done and not self._framed:
            self._complete()  # a body that ends where the connection does (not reset)
        else:
            self._fail(HttpError("connection closed before the response was complete"))

    # httptools.HttpResponseParser callbacks

    def on_message_begin(self) -> None:
        if self._waiter is None or self._waiter.done():
            # a second response in the same read: the stream is out of step with requests
            self.close()
        self._status, self._framed, self._headers_done = 0, False, False
        self._headers = 0
        self._retry_after = None
        self._body.clear()

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers += 1
        if self._headers > MAX_HEADERS:
            self._fail(HttpError(f"response with over {MAX_HEADERS} headers"))
        elif len(name) + len(value) + 2 > MAX_HEADER_LINE:  # as written: "name: value"
            self._fail(HttpError(f"response header line over {MAX_HEADER_LINE} bytes"))
        elif name.lower() in (b"content-length", b"transfer-encoding"):
            self._framed = True
        elif name.lower() == b"retry-after":
            self._retry_after = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self._status = self._parser.get_status_code()
        self._keep_alive = self._parser.should_keep_alive()
        self._headers_done = True

    def on_body(self, body: bytes) -> None:
        self._body += body
        self._overhead -= len(body)
        if len(self._body) > MAX_RESPONSE_BYTES:
            self._fail(HttpError(f"response body over {MAX_RESPONSE_BYTES} bytes"))

    def on_message_complete(self) -> None:
        if self._status >= 200:
            self._complete()
        else:  # a 1xx is interim: the real response follows
            self._headers_done = False
            self._interim += 1
            if self._interim > MAX_INTERIM:
                self._fail(HttpError(f"over {MAX_INTERIM} interim responses"))

    def _complete(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._kept_alive = self._keep_alive
            self._waiter.set_result(Response(self._status, bytes(self._body), self._retry_after))

    def _fail(self, error: HttpError) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(error)
        self.close()

    def closing(self) -> bool:
        return self._transport is None or self._transport.is_closing()
