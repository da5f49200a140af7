"""The Kafka behaviour everything else relies on, shown against the real broker."""

from __future__ import annotations

import asyncio
from collections import defaultdict

from aiokafka import AIOKafkaConsumer, TopicPartition

from tests.conftest import MakeTopic, Produce

PARTITIONS = 3
PER_PARTITION = 10
COMMIT_AT = 4  # commit the first four records of each partition, no more


def _consumer(bootstrap: str, topic: str, group: str) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )


async def _read(consumer: AIOKafkaConsumer, count: int) -> list[tuple[int, int, bytes]]:
    seen: list[tuple[int, int, bytes]] = []
    async with asyncio.timeout(30):
        while len(seen) < count:
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                seen.extend((r.partition, r.offset, r.value) for r in records)  # type: ignore[misc]
    return seen


async def test_new_group_member_resumes_exactly_at_committed_offsets(
    kafka_bootstrap: str, new_topic: MakeTopic, produce: Produce
) -> None:
    """A consumer that joins the group after another committed part of each partition reads
    every record from the committed offset on: none lost, none before the commit re-read."""
    topic = await new_topic(partitions=PARTITIONS)
    for partition in range(PARTITIONS):
        records = [(b"k", f"p{partition}-{i}".encode()) for i in range(PER_PARTITION)]
        await produce(topic, records, partition=partition)
    group = f"group-{topic}"

    first = _consumer(kafka_bootstrap, topic, group)
    await first.start()
    try:
        seen = await _read(first, PARTITIONS * PER_PARTITION)
        assert len(seen) == PARTITIONS * PER_PARTITION
        await first.commit({TopicPartition(topic, p): COMMIT_AT for p in range(PARTITIONS)})
    finally:
        await first.stop()

    second = _consumer(kafka_bootstrap, topic, group)
    await second.start()
    try:
        resumed = await _read(second, PARTITIONS * (PER_PARTITION - COMMIT_AT))
        extra = await second.getmany(timeout_ms=1000)
    finally:
        await second.stop()

    assert sum(len(r) for r in extra.values()) == 0
    by_partition: dict[int, list[bytes]] = defaultdict(list)
    for partition, _offset, value in sorted(resumed):
        by_partition[partition].append(value)
    assert by_partition == {
        p: [f"p{p}-{i}".encode() for i in range(COMMIT_AT, PER_PARTITION)]
        for p in range(PARTITIONS)
    }
