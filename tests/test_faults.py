"""Fault tests with real processes: the worker as a subprocess, a real broker, real SMTP and
HTTP servers on loopback. Each asserts the exact set of notifications the customers received.

Duplicates are counted on the wire. A worker killed between the provider's acceptance of a
notification and the write that records it cannot know it was sent; the next owner sends it
again with the same Message-ID / Idempotency-Key (mailbox providers and idempotent SMS gateways
drop the repeat). Those tests assert how many such repeats happened, exactly, from the logs.
"""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import MakeTopic, Produce, read_topic
from tests.factories import event, record
from tests.processes import (
    ROOT,
    WorkerProcess,
    end_offsets,
    expected_for,
    received,
    wait_until_all_committed,
    wait_until_received,
)
from tests.sinks import SmsSink, SmtpSink
from worker.channels import idempotency_key
from worker.policy import DEFAULT_POLICY

Env = Callable[..., dict[str, str]]
STATUSES = ["order_confirmed", "shipped", "out_for_delivery", "delivered"]


def shipment_events(shipments: int, prefix: str = "S") -> list[dict[str, Any]]:
    """Each shipment through STATUSES, interleaved across shipments as a busy day looks."""
    return [
        event(
            f"{prefix}{s}-{i}",
            status,
            shipment_id=f"{prefix}{s}",
            minutes=10 * i,
            customer={"phone": f"+1415555{s % 10000:04d}"},
        )
        for i, status in enumerate(STATUSES)
        for s in range(shipments)
    ]


async def test_kill_9_at_random_moments_loses_nothing_and_sends_nothing_twice(
    kafka_bootstrap: str,
    new_topic: MakeTopic,
    produce: Produce,
    worker_env: Env,
    smtp_sink: SmtpSink,
    sms_sink: SmsSink,
    tmp_path: Path,
) -> None:
    """1600 events; the worker is killed with SIGKILL four times at random moments and
    restarted: every notification arrives, and the only repeats are the sends a kill
    interrupted after the provider accepted them."""
    topic = await new_topic(partitions=3)
    events = shipment_events(400)
    await produce(topic, [record(e) for e in events])
    ends = await end_offsets(kafka_bootstrap, topic, 3)
    env = worker_env(
        topic, KAFKA_GROUP_INSTANCE_ID="worker-kill-test", WORKER_ID="kill-test", MAX_IN_FLIGHT="64"
    )
    smtp_sink.faults.delay = 0.003
    rng = random.Random(20261122)
    log = tmp_path / "worker.log"
    kills = 0
    for _ in range(4):
        worker = WorkerProcess(env, log).start()
        await asyncio.sleep(rng.uniform(2.0, 3.5))
        if not worker.alive():
            break
        worker.kill()
        kills += 1
    final = WorkerProcess(env, log).start()
    expected = expected_for(events)
    await wait_until_received(smtp_sink, sms_sink, expected, timeout=180)
    await wait_until_all_committed(kafka_bootstrap, env["KAFKA_GROUP_ID"], topic, ends, 60)
    assert await final.terminate() == 0

    got = received(smtp_sink, sms_sink)
    assert set(got.emails) == expected.emails
    assert set(got.sms) == expected.sms
    recorded = sent_records(final)
    print(
        f"kills={kills} emails={sum(got.emails.values())} sms={sum(got.sms.values())} "
        f"repeats of unrecorded sends={got.duplicates}"
    )
    assert kills == 4
    # a notification recorded as sent is never sent again: no key has two success records
    assert max(recorded.values()) == 1
    # every repeat is a send a kill interrupted before it was recorded (at most what was in
    # flight at the four kills)
    assert got.duplicates <= kills * int(env["MAX_IN_FLIGHT"])


def sent_records(worker: WorkerProcess) -> Counter[str]:
    """How often each notification was recorded as sent, over every process sharing the log."""
    return Counter(
        idempotency_key(e["event_id"], e["channel"]) for e in worker.named("notification_sent")
    )


