"""KeyOrderedConsumer against a real broker: a record the Kafka client cannot decode is handed
on with a fault and passed, and the records around it flow as usual."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from tests.conftest import MakeTopic, committed_offsets
from tests.factories import BAD_HEADERS, python_batch
from worker.consumer import KeyOrderedConsumer
from worker.envelope import Envelope


async def _produce(bootstrap: str, topic: str, *, one_batch: bool) -> None:
    """Offsets 0 and 2 are plain records of key ``k1``; offset 1, of key ``k2``, carries a
    header whose name is the byte 0xff followed by ``name``. Each in a batch of its own, or
    all three in one."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        if one_batch:
            batch = python_batch(producer)
            batch.append(timestamp=None, key=b"k1", value=b"v0")
            batch.append(timestamp=None, key=b"k2", value=b"v1", headers=BAD_HEADERS)
            batch.append(timestamp=None, key=b"k1", value=b"v2")
            await (await producer.send_batch(batch, topic, partition=0))
            return
        await (await producer.send(topic, b"v0", key=b"k1", partition=0))
        batch = python_batch(producer)
        batch.append(timestamp=None, key=b"k2", value=b"v1", headers=BAD_HEADERS)
        await (await producer.send_batch(batch, topic, partition=0))
        await (await producer.send(topic, b"v2", key=b"k1", partition=0))
    finally:
        await producer.stop()


async def _plain_consumer_raises(bootstrap: str, topic: str) -> bool:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    try:
        async with asyncio.timeout(20):
            while True:
                await consumer.getmany(timeout_ms=200)
    except UnicodeDecodeError:
        return True
    finally:
        await consumer.stop()


async def _consume_until_committed(bootstrap: str, topic: str, end: int) -> list[Envelope]:
    """What KeyOrderedConsumer hands its handler until offset ``end`` of partition 0 is
    committed; fails if it stops on its own meanwhile."""
    group = f"g-{uuid.uuid4().hex[:8]}"
    kafka = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    seen: list[Envelope] = []

    async def handler(envelope: Envelope) -> None:
        seen.append(envelope)

    consumer = KeyOrderedConsumer(
        kafka, handler, topics=(topic,), max_in_flight=8, commit_interval=0.1, drain_timeout=5
    )
    await kafka.start()
    running = asyncio.create_task(consumer.run())
    try:
        async with asyncio.timeout(30):
            while await committed_offsets(bootstrap, group, topic) != {0: end}:
                assert not running.done(), running.exception()
                await asyncio.sleep(0.2)
        assert not running.done()
    finally:
        consumer.stop()
        try:
            await asyncio.wait_for(running, 30)
        finally:
            await kafka.stop()
    return seen


def _faults(seen: list[Envelope]) -> list[tuple[int, bytes | None, bytes | None, bool]]:
    return [(e.offset, e.key, e.value, e.fault is not None) for e in seen]


async def test_a_record_with_a_header_name_that_is_not_utf8_is_handed_on_with_a_fault(
    kafka_bootstrap: str, new_topic: MakeTopic
) -> None:
    """A header name that is not UTF-8 makes the plain aiokafka consumer raise; the worker's
    consumer hands the records before and after it to the handler, hands that one with a fault,
    commits past all three and keeps running."""
    topic = await new_topic(partitions=1)
    await _produce(kafka_bootstrap, topic, one_batch=False)
    assert await _plain_consumer_raises(kafka_bootstrap, topic)
    seen = await _consume_until_committed(kafka_bootstrap, topic, 3)
    assert _faults(seen) == [
        (0, b"k1", b"v0", False),
        (1, None, None, True),
        (2, b"k1", b"v2", False),
    ]
    fault: Any = seen[1].fault
    assert "UnicodeDecodeError" in fault
    assert (seen[1].topic, seen[1].partition) == (topic, 0)


async def test_records_after_an_undecodable_one_in_its_batch_are_handed_on_with_faults(
    kafka_bootstrap: str, new_topic: MakeTopic
) -> None:
    """In one record batch, the record before the undecodable one arrives as it is, and that
    one and the record after it (which aiokafka cannot reach) arrive with faults, each once."""
    topic = await new_topic(partitions=1)
    await _produce(kafka_bootstrap, topic, one_batch=True)
    seen = await _consume_until_committed(kafka_bootstrap, topic, 3)
    assert _faults(seen) == [(0, b"k1", b"v0", False), (1, None, None, True), (2, None, None, True)]
