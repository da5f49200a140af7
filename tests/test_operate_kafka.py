"""What an operator sees of a real ``python -m worker run`` (real broker, real SMTP and SMS
sinks): the metrics it serves against what the customers received, ``/livez`` turning red on
a record stuck behind an SMTP server that never answers, and ``/readyz`` following a broker
that stops and comes back."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import MakeTopic, Produce, _free_port
from tests.factories import event, record
from tests.processes import WorkerProcess
from tests.sinks import SmsSink, SmtpSink
from tests.test_faults import create_topic, kafka, produce_to
from worker.probes import health
from worker.sms_text import measure

ROOT = Path(__file__).resolve().parent.parent
Env = Callable[..., dict[str, str]]
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(port: int) -> Samples:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: worker\r\n\r\n")
    answer = await reader.read()
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), head
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sample ``name`` with exactly ``labels``; 0 when the worker has not counted it."""
    return samples.get(("shipment_notifier_" + name, frozenset(labels.items())), 0.0)


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of the samples ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(
        v for (n, have), v in samples.items() if n == "shipment_notifier_" + name and wanted <= have
    )


async def until(probe: Callable[[], Any], timeout: float, what: str) -> Any:
    """``probe()`` (awaited) until it returns something truthy, within ``timeout`` seconds."""
    last = None
    try:
        async with asyncio.timeout(timeout):
            while not (last := await probe()):
                await asyncio.sleep(0.2)
    except TimeoutError:
        raise AssertionError(f"{what} not within {timeout} s (last: {last!r})") from None
    return last


