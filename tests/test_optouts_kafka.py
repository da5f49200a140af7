"""Opt-outs through the real path: a real broker, the worker in this process, a real SMTP
server and a real HTTP SMS endpoint answering as Twilio does. A STOP answer and the shop's
preferences topic are remembered in the store and honoured before every send."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from structlog.testing import capture_logs

from tests.conftest import MakeTopic, Produce, committed_offsets, read_topic
from tests.factories import event, record
from tests.sinks import SmsSink, SmtpSink
from tests.test_pipeline_kafka import Env, events_named, wait_committed

PHONE = "phone:+84901234567"  # the factories' customer, "+84 90 123 4567"


async def _committed(bootstrap: str, group: str, topic: str, end: int) -> None:
    async with asyncio.timeout(60):
        while (await committed_offsets(bootstrap, group, topic)).get(0, -1) < end:
            await asyncio.sleep(0.1)


async def _started(logs: list[dict[str, Any]]) -> None:
    async with asyncio.timeout(60):
        while not events_named(logs, "worker_started"):
            await asyncio.sleep(0.05)


async def _cleanup_policy(bootstrap: str, topic: str) -> str:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        (described,) = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, topic)]
        )
    finally:
        await admin.close()
    (resource,) = described.resources
    return next(str(entry[1]) for entry in resource[4] if entry[0] == "cleanup.policy")


def _skips(logs: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [
        (e["channel"], e["source"])
        for e in events_named(logs, "notification_skipped")
        if e.get("reason") == "opted_out"
    ]


async def test_a_stop_answer_is_remembered_and_the_next_sms_is_not_attempted(
    kafka_bootstrap: str,
    new_topic: MakeTopic,
    produce: Produce,
    worker_env: Env,
    run_worker: Any,
    smtp_sink: SmtpSink,
    sms_sink: SmsSink,
) -> None:
    """Twilio refusing an SMS with 21610 (the customer replied STOP) ends that SMS as
    opted_out, not dead-lettered; the shipment's next SMS is skipped as opted_out without a
    request to the provider, while both emails go out."""
    topic = await new_topic(partitions=1)
    env = worker_env(topic)
    sms_sink.faults.count, sms_sink.faults.reply, sms_sink.faults.code = 1, 400, 21610
    await produce(topic, [record(event("e1", "shipped"))])
    with capture_logs() as logs:
        async with run_worker(env):
            await wait_committed(kafka_bootstrap, env, {0: 1})
            await produce(topic, [record(event("e2", "out_for_delivery", minutes=30))])
            await wait_committed(kafka_bootstrap, env, {0: 2})
    assert sms_sink.rejected == 1  # the first SMS was tried, and refused
    assert sms_sink.requests == []  # the second was never sent to the provider
    assert [m.rcpt_tos[0] for m in smtp_sink.messages] == ["an@example.com"] * 2
    assert _skips(logs) == [("sms", "provider")] * 2  # the STOP, then the remembered STOP
    assert [e["sent"] for e in events_named(logs, "event_notified")] == [["email"], ["email"]]
    assert await read_topic(kafka_bootstrap, f"{topic}.dlq", 0) == []


async def test_an_opt_out_on_the_preferences_topic_then_an_opt_in(
    kafka_bootstrap: str,
    new_topic: MakeTopic,
    produce: Produce,
    worker_env: Env,
    run_worker: Any,
    smtp_sink: SmtpSink,
    sms_sink: SmsSink,
) -> None:
    """The shop opts the number out of SMS and the customer id out of email: the next event
    notifies nobody (skipped as opted_out, nothing sent); after an opt-in record for the
    number and a tombstone for the customer id, the next event gets both channels."""
    topic = await new_topic(partitions=1)
    prefs = f"{topic}.prefs"
    env = worker_env(topic, KAFKA_PREFERENCES_TOPIC=prefs)
    group = env["KAFKA_GROUP_ID"]
    customer = {"id": "C-77"}
    with capture_logs() as logs:
        async with run_worker(env):
            await _started(logs)  # the worker created the topic
            assert await _cleanup_policy(kafka_bootstrap, prefs) == "compact"
            await produce(prefs, [(PHONE.encode(), json.dumps({"opted_out": ["sms"]}).encode())])
            await produce(prefs, [(b"customer:C-77", b'{"opted_out": ["email"]}')])
            await _committed(kafka_bootstrap, group, prefs, 2)
            await produce(topic, [record(event("e1", "shipped", customer=customer))])
            await wait_committed(kafka_bootstrap, env, {0: 1})
            assert smtp_sink.messages == [] and sms_sink.requests == []
            await produce(prefs, [(PHONE.encode(), b'{"opted_out": []}')])
            await produce(prefs, [(b"customer:C-77", None)])  # type: ignore[list-item]
            await _committed(kafka_bootstrap, group, prefs, 4)
            await produce(topic, [record(event("e2", "delivered", minutes=60, customer=customer))])
            await wait_committed(kafka_bootstrap, env, {0: 2})
    assert len(sms_sink.requests) == 1 and len(smtp_sink.messages) == 1
    assert sorted(_skips(logs)) == [("email", "topic"), ("sms", "topic")]
    recorded = [
        (e["subject"], e["opted_out"], e["opted_in"])
        for e in events_named(logs, "preference_recorded")
    ]
    assert recorded == [
        ("phone:+84******567", ["sms"], ["email"]),
        ("customer:C-77", ["email"], ["sms"]),
        ("phone:+84******567", [], ["email", "sms"]),
        ("customer:C-77", [], ["email", "sms"]),
    ]
    assert [e["rule"] for e in events_named(logs, "event_opted_out_skipped")] == ["opted_out"]


async def test_a_preferences_record_that_is_no_choice_is_dead_lettered(
    kafka_bootstrap: str,
    new_topic: MakeTopic,
    produce: Produce,
    worker_env: Env,
    run_worker: Any,
    smtp_sink: SmtpSink,
    sms_sink: SmsSink,
) -> None:
    """A key that names no subject and a value with an unknown channel go to the dead-letter
    topic as bad_preference; the worker goes on and notifies the next event."""
    topic = await new_topic(partitions=1)
    prefs = f"{topic}.prefs"
    env = worker_env(topic, KAFKA_PREFERENCES_TOPIC=prefs)
    with capture_logs() as logs:
        async with run_worker(env):
            await _started(logs)
            await produce(prefs, [(b"an@example.com", b'{"opted_out": ["sms"]}')])
            await produce(prefs, [(PHONE.encode(), b'{"opted_out": ["fax"]}')])
            await _committed(kafka_bootstrap, env["KAFKA_GROUP_ID"], prefs, 2)
            await produce(topic, [record(event("e1", "shipped"))])
            await wait_committed(kafka_bootstrap, env, {0: 1})
    assert [e["reason"] for e in events_named(logs, "preference_dead_lettered")] == [
        "bad_preference"
    ] * 2
    letters = await read_topic(kafka_bootstrap, f"{topic}.dlq", 2)
    assert [dict(r.headers)["error.type"] for r in letters] == [b"bad_preference"] * 2
    assert len(sms_sink.requests) == 1 and len(smtp_sink.messages) == 1
