"""CloudEvents through the real path: published with the ``cloudevents`` SDK to a real broker in
binary and structured mode, read by the worker in this process, notified through a real SMTP
server on loopback; refused ones read back from the dead-letter topic."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from cloudevents.core.bindings import kafka
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent
from structlog.testing import capture_logs

from tests.conftest import MakeTopic, Produce, read_topic
from tests.factories import event
from tests.sinks import SmsSink, SmtpSink
from tests.test_pipeline_kafka import Env, events_named, wait_committed
from worker.logs import merge_context

TYPE = "shipment.status.changed"


def cloudevent(ce_id: str, status: str, ce_type: str = TYPE, **attributes: Any) -> CloudEvent:
    """A CloudEvent whose data is an event without event_id and occurred_at: the id and time
    attributes give them."""
    data = event("unused", status, customer={"phone": None})
    del data["event_id"], data["occurred_at"]
    return CloudEvent(
        {
            "id": ce_id,
            "source": "/warehouse/wms",
            "type": ce_type,
            "time": datetime(2026, 11, 21, 9, 30, tzinfo=UTC),
            "datacontenttype": "application/json",
            "partitionkey": "SHP-1",  # the SDK's key mapper makes it the record key
            **attributes,
        },
        data,
    )


async def publish(produce: Produce, topic: str, *messages: kafka.KafkaMessage) -> None:
    for message in messages:
        key = message.key.encode() if isinstance(message.key, str) else message.key
        await produce(topic, [(key, message.value)], headers=list(message.headers.items()))


async def test_binary_mode_cloudevents_are_notified_once_per_ce_id(
    kafka_bootstrap: str,
    new_topic: MakeTopic,
    produce: Produce,
    worker_env: Env,
    run_worker: Any,
    smtp_sink: SmtpSink,
    sms_sink: SmsSink,
) -> None:
    """Binary-mode CloudEvents (attributes in ce_* headers) reach the customer by email, with
    ce_id as the event_id: the same CloudEvent published again is a redelivery."""
    topic = await new_topic(partitions=1)
    env = worker_env(topic)
    shipped = kafka.to_binary_event(cloudevent("ce-1", "shipped"))
    delivered = kafka.to_binary_event(cloudevent("ce-2", "delivered"))
    assert {"ce_id", "ce_type", "ce_source", "ce_time", "ce_specversion"} <= set(shipped.headers)
    with capture_logs(processors=[merge_context]) as logs:
        async with run_worker(env):
            await publish(produce, topic, shipped, shipped, delivered)
            await wait_committed(kafka_bootstrap, env, {0: 3})
    assert [m.rcpt_tos[0] for m in smtp_sink.messages] == ["an@example.com"] * 2
    # two emails, one per status (an order's emails share one subject, so they thread)
    assert len({m.message["Message-ID"] for m in smtp_sink.messages}) == 2
    notified = events_named(logs, "event_notified")
    assert [(e["event_id"], e["status"]) for e in notified] == [
        ("ce-1", "shipped"),
        ("ce-2", "delivered"),
    ]
    assert [e["event_id"] for e in events_named(logs, "event_duplicate_skipped")] == ["ce-1"]


async def test_structured_mode_cloudevents_are_notified_with_data_or_data_base64(
    kafka_bootstrap: str,
    new_topic: MakeTopic,
    produce: Produce,
    worker_env: Env,
    run_worker: Any,
    smtp_sink: SmtpSink,
    sms_sink: SmsSink,
) -> None:
    """Structured-mode CloudEvents (content-type application/cloudevents+json) reach the
    customer by email, whether the SDK wrote the event as data or as data_base64."""
    topic = await new_topic(partitions=1)
    env = worker_env(topic)
    as_data = kafka.to_structured_event(cloudevent("ce-1", "shipped"))
    encoded = cloudevent("ce-2", "delivered")
    as_bytes = JSONFormat().write_data(encoded.get_data(), None)
    as_base64 = kafka.to_structured_event(CloudEvent(encoded.get_attributes(), as_bytes))
    assert as_data.headers == {"content-type": b"application/cloudevents+json"}
    assert b'"data_base64"' in as_base64.value
    with capture_logs(processors=[merge_context]) as logs:
        async with run_worker(env):
            await publish(produce, topic, as_data, as_base64)
            await wait_committed(kafka_bootstrap, env, {0: 2})
    assert [m.rcpt_tos[0] for m in smtp_sink.messages] == ["an@example.com"] * 2
    notified = events_named(logs, "event_notified")
    assert [(e["event_id"], e["status"]) for e in notified] == [
        ("ce-1", "shipped"),
        ("ce-2", "delivered"),
    ]


async def test_unexpected_or_malformed_cloudevents_are_dead_lettered_with_the_reason(
    kafka_bootstrap: str,
    new_topic: MakeTopic,
    produce: Produce,
    worker_env: Env,
    run_worker: Any,
    smtp_sink: SmtpSink,
    sms_sink: SmsSink,
) -> None:
    """A CloudEvent of a type not in CLOUDEVENTS_TYPES is dead-lettered as unexpected_ce_type,
    one of specversion 0.3 or with a ce_id that is not UTF-8 as bad_cloudevent, each with its
    ce_* headers kept; the worker goes on and notifies the next accepted one."""
    topic = await new_topic(partitions=1)
    env = worker_env(topic, CLOUDEVENTS_TYPES="com.example.shipment.*, shipment.status.changed")
    other = kafka.to_binary_event(cloudevent("ce-1", "shipped", ce_type="com.example.order.paid"))
    old = kafka.to_structured_event(cloudevent("ce-2", "shipped"))
    old_value = old.value.replace(b'"specversion": "1.0"', b'"specversion": "0.3"')
    garbled = kafka.to_binary_event(cloudevent("ce-3", "shipped"))
    good = kafka.to_binary_event(cloudevent("ce-4", "shipped", ce_type="com.example.shipment.v2"))
    async with run_worker(env):
        await publish(
            produce,
            topic,
            other,
            kafka.KafkaMessage(old.headers, old.key, old_value),
            kafka.KafkaMessage({**garbled.headers, "ce_id": b"\xffce-3"}, b"SHP-1", garbled.value),
            good,
        )
        await wait_committed(kafka_bootstrap, env, {0: 4})
    assert [m.rcpt_tos[0] for m in smtp_sink.messages] == ["an@example.com"]
    letters = sorted(await read_topic(kafka_bootstrap, f"{topic}.dlq", 3), key=lambda r: r.offset)
    reasons = [
        (dict(r.headers)["error.type"], dict(r.headers)["error.message"].decode()) for r in letters
    ]
    assert reasons == [
        (
            b"unexpected_ce_type",
            "ce_type 'com.example.order.paid' is not accepted "
            "(CLOUDEVENTS_TYPES=com.example.shipment.*,shipment.status.changed)",
        ),
        (
            b"bad_cloudevent",
            "structured CloudEvent: specversion: '0.3' is not supported: the worker reads "
            "CloudEvents 1.0",
        ),
        (b"bad_cloudevent", "binary CloudEvent: header ce_id is not UTF-8"),
    ]
    assert dict(letters[0].headers)["ce_type"] == b"com.example.order.paid"
    assert dict(letters[2].headers)["ce_id"] == b"\xffce-3"
    assert letters[1].value == old_value


async def test_a_binary_cloudevent_retried_through_the_retry_topic_arrives_once(
    kafka_bootstrap: str,
    new_topic: MakeTopic,
    produce: Produce,
    worker_env: Env,
    run_worker: Any,
    smtp_sink: SmtpSink,
    sms_sink: SmsSink,
) -> None:
    """An email of a binary-mode CloudEvent refused once with a 451 goes to the retry topic
    with its ce_* headers, is read there as the same CloudEvent, and arrives once."""
    topic = await new_topic(partitions=1)
    env = worker_env(topic, SEND_RETRIES="0", RETRY_BASE_DELAY="0.2", RETRY_MAX_DELAY="0.5")
    smtp_sink.faults.count, smtp_sink.faults.reply = 1, "451 4.3.0 try again later"
    with capture_logs(processors=[merge_context]) as logs:
        async with run_worker(env):
            await publish(produce, topic, kafka.to_binary_event(cloudevent("ce-1", "shipped")))
            await smtp_sink.wait_for(1)
            await wait_committed(kafka_bootstrap, env, {0: 1})
    (retried,) = await read_topic(kafka_bootstrap, f"{topic}.retry", 1)
    assert dict(retried.headers)["ce_id"] == b"ce-1"
    assert dict(retried.headers)["retry.channel"] == b"email"
    assert [m.rcpt_tos[0] for m in smtp_sink.messages] == ["an@example.com"]
    notified = events_named(logs, "event_notified")
    assert [(e["event_id"], e["topic"]) for e in notified] == [("ce-1", f"{topic}.retry")]
