"""The record path's guarantees against what producers and peers may send, through a real
broker, a real SMTP server and SMS endpoint on loopback, and a real Redis: no record and no
peer stops the worker, and the worker's own headers cannot be forged from the main topic.
Header names are spelled out: they are the wire contract operators and tools read."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer
from structlog.testing import capture_logs

from tests.conftest import MakeTopic, Produce, _free_port, read_topic
from tests.factories import BAD_HEADERS, event, python_batch, record
from tests.sinks import SmsSink, SmtpSink
from tests.test_pipeline_kafka import Env, deliver, events_named, wait_committed
from worker.retry import RetryState


def _header(record: Any, name: str) -> bytes | None:
    return dict(record.headers).get(name)


async def test_forged_worker_headers_on_the_main_topic_change_nothing(
    kafka_bootstrap: str,
    new_topic: MakeTopic,
    produce: Produce,
    worker_env: Env,
    run_worker: Any,
    smtp_sink: SmtpSink,
    sms_sink: SmsSink,
) -> None:
    """Producers setting the worker's own headers (a malformed ``original.partition``, an
    offset thousands of digits long, ``retry.*``, ``error.*``) neither stop the worker nor
    reach the dead letter, and a forged ``replay.from`` on a redelivery does not resend a
    dead-lettered SMS."""
    topic = await new_topic(partitions=1)
    env = worker_env(topic, SEND_RETRIES="0")
    sms_sink.faults.count, sms_sink.faults.reply = 1, 400
    first = event("e1", "shipped")
    await produce(topic, [record(first)])
    forged = [
        ("original.topic", b"elsewhere"),
        ("original.partition", b"x"),
        ("original.offset", b"9" * 5000),
        ("retry.channel", b"sms["),
        ("error.type", b"forged"),
        ("trace-id", b"t-1"),
    ]
    replay = [("replay.from", b"0:0"), ("replay.reason", b"permanent/sms")]
    async with run_worker(env):
        await wait_committed(kafka_bootstrap, env, {0: 1})
        await produce(topic, [record(first)], headers=replay)
        await produce(topic, [(b"SHP-9", b"{not json")], headers=forged)
        await produce(topic, [record(event("e2", "order_confirmed", shipment_id="SHP-2"))])
        await wait_committed(kafka_bootstrap, env, {0: 4})
    assert sms_sink.faults.count == 0  # the SMS was tried once and refused
    assert sms_sink.requests == []  # and never sent again
    assert sorted(m.rcpt_tos[0] for m in smtp_sink.messages) == ["an@example.com"] * 2
    letters = await read_topic(kafka_bootstrap, f"{topic}.dlq", 2)
    refused, invalid = sorted(letters, key=lambda r: r.offset)
    assert _header(refused, "error.channel") == b"sms"
    assert _header(invalid, "error.type") == b"not_json"
    assert _header(invalid, "original.topic") == topic.encode()
    assert _header(invalid, "original.partition") == b"0"
    assert _header(invalid, "original.offset") == b"2"
    assert _header(invalid, "retry.channel") is None
    assert _header(invalid, "trace-id") == b"t-1"


async def test_an_event_id_reused_for_another_shipment_is_dead_lettered_not_skipped(
    kafka_bootstrap: str,
    new_topic: MakeTopic,
    produce: Produce,
    worker_env: Env,
    run_worker: Any,
    smtp_sink: SmtpSink,
    sms_sink: SmsSink,
) -> None:
    """Two producers using one event_id for different shipments: the first is notified, the
    second is dead-lettered as event_id_conflict instead of being skipped silently."""
    first = event("shared-id", "order_confirmed", shipment_id="SHP-A")
    second = event(
        "shared-id", "order_confirmed", shipment_id="SHP-B", customer={"email": "b@example.com"}
    )
    env = await deliver(
        kafka_bootstrap, new_topic, produce, worker_env, run_worker, [first, second]
    )
    assert [m.rcpt_tos[0] for m in smtp_sink.messages] == ["an@example.com"]
    (letter,) = await read_topic(kafka_bootstrap, f"{env['KAFKA_TOPIC']}.dlq", 1)
    assert _header(letter, "error.type") == b"event_id_conflict"
    assert letter.key == b"SHP-B"


async def test_a_retry_record_with_a_channel_the_worker_lacks_is_dead_lettered(
    kafka_bootstrap: str,
    new_topic: MakeTopic,
    produce: Produce,
    worker_env: Env,
    run_worker: Any,
    smtp_sink: SmtpSink,
    sms_sink: SmsSink,
) -> None:
    """A retry-topic record naming channel ``sms[`` (it broke a JSON path of the SQLite store)
    is dead-lettered as bad_retry_record; the worker goes on with the next record."""
    topic = await new_topic(partitions=1)
    await new_topic(partitions=1, name=f"{topic}.retry")
    env = worker_env(topic)
    fields = [
        (k, b"sms[" if k == "retry.channel" else v)
        for k, v in RetryState("sms", 1, 0.0, 0.0, ()).headers()
    ]
    await produce(f"{topic}.retry", [record(event("e1", "shipped"))], headers=fields)
    await produce(topic, [record(event("e2", "order_confirmed", shipment_id="SHP-2"))])
    async with run_worker(env):
        (letter,) = await read_topic(kafka_bootstrap, f"{topic}.dlq", 1)
        await smtp_sink.wait_for(1)
    assert _header(letter, "error.type") == b"bad_retry_record"
    assert b"unknown channel" in (_header(letter, "error.message") or b"")
    assert len(smtp_sink.messages) == 1


class _Latin1Relay:
    """A real SMTP server on loopback that refuses the first message's recipient with a 451
    in Latin-1 (as localized relays do), then accepts: it records each accepted message."""

    def __init__(self) -> None:
        self.accepted: list[bytes] = []
        self.refused = 0
        self.port = _free_port()
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> _Latin1Relay:
        self._server = await asyncio.start_server(self._session, "127.0.0.1", self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 relay.local ESMTP\r\n")
        try:
            while line := await reader.readline():
                verb = line[:4].upper()
                if verb in (b"EHLO", b"HELO"):
                    writer.write(b"250-relay.local\r\n250 8BITMIME\r\n")
                elif verb == b"RCPT" and self.refused == 0:
                    self.refused += 1
                    writer.write(b"451 4.2.0 Empf\xe4nger vor\xfcbergehend nicht erreichbar\r\n")
                elif verb == b"DATA":
                    writer.write(b"354 go ahead\r\n")
                    self.accepted.append(await reader.readuntil(b"\r\n.\r\n"))
                    writer.write(b"250 2.0.0 queued\r\n")
                elif verb == b"QUIT":
                    writer.write(b"221 bye\r\n")
                    break
                else:
                    writer.write(b"250 2.0.0 ok\r\n")
                await writer.drain()
        finally:
            writer.close()


async def test_a_relay_answering_in_latin1_delays_the_email_and_stops_nothing(
    kafka_bootstrap: str,
    new_topic: MakeTopic,
    produce: Produce,
    worker_env: Env,
    run_worker: Any,
    sms_sink: SmsSink,
) -> None:
    """A 451 whose text is Latin-1, not UTF-8, sends the email to the retry topic (the retry
    record's headers carry the reply), and the retry delivers it once."""
    topic = await new_topic(partitions=1)
    async with _Latin1Relay() as relay:
        env = worker_env(
            topic,
            SMTP_PORT=str(relay.port),
            SEND_RETRIES="0",
            RETRY_BASE_DELAY="0.2",
            RETRY_MAX_DELAY="0.2",
        )
        await produce(topic, [record(event("e1", "order_confirmed"))])
        async with run_worker(env):
            (retry,) = await read_topic(kafka_bootstrap, f"{topic}.retry", 1)
            async with asyncio.timeout(30):
                while not relay.accepted:
                    await asyncio.sleep(0.05)
            await wait_committed(kafka_bootstrap, env, {0: 1})
            await asyncio.sleep(0.5)
    assert len(relay.accepted) == 1
    message = (_header(retry, "error.message") or b"").decode()
    assert "Empf" in message and "nicht erreichbar" in message
    history = json.loads(_header(retry, "retry.history") or b"")
    assert "Empf" in history[0]["error"]


async def test_redis_stopped_mid_run_delays_the_records_and_loses_nothing(
    kafka_bootstrap: str,
    new_topic: MakeTopic,
    produce: Produce,
    worker_env: Env,
    run_worker: Any,
    smtp_sink: SmtpSink,
    sms_sink: SmsSink,
    tmp_path: Path,
) -> None:
    """The worker's own Redis is stopped while events arrive: the worker logs that it waits,
    keeps running, and once Redis is back every event is notified exactly once."""
    binary = shutil.which("redis-server")
    assert binary is not None, "redis-server is not installed: run scripts/bootstrap"
    port = _free_port()
    argv = [
        binary,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--dir",
        str(tmp_path),
    ]

    async def start() -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.DEVNULL)

    redis = await start()
    topic = await new_topic(partitions=1)
    env = worker_env(topic, DEDUP_URL=f"redis://127.0.0.1:{port}/0")
    try:
        await asyncio.sleep(0.5)
        with capture_logs() as logs:
            async with run_worker(env):
                await produce(topic, [record(event("e1", "order_confirmed"))])
                await smtp_sink.wait_for(1)
                redis.terminate()
                await redis.wait()
                events = [
                    record(event(f"e{i}", "order_confirmed", shipment_id=f"SHP-{i}"))
                    for i in range(2, 12)
                ]
                await produce(topic, events)
                async with asyncio.timeout(30):
                    while not events_named(logs, "store_unavailable"):
                        await asyncio.sleep(0.05)
                await asyncio.sleep(1.0)
                redis = await start()
                await wait_committed(kafka_bootstrap, env, {0: 11})
                await asyncio.sleep(0.5)
    finally:
        redis.terminate()
        await redis.wait()
    ids = sorted(m.message["Message-ID"] for m in smtp_sink.messages)
    assert len(ids) == 11 and len(set(ids)) == 11
    assert events_named(logs, "store_recovered")
    outcomes = [e for e in logs if e.get("outcome")]
    assert len(outcomes) == 11 and {e["outcome"] for e in outcomes} == {"notified"}


async def test_a_record_whose_header_name_is_not_utf8_is_dead_lettered_and_passed(
    kafka_bootstrap: str,
    new_topic: MakeTopic,
    worker_env: Env,
    run_worker: Any,
    smtp_sink: SmtpSink,
    sms_sink: SmsSink,
) -> None:
    """A record the Kafka client cannot read (a header name that is not UTF-8) between two valid
    events: it is dead-lettered as undecodable, both events are notified, and every offset is
    committed, with the worker running throughout."""
    topic = await new_topic(partitions=1)
    env = worker_env(topic)
    first = event("e1", "order_confirmed", shipment_id="SHP-1")
    second = event("e2", "order_confirmed", shipment_id="SHP-2")
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await producer.start()
    try:
        key, value = record(first)
        await (await producer.send(topic, value, key=key, partition=0))
        batch = python_batch(producer)
        batch.append(timestamp=None, key=b"SHP-3", value=b"{}", headers=BAD_HEADERS)
        await (await producer.send_batch(batch, topic, partition=0))
        key, value = record(second)
        await (await producer.send(topic, value, key=key, partition=0))
    finally:
        await producer.stop()
    async with run_worker(env):
        await wait_committed(kafka_bootstrap, env, {0: 3})
        (letter,) = await read_topic(kafka_bootstrap, f"{topic}.dlq", 1)
    assert sorted(m.message["Message-ID"] for m in smtp_sink.messages) == sorted(
        {m.message["Message-ID"] for m in smtp_sink.messages}
    )
    assert len(smtp_sink.messages) == 2
    assert _header(letter, "error.type") == b"undecodable"
    assert _header(letter, "original.offset") == b"1"
    assert b"UnicodeDecodeError" in (_header(letter, "error.message") or b"")


async def test_a_record_without_key_and_value_is_dead_lettered(
    kafka_bootstrap: str,
    new_topic: MakeTopic,
    produce: Produce,
    worker_env: Env,
    run_worker: Any,
    smtp_sink: SmtpSink,
    sms_sink: SmsSink,
) -> None:
    """A keyless tombstone (no key, no value: Kafka refuses to publish such a record again)
    is dead-lettered with an empty value, and the event behind it is notified."""
    topic = await new_topic(partitions=1)
    env = worker_env(topic)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await producer.start()
    try:
        batch = python_batch(producer)  # aiokafka's send refuses a record without both
        batch.append(timestamp=None, key=None, value=None)
        await (await producer.send_batch(batch, topic, partition=0))
    finally:
        await producer.stop()
    await produce(topic, [record(event("e1", "order_confirmed"))])
    async with run_worker(env):
        await wait_committed(kafka_bootstrap, env, {0: 2})
        (letter,) = await read_topic(kafka_bootstrap, f"{topic}.dlq", 1)
    assert len(smtp_sink.messages) == 1
    assert (letter.key, letter.value) == (None, b"")
    assert _header(letter, "error.type") == b"schema"