async def test_smtp_down_and_sms_api_failing_recover_with_every_notification_once(
    kafka_bootstrap: str,
    new_topic: MakeTopic,
    produce: Produce,
    worker_env: Env,
    smtp_sink: SmtpSink,
    sms_sink: SmsSink,
    tmp_path: Path,
) -> None:
    """The SMTP server refuses connections for three seconds and the SMS API answers 503 (200
    times) and then 429 (20 times): after recovery every notification has arrived exactly
    once, and the retries show in the logs. (One event per shipment: a retry whose shipment
    moved on is dropped as stale by design, which another test shows.)"""
    topic = await new_topic(partitions=2)
    events = [
        event(f"D{s}", "shipped", shipment_id=f"D{s}", customer={"phone": f"+1415555{s:04d}"})
        for s in range(150)
    ]
    port = smtp_sink.port
    smtp_sink.stop()  # connection refused from now on
    # more 503s than first tries: some SMS fail their in-process retry too and must go
    # through the retry topic, however fast the first 150 requests go out
    sms_sink.faults.count, sms_sink.faults.reply = 200, 503
    env = worker_env(
        topic,
        SEND_RETRIES="1",
        SEND_RETRY_BASE="0.2",
        RETRY_BASE_DELAY="0.5",
        RETRY_MAX_DELAY="2",
        RETRY_MAX_ATTEMPTS="20",
    )
    worker = WorkerProcess(env, tmp_path / "worker.log").start()
    await produce(topic, [record(e) for e in events])
    async with asyncio.timeout(60):
        while sms_sink.rejected < 200:
            await asyncio.sleep(0.1)
    sms_sink.faults.count, sms_sink.faults.reply = 20, 429
    await asyncio.sleep(3)
    revived = SmtpSink(port=port).start()
    try:
        expected = expected_for(events)
        await wait_until_received(revived, sms_sink, expected, timeout=120)
        ends = await end_offsets(kafka_bootstrap, topic, 2)
        await wait_until_all_committed(kafka_bootstrap, env["KAFKA_GROUP_ID"], topic, ends, 60)
        await asyncio.sleep(1)  # anything still retrying would arrive now
        assert await worker.terminate() == 0
        got = received(revived, sms_sink)
    finally:
        revived.stop()
    assert (dict(got.emails), dict(got.sms)) == (
        dict.fromkeys(expected.emails, 1),
        dict.fromkeys(expected.sms, 1),
    )
    retried = Counter(e["channel"] for e in worker.named("notification_retry_scheduled"))
    assert retried["email"] > 0 and retried["sms"] > 0
    assert worker.named("notification_failed") == []


async def test_broker_restart_mid_run_is_survived(
    new_topic: MakeTopic,
    worker_env: Env,
    smtp_sink: SmtpSink,
    sms_sink: SmsSink,
    tmp_path: Path,
) -> None:
    """The broker is stopped and restarted (same data) while the worker runs: the same worker
    process reconnects and finishes, every notification exactly once."""
    state = tmp_path / "kafka"
    bootstrap = kafka(["start", "--state-dir", str(state)])
    try:
        topic = "broker-restart"
        await create_topic(bootstrap, topic, 2)
        events = shipment_events(100, prefix="B")
        await produce_to(bootstrap, topic, [record(e) for e in events[:200]])
        env = worker_env(topic, KAFKA_BOOTSTRAP_SERVERS=bootstrap)
        worker = WorkerProcess(env, tmp_path / "worker.log").start()
        async with asyncio.timeout(60):
            while len(smtp_sink.messages) < 50:
                await asyncio.sleep(0.05)
        kafka(["stop", "--keep-data", "--state-dir", str(state)])
        await asyncio.sleep(3)
        assert worker.alive()
        kafka(["start", "--keep-data", "--state-dir", str(state)])
        await produce_to(bootstrap, topic, [record(e) for e in events[200:]])
        expected = expected_for(events)
        await wait_until_received(smtp_sink, sms_sink, expected, timeout=120)
        ends = await end_offsets(bootstrap, topic, 2)
        await wait_until_all_committed(bootstrap, env["KAFKA_GROUP_ID"], topic, ends, 60)
        assert worker.alive()
        assert await worker.terminate() == 0
    finally:
        kafka(["stop", "--state-dir", str(state)])
    got = received(smtp_sink, sms_sink)
    assert (dict(got.emails), dict(got.sms)) == (
        dict.fromkeys(expected.emails, 1),
        dict.fromkeys(expected.sms, 1),
    )
    assert len(worker.named("worker_started")) == 1


