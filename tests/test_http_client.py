"""The SMS providers' HTTP client against a real TCP server on loopback that answers each
request with scripted bytes: how responses are framed, when a connection is reused, and that
every incomplete answer is an ``HttpError`` rather than a hang or a wrong body."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest

from worker.channels.http import (
    MAX_RESPONSE_BYTES,
    HttpClient,
    HttpError,
    Response,
    parse_url,
    request_bytes,
)

CREATED = b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok"


@dataclass
class Reply:
    data: bytes | None  # None: never answer
    close: bool = False  # close the connection after writing ``data``
    reset: bool = False  # reset it (TCP RST) after writing ``data``


@dataclass
class ScriptedServer:
    """Answers the n-th request (over all connections) with ``replies[n]``; keeps each
    request's bytes and counts connections."""

    replies: list[Reply]
    requests: list[bytes] = field(default_factory=list)
    connections: int = 0
    closed: int = 0
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/sms?v=1"

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(_header(head, b"content-length") or b"0")
                self.requests.append(head + await reader.readexactly(length))
                reply = self.replies[len(self.requests) - 1]
                if reply.data is None:  # silent until the client hangs up
                    await reader.read()
                    break
                writer.write(reply.data)
                await writer.drain()
                if reply.reset:
                    linger = struct.pack("ii", 1, 0)
                    writer.get_extra_info("socket").setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, linger
                    )
                    writer.transport.abort()
                    break
                if reply.close:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            self.closed += 1


def _header(head: bytes, name: bytes) -> bytes | None:
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name:
            return value.strip()
    return None


async def _until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    for _ in range(int(timeout / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met in time")


StartServer = Callable[..., Awaitable[ScriptedServer]]


@pytest.fixture
async def start() -> AsyncIterator[StartServer]:
    servers: list[asyncio.Server] = []

    async def start_server(*replies: Reply) -> ScriptedServer:
        scripted = ScriptedServer(list(replies))
        server = await asyncio.start_server(scripted.serve, "127.0.0.1", 0)
        scripted.port = server.sockets[0].getsockname()[1]
        servers.append(server)
        return scripted

    yield start_server
    for server in servers:
        server.close()


@pytest.fixture
async def client() -> AsyncIterator[HttpClient]:
    http = HttpClient(timeout=2.0, pool_size=4)
    yield http
    await http.close()


async def test_the_request_carries_host_length_and_the_given_headers(
    start: StartServer, client: HttpClient
) -> None:
    server = await start(Reply(CREATED))
    response = await client.post(server.url, b'{"a":1}', {"Idempotency-Key": "k1"})
    assert response == Response(201, b"ok")
    [request] = server.requests
    head, _, body = request.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /sms?v=1 HTTP/1.1"
    assert _header(head, b"host") == f"127.0.0.1:{server.port}".encode()
    assert _header(head, b"content-length") == b"7"
    assert _header(head, b"idempotency-key") == b"k1"
    assert body == b'{"a":1}'


async def test_a_chunked_response_is_reassembled_and_its_connection_reused(
    start: StartServer, client: HttpClient
) -> None:
    chunked = (
        b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    )
    server = await start(Reply(chunked), Reply(chunked))
    first = await client.post(server.url, b"1", {})
    second = await client.post(server.url, b"2", {})
    assert first == second == Response(201, b"hello world")
    assert server.connections == 1


async def test_a_body_that_ends_with_the_connection_is_whole_and_not_reused(
    start: StartServer, client: HttpClient
) -> None:
    server = await start(Reply(b'HTTP/1.1 200 OK\r\n\r\n{"sid":"SM1"}', close=True), Reply(CREATED))
    assert await client.post(server.url, b"1", {}) == Response(200, b'{"sid":"SM1"}')
    assert await client.post(server.url, b"2", {}) == Response(201, b"ok")
    assert server.connections == 2


async def test_connection_close_in_the_response_is_honoured(
    start: StartServer, client: HttpClient
) -> None:
    """The server leaves the connection open; the client still does not reuse it."""
    closing = b"HTTP/1.1 201 Created\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"
    server = await start(Reply(closing), Reply(CREATED))
    await client.post(server.url, b"1", {})
    await client.post(server.url, b"2", {})
    assert server.connections == 2
    assert len(server.requests) == 2


async def test_bytes_after_the_response_keep_the_connection_out_of_the_pool(
    start: StartServer, client: HttpClient
) -> None:
    """The start of a second response in the same read would pair with the next request."""
    stray = CREATED + b"HTTP/1.1 200 OK\r\nContent-Length: 80\r\n\r\n"
    server = await start(Reply(stray), Reply(CREATED))
    assert await client.post(server.url, b"1", {}) == Response(201, b"ok")
    assert await client.post(server.url, b"2", {}) == Response(201, b"ok")
    assert server.connections == 2


async def test_an_interim_100_continue_is_skipped(start: StartServer, client: HttpClient) -> None:
    server = await start(Reply(b"HTTP/1.1 100 Continue\r\n\r\n" + CREATED))
    assert await client.post(server.url, b"1", {}) == Response(201, b"ok")


async def test_a_connection_the_server_closed_while_idle_is_not_reused(
    start: StartServer, client: HttpClient
) -> None:
    server = await start(Reply(CREATED, close=True), Reply(CREATED))
    await client.post(server.url, b"1", {})
    await _until(lambda: server.closed == 1)
    await asyncio.sleep(0.05)  # the client's loop sees the close a moment after the server
    assert await client.post(server.url, b"2", {}) == Response(201, b"ok")
    assert server.connections == 2


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        (Reply(b"HTTP/1.1 201 Created\r\nContent-Length: 10\r\n\r\nabc", close=True), "closed"),
        (Reply(b"", close=True), "closed before the response"),
        (Reply(b"220 smtp.example ESMTP ready\r\n\r\n"), "malformed"),
        (
            Reply(
                b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (MAX_RESPONSE_BYTES + 1)
                + b"x" * (MAX_RESPONSE_BYTES + 1)
            ),
            "over",
        ),
        (Reply(None), "no response in time"),
        (Reply(b"HTTP/1.1 100 Continue\r\n\r\n", close=True), "closed before the response"),
        (
            Reply(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: upgrade\r\n\r\n"
            ),
            "switched protocols",
        ),
        (Reply(b"HTTP/1.1 200 OK\r\n\r\npartial body", reset=True), "closed before the response"),
    ],
    ids=[
        "truncated",
        "closed-at-once",
        "not-http",
        "oversized",
        "silent",
        "closed-after-100",
        "upgrade",
        "reset-in-a-body-ended-by-close",
    ],
)
async def test_an_incomplete_or_bad_answer_is_an_http_error_and_the_connection_dropped(
    start: StartServer, reply: Reply, error: str
) -> None:
    server = await start(reply, Reply(CREATED))
    client = HttpClient(timeout=0.5, pool_size=1)
    try:
        with pytest.raises(HttpError, match=error):
            await client.post(server.url, b"1", {})
        assert await client.post(server.url, b"2", {}) == Response(201, b"ok")
    finally:
        await client.close()
    assert server.connections == 2


