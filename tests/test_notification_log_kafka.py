"""The notification log through the real path (Kafka, SMTP and HTTP servers on loopback, the
worker in this process) and ``python -m worker history`` reading it back as a subprocess."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from tests.conftest import MakeTopic, Produce, read_topic
from tests.factories import event, record
from tests.sinks import SmtpSink
from tests.test_pipeline_kafka import wait_committed
from tests.test_settings import clean_environ
from worker.history import partition_for

ROOT = Path(__file__).resolve().parent.parent
Env = Callable[..., dict[str, str]]
RETRIES = {
    "SEND_RETRIES": "0",
    "RETRY_BASE_DELAY": "1.5",
    "RETRY_MAX_DELAY": "3",
    "RETRY_MAX_ATTEMPTS": "5",
}
NO_PHONE = {"phone": None, "locale": "de-AT"}
SHIPMENT = "SHP-LOG-1"

# (status, channel, outcome, reason, attempt) of the scenario below, in the order it happens
TIMELINE = [
    ("shipped", "sms", "skipped", "no_contact", 1),
    ("shipped", "email", "sent", None, 1),
    ("out_for_delivery", "sms", "skipped", "no_contact", 1),
    ("out_for_delivery", "email", "deferred", "transient", 1),
    ("out_for_delivery", "email", "sent", None, 2),
    ("delayed", "sms", "skipped", "no_contact", 1),
    ("delayed", "email", "deferred", "transient", 1),
    ("delivered", "sms", "skipped", "no_contact", 1),
    ("delivered", "email", "sent", None, 1),
    ("delayed", "email", "superseded", "superseded", 2),
]


def history_cli(bootstrap: str, topic: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **clean_environ(),
        "PYTHONIOENCODING": "utf-8",
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "KAFKA_TOPIC": topic,
    }
    return subprocess.run(
        [sys.executable, "-m", "worker", "history", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        encoding="utf-8",
        timeout=120,
        check=False,
    )


async def history_json(bootstrap: str, topic: str, *args: str) -> list[dict[str, Any]]:
    done = await asyncio.to_thread(history_cli, bootstrap, topic, *args, "--json")
    assert (done.returncode, done.stderr) == (0, "")
    return [json.loads(line) for line in done.stdout.splitlines()]


async def log_size(bootstrap: str, topic: str) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        if not partitions:
            await consumer._client.force_metadata_update()
            partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in partitions]
        ends = await consumer.end_offsets(tps)
        return sum(ends.values())
    finally:
        await consumer.stop()


async def wait_for_log(bootstrap: str, topic: str, count: int) -> None:
    async with asyncio.timeout(60):
        while await log_size(bootstrap, f"{topic}.notifications") < count:
            await asyncio.sleep(0.1)


async def run_scenario(
    kafka_bootstrap: str, topic: str, produce: Produce, env: dict[str, str], smtp_sink: SmtpSink
) -> None:
    """A sent email and a skipped SMS; an email refused once, then sent by its retry; an email
    refused once whose retry is overtaken by "delivered"."""

    def shipment_event(event_id: str, status: str, minutes: int) -> tuple[bytes, bytes]:
        data = event(event_id, status, shipment_id=SHIPMENT, minutes=minutes, customer=NO_PHONE)
        return record(data)

    await produce(topic, [shipment_event("e1", "shipped", 0)])
    await smtp_sink.wait_for(1)
    smtp_sink.faults.count, smtp_sink.faults.reply = 1, "451 4.3.0 try again later"
    await produce(topic, [shipment_event("e2", "out_for_delivery", 10)])
    await smtp_sink.wait_for(2)
    smtp_sink.faults.count, smtp_sink.faults.reply = 1, "451 4.3.0 try again later"
    await produce(topic, [shipment_event("e3", "delayed", 20)])
    await wait_committed(kafka_bootstrap, env, {0: 3})
    await produce(topic, [shipment_event("e4", "delivered", 30)])
    await smtp_sink.wait_for(3)
    await wait_for_log(kafka_bootstrap, topic, len(TIMELINE))
    await wait_committed(kafka_bootstrap, {**env, "KAFKA_TOPIC": f"{topic}.retry"}, {0: 2})


def summary(records: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [(r["status"], r["channel"], r["outcome"], r["reason"], r["attempt"]) for r in records]


async def test_a_shipments_history_is_its_timeline_of_channel_outcomes(
    kafka_bootstrap: str,
    new_topic: MakeTopic,
    produce: Produce,
    worker_env: Env,
    run_worker: Any,
    smtp_sink: SmtpSink,
) -> None:
    """A sent email, a skipped SMS (no phone), a retried-then-sent email and a superseded retry
    give exactly that timeline in ``history --shipment``, with Message-IDs of the emails the
    SMTP server received, masked recipients, and the times of each outcome."""
    topic = await new_topic(partitions=1)
    env = worker_env(topic, **RETRIES)
    async with run_worker(env):
        await run_scenario(kafka_bootstrap, topic, produce, env, smtp_sink)
    records = await history_json(kafka_bootstrap, topic, "--shipment", SHIPMENT)
    assert summary(records) == TIMELINE
    received = [m.message["Message-ID"] for m in smtp_sink.messages]
    assert [r["message_id"] for r in records if r["outcome"] == "sent"] == received
    addressed = [r for r in records if r["outcome"] in ("sent", "deferred")]
    assert {r["recipient"] for r in addressed} == {"a***@example.com"}
    # nothing was addressed: no phone for the SMS, and a superseded retry is not planned again
    assert {r["recipient"] for r in records if r not in addressed} == {None}
    assert {(r["shipment_id"], r["order_id"], r["locale"]) for r in records} == {
        (SHIPMENT, "ORD-5521", "de-AT")
    }
    assert all(r["outcome_at"] >= r["produced_at"] for r in records)
    assert [r["detail"] for r in records if r["outcome"] == "deferred"] == [
        "recipient refused: 451 4.3.0 try again later"
    ] * 2
    text = await asyncio.to_thread(history_cli, kafka_bootstrap, topic, "--shipment", SHIPMENT)
    print(text.stdout)
    lines = text.stdout.splitlines()
    assert lines[0] == f"{topic}.notifications: 10 notification outcomes of shipment {SHIPMENT}"
    header = "time (UTC) status channel locale outcome reason to id"
    assert lines[1].split() == header.split()
    assert [line.split()[2:6] for line in lines[2:]] == [
        [status, channel, "de-AT", outcome] for status, channel, outcome, *_ in TIMELINE
    ]


async def test_a_restart_and_a_redelivery_add_only_repeats_of_known_ids(
    kafka_bootstrap: str,
    new_topic: MakeTopic,
    produce: Produce,
    worker_env: Env,
    run_worker: Any,
    smtp_sink: SmtpSink,
) -> None:
    """After the scenario, a restart of the same group adds nothing to the log; a worker of a
    new group, which gets every record again (as after a crash before the commit), adds only
    repeats of ids already there, and ``history`` shows the same timeline."""
    topic = await new_topic(partitions=1)
    env = worker_env(topic, **RETRIES)
    log = f"{topic}.notifications"
    async with run_worker(env):
        await run_scenario(kafka_bootstrap, topic, produce, env, smtp_sink)
    first = await read_topic(kafka_bootstrap, log, len(TIMELINE))
    async with run_worker(env):
        await asyncio.sleep(3)  # a restart would redeliver within this
    assert await log_size(kafka_bootstrap, log) == len(TIMELINE)
    again = {**env, "KAFKA_GROUP_ID": f"{env['KAFKA_GROUP_ID']}-again"}
    async with run_worker(again):
        await wait_committed(kafka_bootstrap, again, {0: 4})
        await wait_committed(kafka_bootstrap, {**again, "KAFKA_TOPIC": f"{topic}.retry"}, {0: 2})
    everything = await read_topic(kafka_bootstrap, log, len(TIMELINE))
    ids = [json.loads(r.value)["id"] for r in first]
    repeats = [json.loads(r.value) for r in everything[len(first) :]]
    assert len(set(ids)) == len(TIMELINE)
    assert repeats and {r["id"] for r in repeats} <= set(ids)
    assert len(smtp_sink.messages) == 3  # and nothing was sent again
    records = await history_json(kafka_bootstrap, topic, "--shipment", SHIPMENT)
    assert summary(records) == TIMELINE


async def test_the_partition_of_a_key_is_the_one_the_producer_chose(
    kafka_bootstrap: str, new_topic: MakeTopic
) -> None:
    """``partition_for`` agrees with where aiokafka's default partitioner put 200 keys on a
    topic of 7 partitions, so ``--shipment`` reads the right one."""
    topic = await new_topic(partitions=7)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    try:
        keys = [f"SHP-{i}" if i % 3 else f"Đơn-{i}-배송" for i in range(200)]
        metadata = [await producer.send_and_wait(topic, b"{}", key=k.encode()) for k in keys]
    finally:
        await producer.stop()
    assert [m.partition for m in metadata] == [partition_for(k, list(range(7))) for k in keys]
    assert len({m.partition for m in metadata}) == 7


async def test_history_of_an_order_and_since(
    kafka_bootstrap: str,
    new_topic: MakeTopic,
    produce: Produce,
    worker_env: Env,
    run_worker: Any,
    smtp_sink: SmtpSink,
) -> None:
    """``--order`` finds the outcomes of every shipment of the order across partitions, and no
    other order's, while the worker runs; ``--since`` a moment after the first outcomes leaves
    them out."""
    topic = await new_topic(partitions=3)
    env = worker_env(topic, SMS_PROVIDER="disabled")
    shipments = [f"SHP-O-{i}" for i in range(6)]
    orders = {s: ("ORD-Ä" if i % 2 else "ORD-B") for i, s in enumerate(shipments)}
    async with run_worker(env):
        await produce(
            topic,
            [
                record(event(f"o{i}", "shipped", shipment_id=s, shipment={"order_id": orders[s]}))
                for i, s in enumerate(shipments)
            ],
        )
        await smtp_sink.wait_for(6)
        await wait_for_log(kafka_bootstrap, topic, 6)
        await asyncio.sleep(1.5)
        middle = time.time()
        await asyncio.sleep(1.5)
        await produce(
            topic,
            [record(event("late", "delivered", shipment_id=shipments[1], minutes=5,
                          shipment={"order_id": "ORD-Ä"}))],
        )  # fmt: skip
        await wait_for_log(kafka_bootstrap, topic, 7)
        # while the worker runs (history joins no group, so it takes no partition from it)
        found = await history_json(kafka_bootstrap, topic, "--order", "ORD-Ä")
    assert sorted((r["shipment_id"], r["status"]) for r in found) == [
        ("SHP-O-1", "delivered"),
        ("SHP-O-1", "shipped"),
        ("SHP-O-3", "shipped"),
        ("SHP-O-5", "shipped"),
    ]
    since = datetime.fromtimestamp(middle, UTC).isoformat()
    late = await history_json(kafka_bootstrap, topic, "--order", "ORD-Ä", "--since", since)
    assert [(r["shipment_id"], r["status"]) for r in late] == [("SHP-O-1", "delivered")]
    one = await history_json(kafka_bootstrap, topic, "--shipment", "SHP-O-3")
    assert [(r["shipment_id"], r["outcome"]) for r in one] == [("SHP-O-3", "sent")]


async def test_an_empty_topic_setting_turns_the_log_off(
    kafka_bootstrap: str,
    new_topic: MakeTopic,
    produce: Produce,
    worker_env: Env,
    run_worker: Any,
    smtp_sink: SmtpSink,
) -> None:
    """With ``KAFKA_NOTIFICATIONS_TOPIC=`` the worker notifies as before, creates no log topic
    and publishes nothing; ``history`` says the log is off and exits 2."""
    topic = await new_topic(partitions=1)
    env = worker_env(topic, KAFKA_NOTIFICATIONS_TOPIC="", SMS_PROVIDER="disabled")
    async with run_worker(env):
        await produce(topic, [record(event("e1", "shipped"))])
        await smtp_sink.wait_for(1)
        await wait_committed(kafka_bootstrap, env, {0: 1})
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        topics = set(await admin.list_topics())
    finally:
        await admin.close()
    assert {f"{topic}.dlq", f"{topic}.retry"} <= topics
    assert f"{topic}.notifications" not in topics
    off = {**clean_environ(), "KAFKA_TOPIC": topic, "KAFKA_NOTIFICATIONS_TOPIC": ""}
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "worker", "history", "--shipment", "SHP-1"],
        cwd=ROOT,
        env=off,
        capture_output=True,
        encoding="utf-8",
        timeout=120,
        check=False,
    )
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == "history: the notification log is off (KAFKA_NOTIFICATIONS_TOPIC=)\n"
