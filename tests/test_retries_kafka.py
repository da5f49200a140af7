"""Delivery guarantees through the real path (Kafka, SMTP and HTTP servers on loopback), with the
worker in this process: retry topic, stale retries, dead-letter replay, concurrency."""

from __future__ import annotations

import asyncio
import json
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs

from structlog.testing import capture_logs

from tests.conftest import MakeTopic, Produce, read_topic
from tests.factories import event, record
from tests.sinks import SmsSink, SmtpSink
from tests.test_pipeline_kafka import events_named, wait_committed
from worker import dlq
from worker.settings import load_settings

Env = Callable[..., dict[str, str]]
FAST_RETRIES = {
    "SEND_RETRIES": "0",
    "RETRY_BASE_DELAY": "0.3",
    "RETRY_MAX_DELAY": "1",
    "RETRY_MAX_ATTEMPTS": "5",
}


async def test_a_failing_sms_goes_through_the_retry_topic_and_arrives_once(
    kafka_bootstrap: str,
    new_topic: MakeTopic,
    produce: Produce,
    worker_env: Env,
    run_worker: Any,
    smtp_sink: SmtpSink,
    sms_sink: SmsSink,
) -> None:
    """SMS API answering 503 three times: the SMS is retried from the retry topic with growing
    attempts and arrives once; the email that went out first is not sent again."""
    topic = await new_topic(partitions=1)
    env = worker_env(topic, **FAST_RETRIES)
    sms_sink.faults.count, sms_sink.faults.reply = 3, 503
    await produce(topic, [record(event("e1", "shipped"))])
    with capture_logs() as logs:
        async with run_worker(env):
            try:
                await sms_sink.wait_for(1)
            except AssertionError:
                print("\n".join(str(e) for e in logs))
                raise
            await wait_committed(kafka_bootstrap, env, {0: 1})
            await asyncio.sleep(0.5)  # a resend would follow right behind
    assert len(sms_sink.requests) == 1
    assert len(smtp_sink.messages) == 1
    assert sms_sink.rejected == 3
    scheduled = events_named(logs, "notification_retry_scheduled")
    assert [(s["channel"], s["attempt"]) for s in scheduled] == [("sms", 1), ("sms", 2), ("sms", 3)]
    assert [e["outcome"] for e in logs if e["event"] == "event_notified"] == [
        "notified",
        "notified",
    ]


async def test_retries_exhausted_dead_letter_the_channel_with_its_history(
    kafka_bootstrap: str,
    new_topic: MakeTopic,
    produce: Produce,
    worker_env: Env,
    run_worker: Any,
    smtp_sink: SmtpSink,
    sms_sink: SmsSink,
) -> None:
    """An SMS that keeps failing is dead-lettered after RETRY_MAX_ATTEMPTS with every failure
    in its history; the email still goes out once."""
    topic = await new_topic(partitions=1)
    env = worker_env(topic, **{**FAST_RETRIES, "RETRY_MAX_ATTEMPTS": "2"})
    sms_sink.faults.count, sms_sink.faults.reply = 100, 429
    await produce(topic, [record(event("e1", "shipped"))])
    async with run_worker(env):
        (dead,) = await read_topic(kafka_bootstrap, f"{topic}.dlq", 1)
    headers = dict(dead.headers)
    assert headers["error.type"] == b"retries_exhausted"
    assert headers["error.channel"] == b"sms"
    assert (headers["original.topic"], headers["original.offset"]) == (topic.encode(), b"0")
    history = json.loads(headers["retry.history"])
    assert [h["error"] for h in history] == ["SMS provider answered 429"] * 3
    assert sms_sink.rejected == 3
    assert sms_sink.requests == []
    assert len(smtp_sink.messages) == 1


async def test_a_retry_whose_shipment_moved_on_is_dropped_not_sent_late(
    kafka_bootstrap: str,
    new_topic: MakeTopic,
    produce: Produce,
    worker_env: Env,
    run_worker: Any,
    sms_sink: SmsSink,
) -> None:
    """The out_for_delivery SMS fails and waits for its retry; meanwhile "delivered" arrives.
    The customer gets the delivered SMS only; the late out_for_delivery is dropped as stale."""
    topic = await new_topic(partitions=1)
    env = worker_env(topic, **{**FAST_RETRIES, "RETRY_BASE_DELAY": "1.5", "RETRY_MAX_DELAY": "3"})
    sms_sink.faults.count, sms_sink.faults.reply = 1, 503
    await produce(topic, [record(event("e1", "out_for_delivery", minutes=0))])
    with capture_logs() as logs:
        async with run_worker(env):
            await wait_committed(kafka_bootstrap, env, {0: 1})
            await produce(topic, [record(event("e2", "delivered", minutes=30))])
            await sms_sink.wait_for(1)
            async with asyncio.timeout(30):
                while not events_named(logs, "notification_stale_dropped"):
                    await asyncio.sleep(0.1)
    (sms,) = sms_sink.requests
    assert parse_qs(sms.body.decode())["Body"][0] == parse_qs(sms.body.decode())["Body"][0]
    assert json.loads(json.dumps(sms.headers))["Idempotency-Key"]
    bodies = [parse_qs(r.body.decode())["Body"][0] for r in sms_sink.requests]
    assert len(bodies) == 1 and "giao thành công" in bodies[0]
    assert [e["channel"] for e in events_named(logs, "notification_stale_dropped")] == ["sms"]


