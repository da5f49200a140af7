"""The probes: liveness against its time-to-live values, readiness checks, the HTTP server on a
real loopback socket (hostile clients included) and the ``health`` client."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator, Iterator

import pytest

from worker import probes
from worker.metrics import Metrics
from worker.probes import Liveness, ProbeServer, Readiness, health

HOST = "127.0.0.1"
TIMEOUT = 0.5  # the server's read and write timeout in these tests


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Switch:
    """A readiness check whose answer the test sets."""

    def __init__(self, passing: bool) -> None:
        self.passing = passing
        self.calls = 0

    async def __call__(self) -> bool:
        self.calls += 1
        return self.passing


# --- Liveness, with a clock the test moves ---------------------------------------------------


def test_liveness_fails_when_no_poll_within_the_ttl() -> None:
    """Live until poll_ttl passes without a poll, then failing on poll_ttl; a poll heals it."""
    clock = Clock()
    live = Liveness(poll_ttl=10, record_ttl=60, clock=clock)
    clock.now += 10
    assert live.check().ok
    clock.now += 0.5
    verdict = live.check()
    assert not verdict.ok
    assert verdict.detail["failing"] == ["poll_ttl"]
    assert verdict.detail["seconds_since_poll"] == 10.5
    live.polled()
    assert live.check().ok


def test_liveness_fails_when_a_record_outlives_its_ttl() -> None:
    """A record in flight longer than record_ttl fails liveness, even while polls go on;
    finishing it heals it."""
    clock = Clock()
    live = Liveness(poll_ttl=10, record_ttl=30, clock=clock)
    live.started(("shipments", 0, 7))
    clock.now += 5
    live.started(("shipments", 1, 3))
    clock.now += 26
    live.polled()
    verdict = live.check()
    assert not verdict.ok
    assert verdict.detail == {
        "failing": ["record_ttl"],
        "seconds_since_poll": 0.0,
        "oldest_record_seconds": 31.0,
        "records_in_flight": 2,
    }
    live.finished(("shipments", 0, 7))
    verdict = live.check()
    assert verdict.ok
    assert verdict.detail["oldest_record_seconds"] == 26.0


def test_liveness_names_both_signs_when_both_fail() -> None:
    """A loop that stopped polling while a record hangs fails on both, and the body says so."""
    clock = Clock()
    live = Liveness(poll_ttl=10, record_ttl=30, clock=clock)
    live.started("k")
    clock.now += 31
    body = json.loads(live.check().body())
    assert body["status"] == "failing"
    assert body["failing"] == ["poll_ttl", "record_ttl"]


def test_a_record_started_again_counts_from_its_new_start() -> None:
    """Starting a key again (a redelivered record) restarts its age and its place in line."""
    clock = Clock()
    live = Liveness(poll_ttl=100, record_ttl=30, clock=clock)
    live.started("a")
    clock.now += 20
    live.started("b")
    clock.now += 5
    live.started("a")
    clock.now += 15
    live.polled()
    verdict = live.check()
    assert verdict.ok
    assert verdict.detail["oldest_record_seconds"] == 20.0  # b's, not a's first start


# --- Readiness -------------------------------------------------------------------------------


async def test_readiness_names_each_failing_check_and_why() -> None:
    """Each failing check is named with why: returned False, ran out of time, or raised."""

    async def hangs() -> bool:
        await asyncio.sleep(10)
        return True

    async def raises() -> bool:
        raise ConnectionRefusedError

    ready = Readiness(
        {"store": Switch(True), "group": Switch(False), "broker": hangs, "templates": raises},
        timeout=0.05,
    )
    verdict = await ready.check()
    assert not verdict.ok
    assert verdict.detail == {
        "failing": {"group": "false", "broker": "timeout", "templates": "ConnectionRefusedError"}
    }


async def test_concurrent_readiness_requests_share_one_run() -> None:
    """Checks asked for while a run is going share it, so probing faster does not load the
    dependencies more; the next request runs them afresh."""
    calls = 0

    async def slow() -> bool:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.05)
        return True

    ready = Readiness({"store": slow}, timeout=1)
    verdicts = await asyncio.gather(*(ready.check() for _ in range(10)))
    assert all(v.ok for v in verdicts)
    assert calls == 1
    await ready.check()
    assert calls == 2


async def test_a_caller_that_gives_up_does_not_cancel_the_shared_run() -> None:
    """A request cancelled while waiting leaves the run to finish for the others."""
    gate = asyncio.Event()

    async def gated() -> bool:
        await gate.wait()
        return True

    ready = Readiness({"broker": gated}, timeout=1)
    impatient = asyncio.ensure_future(ready.check())
    patient = asyncio.ensure_future(ready.check())
    await asyncio.sleep(0)
    impatient.cancel()
    gate.set()
    assert (await patient).ok
    assert impatient.cancelled()


# --- the server, through a real socket ---------------------------------------------------------


class Parts:
    def __init__(self) -> None:
        self.clock = Clock()
        self.metrics = Metrics()
        self.liveness = Liveness(poll_ttl=10, record_ttl=60, clock=self.clock)
        self.store = Switch(True)
        self.group = Switch(True)
        self.readiness = Readiness({"store": self.store, "group": self.group}, timeout=0.2)


@pytest.fixture
def parts() -> Parts:
    return Parts()


@pytest.fixture
async def server(parts: Parts) -> AsyncIterator[ProbeServer]:
    async with ProbeServer(
        host=HOST,
        port=0,
        registry=parts.metrics.registry,
        liveness=parts.liveness,
        readiness=parts.readiness,
        timeout=TIMEOUT,
    ) as running:
        yield running


async def exchange(port: int, raw: bytes, timeout: float = 3.0) -> bytes:
    """Send ``raw`` and read until the server closes; what it answered (maybe nothing)."""
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(HOST, port)
        try:
            writer.write(raw)
            return await reader.read()
        except ConnectionResetError:
            return b""
        finally:
            writer.close()


async def get(port: int, path: str, *headers: str) -> tuple[int, dict[str, str], bytes]:
    head = "".join(f"{h}\r\n" for h in headers)
    answer = await exchange(port, f"GET {path} HTTP/1.1\r\nHost: x\r\n{head}\r\n".encode())
    return parse(answer)


def parse(answer: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    fields = dict(line.split(": ", 1) for line in lines)
    assert int(fields["Content-Length"]) == len(body)
    return int(status_line.split(" ")[1]), fields, body


async def test_metrics_are_served_as_prometheus_text(server: ProbeServer, parts: Parts) -> None:
    """GET /metrics answers the registry's text with Prometheus' content type, and closes."""
    parts.metrics.record_handled("shipments", "notified")
    status, fields, body = await get(server.port, "/metrics")
    assert status == 200
    assert fields["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert fields["Connection"] == "close"
    lines = body.decode().splitlines()
    assert (
        'shipment_notifier_records_handled_total{outcome="notified",reason="",topic="shipments"}'
        " 1.0"
    ) in lines


async def test_metrics_in_openmetrics_when_asked(server: ProbeServer) -> None:
    """A scraper that accepts OpenMetrics gets it, with its content type and final # EOF."""
    status, fields, body = await get(
        server.port, "/metrics", "Accept: application/openmetrics-text; version=1.0.0"
    )
    assert status == 200
    assert fields["Content-Type"].startswith("application/openmetrics-text; version=1.0.0")
    assert body.endswith(b"# EOF\n")
    assert b"shipment_notifier_build_info{" in body