async def test_a_cancelled_request_does_not_leave_its_connection_in_the_pool(
    start: StartServer, client: HttpClient
) -> None:
    server = await start(Reply(None), Reply(CREATED))
    request = asyncio.create_task(client.post(server.url, b"1", {}))
    while not server.requests:
        await asyncio.sleep(0.01)
    request.cancel()
    with pytest.raises(asyncio.CancelledError):
        await request
    await _until(lambda: server.closed == 1)  # closed by the client, not left open
    assert await client.post(server.url, b"2", {}) == Response(201, b"ok")
    assert server.connections == 2


async def test_a_refused_connection_is_an_http_error(client: HttpClient) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(HttpError, match=f"cannot connect to 127.0.0.1:{port}"):
        await client.post(f"http://127.0.0.1:{port}/", b"", {})


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Note": "a\r\nInjected: 1"},
        {"X-Note": "a\nb"},
        {"X-Note": "a\rb"},
        {"content-length": "0"},
        {"Host": "elsewhere.example"},
        {"Transfer-Encoding": "chunked"},
    ],
)
async def test_a_header_that_would_break_the_framing_is_refused_before_sending(
    start: StartServer, client: HttpClient, headers: dict[str, str]
) -> None:
    server = await start(Reply(CREATED))
    with pytest.raises(ValueError, match=r"CR or LF|the client sets"):
        await client.post(server.url, b"1", headers)
    assert server.connections == 0


@pytest.mark.parametrize(
    ("url", "error"),
    [
        ("ftp://example.com/sms", "not an http"),
        ("https:///sms", "not an http"),
        ("https://user:pw@example.com/sms", "credentials"),
        ("https://example.com:99999/sms", "out of range"),
        ("https://example.com/bad path", "percent-encoded"),
        ("https://example.com/ü", "percent-encoded"),
    ],
)
def test_urls_the_client_cannot_send_to_are_refused(url: str, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        parse_url(url)


def test_the_request_line_and_host_keep_the_url_as_given() -> None:
    target = parse_url("https://[::1]:8443/2010-04-01/Messages.json?x=%20y")
    assert (target.origin.tls, target.origin.host, target.origin.port) == (True, "::1", 8443)
    request = request_bytes(target, b"body", {"A": "b"})
    assert request.startswith(
        b"POST /2010-04-01/Messages.json?x=%20y HTTP/1.1\r\nHost: [::1]:8443\r\n"
    )
    assert request.endswith(b"A: b\r\nContent-Length: 4\r\n\r\nbody")
    assert parse_url("http://example.com").origin.port == 80
    assert parse_url("https://example.com").head.startswith(b"POST / HTTP/1.1\r\n")