async def test_replaying_dead_letters_twice_notifies_once(
    kafka_bootstrap: str,
    new_topic: MakeTopic,
    produce: Produce,
    worker_env: Env,
    run_worker: Any,
    smtp_sink: SmtpSink,
    sms_sink: SmsSink,
    monkeypatch: Any,
) -> None:
    """An email refused with 550 is dead-lettered; after the fix, replaying the dead letters
    sends it once, and replaying them again sends nothing more. A replay of a dead-lettered
    channel comes back through the retry topic (the only topic that may reopen a channel)."""
    topic = await new_topic(partitions=1)
    env = worker_env(topic)
    smtp_sink.faults.count, smtp_sink.faults.reply = 1, "550 5.1.1 mailbox unavailable"
    await produce(topic, [record(event("e1", "shipped"))])
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    kafka = load_settings().kafka
    async with run_worker(env):
        await wait_committed(kafka_bootstrap, env, {0: 1})
        assert smtp_sink.messages == []
        summary = await dlq.summarize(kafka)
        assert (summary.total, dict(summary.by_reason)) == (1, {"permanent/email": 1})
        assert await dlq.replay(kafka, dlq.selector("permanent", None)) == 1
        await smtp_sink.wait_for(1)
        retries = {**env, "KAFKA_TOPIC": f"{topic}.retry"}
        await wait_committed(kafka_bootstrap, retries, {0: 1})
        assert await dlq.replay(kafka, dlq.selector(None, None)) == 1
        await wait_committed(kafka_bootstrap, retries, {0: 2})
    assert len(smtp_sink.messages) == 1
    assert len(sms_sink.requests) == 1  # the SMS went out the first time and only then


async def test_a_slow_smtp_server_does_not_serialize_unrelated_shipments(
    kafka_bootstrap: str,
    new_topic: MakeTopic,
    produce: Produce,
    worker_env: Env,
    run_worker: Any,
    smtp_sink: SmtpSink,
) -> None:
    """500 events of 500 shipments on one partition, the SMTP server taking 100 ms per message:
    all are sent in a small multiple of 100 ms (serially it would take 50 s)."""
    topic = await new_topic(partitions=1)
    env = worker_env(topic, SMS_PROVIDER="disabled", SMTP_POOL_SIZE="100", MAX_IN_FLIGHT="256")
    await produce(
        topic, [record(event(f"e{i}", "shipped", shipment_id=f"S{i}")) for i in range(500)]
    )
    smtp_sink.faults.delay = 0.1
    async with run_worker(env):
        await smtp_sink.wait_for(1)
        started = time.monotonic()
        await smtp_sink.wait_for(500, timeout=60)
        elapsed = time.monotonic() - started
    print(f"500 emails through a 100 ms SMTP server in {elapsed:.2f} s")
    assert elapsed < 10.0
    assert len({m.message["Message-ID"] for m in smtp_sink.messages}) == 500


async def test_one_shipments_events_stay_in_order_while_others_run_concurrently(
    kafka_bootstrap: str,
    new_topic: MakeTopic,
    produce: Produce,
    worker_env: Env,
    run_worker: Any,
    smtp_sink: SmtpSink,
) -> None:
    """Twenty shipments' five statuses, interleaved on two partitions with a slow SMTP server:
    every shipment's emails arrive in status order and none is skipped as stale."""
    statuses = ["order_confirmed", "shipped", "out_for_delivery", "delivery_failed", "delivered"]
    topic = await new_topic(partitions=2)
    env = worker_env(topic, SMS_PROVIDER="disabled", SMTP_POOL_SIZE="20")
    records = [
        record(event(f"S{s}-{i}", status, shipment_id=f"S{s}", minutes=i))
        for i, status in enumerate(statuses)
        for s in range(20)
    ]
    await produce(topic, records)
    smtp_sink.faults.delay = 0.02
    with capture_logs() as logs:
        async with run_worker(env):
            await smtp_sink.wait_for(100)
    order: dict[str, list[str]] = defaultdict(list)
    for mail in smtp_sink.messages:
        shipment, index = _event_of(mail.message["Message-ID"], records)
        order[shipment].append(index)
    assert dict(order) == {f"S{s}": [0, 1, 2, 3, 4] for s in range(20)}
    assert events_named(logs, "event_stale_skipped") == []


def _event_of(message_id: str, records: list[tuple[bytes, bytes]]) -> tuple[str, int]:
    from worker.channels import idempotency_key

    for _, value in records:
        data = json.loads(value)
        if f"<{idempotency_key(data['event_id'], 'email')}@" in message_id:
            shipment, index = data["event_id"].split("-")
            return shipment, int(index)
    raise AssertionError(f"no event for {message_id}")