async def test_livez_turns_red_when_the_poll_ttl_passes(server: ProbeServer, parts: Parts) -> None:
    """/livez answers 200 while the fetch loop polls, 503 naming poll_ttl once it stops."""
    parts.liveness.polled()
    status, fields, body = await get(server.port, "/livez")
    assert (status, fields["Content-Type"]) == (200, "application/json")
    assert json.loads(body)["status"] == "ok"
    parts.clock.now += 11
    status, _, body = await get(server.port, "/livez")
    assert status == 503
    assert json.loads(body)["failing"] == ["poll_ttl"]


async def test_readyz_names_the_failing_check_then_recovers(
    server: ProbeServer, parts: Parts
) -> None:
    """/readyz answers 503 naming the check that fails, and 200 once it passes again."""
    parts.group.passing = False
    status, _, body = await get(server.port, "/readyz")
    assert status == 503
    assert json.loads(body) == {"status": "failing", "failing": {"group": "false"}}
    parts.group.passing = True
    status, _, body = await get(server.port, "/readyz")
    assert status == 200
    assert json.loads(body) == {"status": "ok", "failing": {}}


async def test_unknown_paths_and_methods(server: ProbeServer) -> None:
    """Another path is 404, another method 405, HEAD has the headers of GET without a body,
    and a line that is not HTTP/1 is 400."""
    assert (await get(server.port, "/nope"))[0] == 404
    assert (await get(server.port, "/livez?verbose=1"))[0] == 200
    status, fields, _ = parse(await exchange(server.port, b"POST /livez HTTP/1.1\r\n\r\n"))
    assert (status, fields["Allow"]) == (405, "GET, HEAD")
    answer = await exchange(server.port, b"HEAD /livez HTTP/1.1\r\n\r\n")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert body == b""
    assert (parse(await exchange(server.port, b"GET /livez\r\n\r\n")))[0] == 400


