"""The SMS providers' HTTP client against a hostile server on loopback: a raw TCP server that
answers with a head, headers, interim responses or trailers that never end. Each is refused at
its limit with an ``HttpError``, the client's memory does not grow with what the server
streams, and the pool's next request still works."""

from __future__ import annotations

import asyncio
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import pytest

from worker.channels.http import (
    MAX_HEAD_BYTES,
    MAX_HEADER_LINE,
    MAX_HEADERS,
    MAX_INTERIM,
    HttpClient,
    HttpError,
    Response,
)

CREATED = b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok"
HOSTILE_BYTES = 32 << 20  # what a hostile answer offers: far beyond every limit
CHUNKED = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"


@dataclass
class Hostile:
    """An answer that starts with ``start``, then repeats ``filler`` up to ``total`` bytes."""

    start: bytes
    filler: bytes = b""
    total: int = 0


@dataclass
class HostileServer:
    """Answers request number ``hostile_at`` (from 1, over all connections) with ``hostile``
    and every other one with ``CREATED``; counts the bytes the hostile answer got out before
    the client hung up, and the connections."""

    hostile: Hostile
    hostile_at: int = 1
    port: int = 0
    requests: int = 0
    connections: int = 0
    sent: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/sms"

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while await reader.readuntil(b"\r\n\r\n"):
                await reader.readexactly(1)  # every request of these tests has a 1-byte body
                self.requests += 1
                if self.requests != self.hostile_at:
                    writer.write(CREATED)
                    await writer.drain()
                    continue
                await self._stream(writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def _stream(self, writer: asyncio.StreamWriter) -> None:
        writer.write(self.hostile.start)
        self.sent = len(self.hostile.start)
        filler = self.hostile.filler * max(1, (64 << 10) // max(1, len(self.hostile.filler)))
        while self.sent < self.hostile.total:
            writer.write(filler)
            await writer.drain()
            self.sent += len(filler)


StartServer = Callable[..., Awaitable[HostileServer]]


@pytest.fixture
async def start() -> AsyncIterator[StartServer]:
    servers: list[asyncio.Server] = []

    async def start_server(hostile: Hostile, hostile_at: int = 1) -> HostileServer:
        scripted = HostileServer(hostile, hostile_at)
        server = await asyncio.start_server(scripted.serve, "127.0.0.1", 0)
        scripted.port = server.sockets[0].getsockname()[1]
        servers.append(server)
        return scripted

    yield start_server
    for server in servers:
        server.close()


@pytest.fixture
async def client() -> AsyncIterator[HttpClient]:
    http = HttpClient(timeout=5.0, pool_size=1)
    yield http
    await http.close()


def _endless(start: bytes, filler: bytes) -> Hostile:
    return Hostile(start, filler, HOSTILE_BYTES)


@pytest.mark.parametrize(
    ("hostile", "error"),
    [
        (_endless(b"HTTP/1.1 200 OK\r\nX-Big: ", b"a"), "head over"),
        (_endless(b"HTTP/1.1 200 OK\r\n", b"X"), "head over"),
        (_endless(b"HTTP/1.1 200 ", b"O"), "head over"),
        (_endless(b"HTTP/1.1 200 OK\r\n", b"X-A: b\r\n"), f"over {MAX_HEADERS} headers"),
        (_endless(b"", b"HTTP/1.1 100 Continue\r\n\r\n"), f"over {MAX_INTERIM} interim"),
        (_endless(b"", b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"), "interim"),
        (_endless(CHUNKED + b"2\r\nok\r\n0\r\nX-Trailer: ", b"t"), "framing or trailers over"),
        (_endless(CHUNKED + b"2\r\nok\r\n0\r\n", b"X-T: t\r\n"), f"over {MAX_HEADERS} headers"),
        (_endless(CHUNKED + b"2;", b"e"), "framing or trailers over"),
    ],
    ids=[
        "header-value",
        "header-name",
        "reason-phrase",
        "header-count",
        "100-continue",
        "103-early-hints",
        "trailer-value",
        "trailer-count",
        "chunk-extension",
    ],
)
async def test_an_endless_answer_is_refused_at_its_limit_without_buffering_it(
    start: StartServer, client: HttpClient, hostile: Hostile, error: str
) -> None:
    """A server streaming far more than a limit allows fails the exchange with an HttpError
    before the client holds more than a fraction of a megabyte, and the pool goes on."""
    server = await start(hostile)
    tracemalloc.start()
    try:
        with pytest.raises(HttpError, match=error):
            await client.post(server.url, b"1", {})
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20
    assert await client.post(server.url, b"2", {}) == Response(201, b"ok")
    assert server.sent < HOSTILE_BYTES // 4  # the client hung up: the server could not go on


def _head(*headers: bytes) -> bytes:
    return b"HTTP/1.1 201 Created\r\n" + b"".join(headers) + b"Content-Length: 2\r\n\r\nok"


def _line(length: int) -> bytes:
    """A header line of ``length`` bytes, its CRLF not counted (as aiohttp counts)."""
    return b"X-Long: " + b"v" * (length - len(b"X-Long: ")) + b"\r\n"


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (_head(_line(MAX_HEADER_LINE + 1)), f"header line over {MAX_HEADER_LINE}"),
        (_head(*[b"X-A: b\r\n"] * MAX_HEADERS), f"over {MAX_HEADERS} headers"),
        (b"HTTP/1.1 100 Continue\r\n\r\n" * (MAX_INTERIM + 1) + CREATED, "interim"),
        (_head(*[_line(MAX_HEADER_LINE)] * 2), "head over"),
    ],
    ids=["line", "count", "interim", "head"],
)
async def test_an_answer_one_past_a_limit_is_refused(
    start: StartServer, client: HttpClient, answer: bytes, error: str
) -> None:
    """Each limit refuses the first answer that passes it, and the pool goes on."""
    server = await start(Hostile(answer))
    with pytest.raises(HttpError, match=error):
        await client.post(server.url, b"1", {})
    assert await client.post(server.url, b"2", {}) == Response(201, b"ok")


@pytest.mark.parametrize(
    "answer",
    [
        _head(_line(MAX_HEADER_LINE)),
        _head(*[b"X-A: b\r\n"] * (MAX_HEADERS - 1)),
        b"HTTP/1.1 100 Continue\r\n\r\n" * MAX_INTERIM + CREATED,
        _head(*[_line(MAX_HEAD_BYTES // 3)] * 2, _line(MAX_HEAD_BYTES // 3 - 200)),
    ],
    ids=["line", "count", "interim", "head"],
)
async def test_an_answer_at_each_limit_is_accepted(
    start: StartServer, client: HttpClient, answer: bytes
) -> None:
    """The limits refuse only what passes them: an answer right at each is a response."""
    server = await start(Hostile(answer))
    assert await client.post(server.url, b"1", {}) == Response(201, b"ok")


async def test_the_limits_hold_on_a_connection_reused_from_the_pool(
    start: StartServer, client: HttpClient
) -> None:
    """A kept-alive connection's second answer is held to the head limit as a first one is."""
    server = await start(_endless(b"HTTP/1.1 200 OK\r\nX-Big: ", b"a"), hostile_at=2)
    assert await client.post(server.url, b"1", {}) == Response(201, b"ok")
    tracemalloc.start()
    try:
        with pytest.raises(HttpError, match="head over"):
            await client.post(server.url, b"2", {})
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20
    assert await client.post(server.url, b"3", {}) == Response(201, b"ok")
    assert server.connections == 2