def kafka(args: list[str]) -> str:
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "kafka"), *args],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""


async def create_topic(bootstrap: str, topic: str, partitions: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        await admin.close()


async def produce_to(bootstrap: str, topic: str, records: list[tuple[bytes, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for key, value in records:
            await producer.send(topic, value, key=key)
        await producer.flush()
    finally:
        await producer.stop()


@pytest.fixture(params=["redis", "redis-cluster"])
def shared_redis(request: pytest.FixtureRequest) -> dict[str, str]:
    """The settings of a store shared by replicas: one Redis server, or a Redis Cluster."""
    if request.param == "redis-cluster":
        url: str = request.getfixturevalue("redis_cluster_url")
        return {"DEDUP_URL": url, "DEDUP_REDIS_CLUSTER": "true"}
    return {"DEDUP_URL": request.getfixturevalue("redis_url")}


async def test_replicas_sharing_redis_notify_exactly_once_through_a_kill_and_a_join(
    kafka_bootstrap: str,
    new_topic: MakeTopic,
    produce: Produce,
    worker_env: Env,
    smtp_sink: SmtpSink,
    sms_sink: SmsSink,
    shared_redis: dict[str, str],
    tmp_path: Path,
) -> None:
    """Three workers in one group with the Redis store (one server, or a cluster); one is
    killed mid-run and a fourth joins: every notification arrives, and none recorded as sent
    is sent again."""
    topic = await new_topic(partitions=6)
    events = shipment_events(300, prefix="R")
    env = worker_env(
        topic,
        **shared_redis,
        DEDUP_KEY_PREFIX=f"{topic}:",
        KAFKA_SESSION_TIMEOUT_MS="6000",
        CLAIM_LEASE="5",
        MAX_IN_FLIGHT="32",
    )
    smtp_sink.faults.delay = 0.005
    log = tmp_path / "workers.log"
    workers = [WorkerProcess({**env, "WORKER_ID": f"replica-{n}"}, log).start() for n in range(3)]
    await asyncio.sleep(4)  # all three in the group before the flood
    await produce(topic, [record(e) for e in events])
    async with asyncio.timeout(60):
        while len(smtp_sink.messages) < 200:
            await asyncio.sleep(0.05)
    workers[0].kill()
    joined = WorkerProcess({**env, "WORKER_ID": "replica-3"}, log).start()
    expected = expected_for(events)
    await wait_until_received(smtp_sink, sms_sink, expected, timeout=180)
    ends = await end_offsets(kafka_bootstrap, topic, 6)
    await wait_until_all_committed(kafka_bootstrap, env["KAFKA_GROUP_ID"], topic, ends, 90)
    for worker in [*workers[1:], joined]:
        assert await worker.terminate() == 0

    got = received(smtp_sink, sms_sink)
    assert set(got.emails) == expected.emails
    assert set(got.sms) == expected.sms
    assert max(sent_records(joined).values()) == 1
    print(f"replicas: repeats of unrecorded sends={got.duplicates}")
    assert got.duplicates <= int(env["MAX_IN_FLIGHT"])  # only what the killed one had in flight
    assigned = {e["worker_id"] for e in joined.named("worker_started")}
    assert assigned == {"replica-0", "replica-1", "replica-2", "replica-3"}


def _valid(n: int) -> dict[str, Any]:
    return event(f"H{n}", "shipped", shipment_id=f"H{n}", customer={"phone": f"+1415555{n:04d}"})


def _with(n: int, path: tuple[str, ...], value: Any) -> bytes:
    data = _valid(10_000 + n)
    target = data
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return json.dumps(data).encode()


NOT_STATUS = st.text(min_size=1, max_size=30).filter(lambda s: s.strip() not in DEFAULT_POLICY)
CONTROL = st.sampled_from([chr(c) for c in [*range(0, 9), 11, 12, *range(14, 32), 127, 0x9B]])
HOSTILE = st.one_of(
    st.binary(max_size=300).map(lambda b: b"\xff\xfe" + b),  # not UTF-8
    st.text(max_size=300).map(lambda t: ("#" + t).encode()),  # not JSON
    st.integers(1_000, 150_000).map(lambda n: b"[" * n + b"]" * n),  # deep JSON
    st.integers(4_400, 20_000).map(lambda n: b'{"event_id": 1' + b"0" * n + b"}"),  # huge int
    st.integers(0, 10**6).map(lambda n: _with(n, ("shipment", "detail"), "x" * 300_000)),
    st.tuples(st.integers(0, 10**6), st.text(max_size=20), CONTROL).map(
        lambda t: _with(t[0], ("customer", "name"), t[1] + t[2])
    ),
    st.tuples(
        st.integers(0, 10**6),
        st.one_of(st.integers(), st.floats(), st.none(), st.lists(st.integers())),
    ).map(lambda t: _with(t[0], ("event_id",), t[1])),
    st.tuples(st.integers(0, 10**6), NOT_STATUS).map(lambda t: _with(t[0], ("status",), t[1])),
    st.tuples(st.integers(0, 10**6), st.text(max_size=40)).map(
        lambda t: _with(t[0], ("occurred_at",), t[1])
    ),
)


@settings(
    max_examples=1,
    deadline=None,
    database=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
@given(hostile=st.lists(HOSTILE, min_size=150, max_size=150), seed=st.integers(0, 2**32))
async def test_a_flood_of_hostile_records_is_dead_lettered_while_valid_ones_are_notified(
    kafka_bootstrap: str,
    new_topic: MakeTopic,
    produce: Produce,
    worker_env: Env,
    smtp_sink: SmtpSink,
    sms_sink: SmsSink,
    tmp_path: Path,
    hostile: list[bytes],
    seed: int,
) -> None:
    """150 generated hostile records (invalid UTF-8, not JSON, 150k-deep JSON, 5000-digit
    numbers, 300 KB values, control characters, wrong types, unknown statuses, bad times)
    interleaved with 100 valid events: every hostile one is in the dead-letter topic, every
    valid one is notified once, and the one worker process never restarts."""
    topic = await new_topic(partitions=2)
    valid = [_valid(n) for n in range(100)]
    records = [(b"hostile", value) for value in hostile] + [record(e) for e in valid]
    random.Random(seed).shuffle(records)
    env = worker_env(topic)
    worker = WorkerProcess(env, tmp_path / "worker.log").start()
    await produce(topic, records)
    expected = expected_for(valid)
    await wait_until_received(smtp_sink, sms_sink, expected, timeout=120)
    dead = await read_topic(kafka_bootstrap, f"{topic}.dlq", len(hostile), timeout=60)
    ends = await end_offsets(kafka_bootstrap, topic, 2)
    await wait_until_all_committed(kafka_bootstrap, env["KAFKA_GROUP_ID"], topic, ends, 60)
    assert worker.alive()
    assert await worker.terminate() == 0

    assert sorted(r.value for r in dead) == sorted(hostile)
    got = received(smtp_sink, sms_sink)
    assert (dict(got.emails), dict(got.sms)) == (
        dict.fromkeys(expected.emails, 1),
        dict.fromkeys(expected.sms, 1),
    )
    assert len(worker.named("worker_started")) == 1
    assert len(worker.named("event_dead_lettered")) == len(hostile)