async def test_an_oversized_request_is_refused_and_the_next_served(server: ProbeServer) -> None:
    """A 1 MB request line gets 431 or a reset, never a buffered megabyte, and the next
    request is answered."""
    answer = await exchange(server.port, b"GET /" + b"a" * 1_000_000 + b" HTTP/1.1\r\n\r\n")
    assert answer == b"" or answer.startswith(b"HTTP/1.1 431 ")
    assert (await get(server.port, "/livez"))[0] == 200


async def test_the_request_head_is_bounded_at_8_kib(server: ProbeServer) -> None:
    """A request line and headers that fit in 8 KiB are served; a head past that is 431."""
    fits = "X-Pad: " + "p" * (8192 - 200)
    assert (await get(server.port, "/livez", fits))[0] == 200
    too_long = "X-Pad: " + "p" * 8192
    assert (await get(server.port, "/livez", too_long))[0] == 431


async def test_a_silent_client_is_closed_and_does_not_hold_others(server: ProbeServer) -> None:
    """A client that sends nothing is closed after the timeout; requests meanwhile are served."""
    reader, writer = await asyncio.open_connection(HOST, server.port)
    try:
        started = time.monotonic()
        assert (await get(server.port, "/livez"))[0] == 200
        async with asyncio.timeout(3):
            assert await reader.read() == b""
        assert TIMEOUT * 0.9 <= time.monotonic() - started < TIMEOUT + 1
    finally:
        writer.close()
    assert (await get(server.port, "/livez"))[0] == 200


async def test_a_trickling_client_is_closed_at_the_timeout(server: ProbeServer) -> None:
    """A client that sends its request a byte at a time cannot keep its connection past the
    timeout."""
    reader, writer = await asyncio.open_connection(HOST, server.port)
    started = time.monotonic()
    try:
        for byte in b"GET /livez HTTP/1.1\r\nX: " + b"y" * 100:
            writer.write(bytes([byte]))
            await asyncio.sleep(0.05)
            if reader.at_eof() or writer.is_closing():
                break
        async with asyncio.timeout(3):
            answer = await reader.read()
    except ConnectionResetError:
        answer = b""
    finally:
        writer.close()
    assert answer == b""
    assert time.monotonic() - started < TIMEOUT + 1