def health_command(port: int, *flags: str) -> subprocess.CompletedProcess[str]:
    """``python -m worker health`` as an exec probe runs it."""
    return subprocess.run(
        [sys.executable, "-m", "worker", "health", "--port", str(port), *flags],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


async def test_a_scrape_during_a_real_run_counts_what_the_customers_received(
    new_topic: MakeTopic,
    produce: Produce,
    worker_env: Env,
    smtp_sink: SmtpSink,
    sms_sink: SmsSink,
    tmp_path: Path,
) -> None:
    """Sent, skipped, deferred and dead-lettered notifications, a duplicate and a record that is
    not JSON: the counters match what the sinks received and what the topics hold, the
    histograms counted each send, the lag is 0 and the retry waiting is seen in the backlog."""
    topic = await new_topic(partitions=2)
    port = _free_port()
    env = worker_env(topic, METRICS_PORT=str(port), RETRY_BASE_DELAY="600", SEND_RETRIES="2")
    worker = WorkerProcess(env, tmp_path / "worker.log").start()
    try:
        # 1: A gets an email and an SMS, B an email and no SMS (no phone), A's event again,
        # and a record that is not JSON
        first = event("eA", "shipped", shipment_id="A")
        await produce(
            topic,
            [
                record(first),
                record(event("eB", "delivered", shipment_id="B", customer={"phone": None})),
                record(first),
                (b"C", b"not json"),
            ],
        )
        await smtp_sink.wait_for(2)
        await sms_sink.wait_for(1)
        await until(lambda: _handled(port, 4), 30, "4 records handled")
        # 2: D's SMS is refused for good (400), E's email fails 3 times in process (451)
        sms_sink.faults.count, sms_sink.faults.reply = 1, 400
        await produce(topic, [record(event("eD", "shipped", shipment_id="D"))])
        await until(lambda: _handled(port, 5), 30, "5 records handled")
        smtp_sink.faults.count, smtp_sink.faults.reply = 3, "451 4.3.0 try again later"
        await produce(topic, [record(event("eE", "shipped", shipment_id="E"))])
        samples = await until(lambda: _handled(port, 6), 30, "6 records handled")
    finally:
        assert await worker.terminate() == 0
    emails, texts = len(smtp_sink.messages), len(sms_sink.requests)
    assert (emails, texts) == (3, 2)  # A, B, D / A, E
    s = samples
    assert value(s, "notifications_total", channel="email", outcome="sent", reason="") == emails
    assert value(s, "notifications_total", channel="sms", outcome="sent", reason="") == texts
    assert value(s, "notifications_total", channel="sms", outcome="skipped", reason="no_contact")
    assert value(s, "notifications_total", channel="email", outcome="deferred", reason="") == 1
    dead = value(
        s, "notifications_total", channel="sms", outcome="dead_lettered", reason="permanent"
    )
    assert dead == 1
    assert total(s, "notifications_total") == emails + texts + 3
    handled = {
        (outcome, reason): value(
            s, "records_handled_total", topic=topic, outcome=outcome, reason=reason
        )
        for outcome, reason in [
            ("notified", ""),
            ("skipped", "duplicate"),
            ("dead_lettered", "not_json"),
        ]
    }
    assert handled == {
        ("notified", ""): 4,
        ("skipped", "duplicate"): 1,
        ("dead_lettered", "not_json"): 1,
    }
    assert value(s, "dead_letters_published_total", reason="not_json") == 1
    assert value(s, "dead_letters_published_total", reason="permanent") == 1
    # every try is timed: E's email failed 3 times, D's SMS once
    assert value(s, "send_duration_seconds_count", channel="email") == emails + 3
    assert value(s, "send_duration_seconds_count", channel="sms") == texts + 1
    assert value(s, "end_to_end_delay_seconds_count", channel="email") == emails
    assert value(s, "end_to_end_delay_seconds_count", channel="sms") == texts
    assert value(s, "store_call_duration_seconds_count", call="accept") == 4  # A, B, D, E
    assert total(s, "consumer_lag_records", topic=topic) == 0
    assert value(s, "records_in_flight") == 0
    assert value(s, "retry_records_waiting") == 1  # E's email, due in 10 minutes
    assert 0 <= value(s, "retry_oldest_waiting_age_seconds") < 60
    assert total(s, "build_info") == 1
    # the segments the provider bills, by encoding, are those of the texts it received
    billed: dict[str, float] = {}
    for sms in sms_sink.requests:
        cost = measure(parse_qs(sms.body.decode())["Body"][0])
        billed[cost.encoding] = billed.get(cost.encoding, 0) + cost.segments
    assert billed and {e: value(s, "sms_segments_total", encoding=e) for e in billed} == billed


async def _handled(port: int, count: int) -> Samples | None:
    samples = await scrape(port)
    return samples if total(samples, "records_handled_total") >= count else None


async def test_a_record_stuck_on_an_smtp_server_that_never_answers_turns_livez_red(
    new_topic: MakeTopic,
    produce: Produce,
    worker_env: Env,
    tmp_path: Path,
) -> None:
    """A relay that accepts the connection and never greets holds the email's record in flight
    (SMTP_TIMEOUT is long): past LIVENESS_RECORD_TTL, /livez answers 503 naming record_ttl,
    and the health command exits 1 with that answer; before, both said alive."""
    silent = await asyncio.start_server(_never_answer, "127.0.0.1", 0)
    topic = await new_topic()
    port = _free_port()
    env = worker_env(
        topic,
        METRICS_PORT=str(port),
        SMTP_PORT=str(silent.sockets[0].getsockname()[1]),
        SMTP_TIMEOUT="300",
        SEND_RETRIES="0",
        CLAIM_LEASE="1",
        LIVENESS_RECORD_TTL="3",
        SHUTDOWN_TIMEOUT="2",
        SMS_PROVIDER="disabled",
    )
    worker = WorkerProcess(env, tmp_path / "worker.log").start()
    try:
        await until(lambda: _ready(port), 60, "/readyz 200")
        alive = health_command(port)
        assert (alive.returncode, alive.stdout.split(" ", 2)[1]) == (0, "200"), alive
        await produce(topic, [record(event("e1", "delivered", shipment_id="A"))])
        await until(lambda: _livez_failing(port), 30, "/livez 503")
        stuck = health_command(port)
        assert stuck.returncode == 1, stuck
        assert f"127.0.0.1:{port}/livez: 503 " in stuck.stdout
        assert '"failing": ["record_ttl"]' in stuck.stdout
        assert '"records_in_flight": 1' in stuck.stdout
    finally:
        assert await worker.terminate() == 0
        silent.close()


async def _never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read()  # until the worker gives up on the connection
    writer.close()


async def _ready(port: int) -> bool:
    ok, _ = await health("127.0.0.1", port, "/readyz", 10)
    return ok


async def _livez_failing(port: int) -> str | None:
    ok, line = await health("127.0.0.1", port, "/livez", 10)
    return None if ok else line


async def test_a_stopped_broker_turns_readyz_red_and_its_return_green(
    worker_env: Env,
    smtp_sink: SmtpSink,
    tmp_path: Path,
) -> None:
    """With its own broker: /readyz is 200 once the worker is in its group; the broker stops
    and /readyz answers 503 naming the broker (while /livez stays 200: a restart would not
    bring the broker back); the broker returns and /readyz is 200 again, and the worker
    notifies an event produced then."""
    with own_broker(tmp_path / "kafka") as bootstrap:
        topic = "readiness"
        await create_topic(bootstrap, topic, 1)
        port = _free_port()
        env = worker_env(topic, KAFKA_BOOTSTRAP_SERVERS=bootstrap, METRICS_PORT=str(port))
        worker = WorkerProcess(env, tmp_path / "worker.log").start()
        try:
            await until(lambda: _ready(port), 90, "/readyz 200")
            kafka(["stop", "--keep-data", "--state-dir", str(tmp_path / "kafka")])
            line = await until(lambda: _readyz_failing(port), 60, "/readyz 503")
            assert f"127.0.0.1:{port}/readyz: 503 " in line
            assert '"broker_reachable"' in line
            assert '"store_answers"' not in line and '"templates_loaded"' not in line
            assert health_command(port).returncode == 0  # alive all the while
            kafka(["start", "--keep-data", "--state-dir", str(tmp_path / "kafka")])
            await until(lambda: _ready(port), 120, "/readyz 200 again")
            assert health_command(port, "--ready").returncode == 0
            await _produce_one(bootstrap, topic)
            await smtp_sink.wait_for(1, timeout=60)
        finally:
            assert await worker.terminate() == 0


async def _readyz_failing(port: int) -> str | None:
    ok, line = await health("127.0.0.1", port, "/readyz", 10)
    return None if ok else line


async def _produce_one(bootstrap: str, topic: str) -> None:
    await produce_to(bootstrap, topic, [record(event("r1", "delivered", shipment_id="R"))])


@contextmanager
def own_broker(state: Path) -> Iterator[str]:
    bootstrap = kafka(["start", "--state-dir", str(state)])
    try:
        yield bootstrap
    finally:
        kafka(["stop", "--state-dir", str(state)])