@pytest.fixture
def two_connections(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(probes, "MAX_CONNECTIONS", 2)
    yield


async def test_connections_above_the_bound_are_closed_unanswered(
    two_connections: None, server: ProbeServer
) -> None:
    """While MAX_CONNECTIONS clients hold connections, another is closed at once; once they
    are gone, requests are answered again."""
    held = [await asyncio.open_connection(HOST, server.port) for _ in range(2)]
    try:
        await asyncio.sleep(0.05)  # let the server take them
        assert await exchange(server.port, b"GET /livez HTTP/1.1\r\n\r\n", timeout=TIMEOUT) == b""
    finally:
        for _, writer in held:
            writer.close()
    await asyncio.sleep(0.05)
    assert (await get(server.port, "/livez"))[0] == 200


async def test_a_failing_collector_fails_the_scrape_not_the_server(
    server: ProbeServer, parts: Parts
) -> None:
    """A collector that raises makes /metrics a 500; the probes go on answering."""

    class Broken:
        def collect(self) -> list[object]:
            raise RuntimeError("bug")

    parts.metrics.registry.register(Broken())  # type: ignore[arg-type]
    assert (await get(server.port, "/metrics"))[0] == 500
    assert (await get(server.port, "/livez"))[0] == 200


def free_port() -> int:
    """A port nothing listens on: bound a moment ago, and free again."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


# --- health, the exec probe's client -----------------------------------------------------------


async def test_health_is_true_on_200_and_false_on_503(server: ProbeServer, parts: Parts) -> None:
    """health() passes on a 200 and fails on a 503, its line giving the status and body."""
    ok, line = await health(HOST, server.port, "/livez", 2)
    assert ok
    assert line.startswith(f"{HOST}:{server.port}/livez: 200 {{")
    parts.store.passing = False
    ok, line = await health(HOST, server.port, "/readyz", 2)
    assert not ok
    assert line == (
        f'{HOST}:{server.port}/readyz: 503 {{"status": "failing", "failing": {{"store": "false"}}}}'
    )


async def test_health_without_a_server() -> None:
    """Nothing listening: health() fails with a line that says the connection was refused."""
    port = free_port()
    ok, line = await health(HOST, port, "/livez", 2)
    assert (ok, line) == (False, f"{HOST}:{port}/livez: Connection refused")


async def test_health_against_a_server_that_never_answers() -> None:
    """A server that accepts and says nothing fails health() within its timeout."""

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()
        writer.close()

    async with await asyncio.start_server(silent, HOST, 0) as mute:
        port = mute.sockets[0].getsockname()[1]
        started = time.monotonic()
        ok, line = await health(HOST, port, "/livez", 0.2)
        assert time.monotonic() - started < 1
    assert (ok, line) == (False, f"{HOST}:{port}/livez: no answer within 0.2 s")


async def test_health_prints_a_strangers_answer_safely() -> None:
    """Whatever answers on the port, health() prints one line of it, free of escape
    sequences, and fails on what is not HTTP."""

    async def stranger(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\n\r\n\x1b[2Jgotcha\nsecond line")
        writer.close()

    async with await asyncio.start_server(stranger, HOST, 0) as other:
        port = other.sockets[0].getsockname()[1]
        ok, line = await health(HOST, port, "/livez", 2)
    assert ok
    assert "\x1b" not in line
    assert "\n" not in line
    assert line == f"{HOST}:{port}/livez: 200 \ufffd[2Jgotcha second line"

    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"SSH-2.0-OpenSSH\r\n")
        writer.close()

    async with await asyncio.start_server(garbage, HOST, 0) as other:
        port = other.sockets[0].getsockname()[1]
        assert await health(HOST, port, "/livez", 2) == (
            False,
            f"{HOST}:{port}/livez: not an HTTP answer",
        )
