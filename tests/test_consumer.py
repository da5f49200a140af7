"""KeyOrderedConsumer over a fake AIOKafkaConsumer that behaves as aiokafka does where it
matters here: what getmany returns, and what it leaves behind when it raises."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka import ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaConnectionError, TopicAuthorizationFailedError

from worker.consumer import ConsumerFailed, KeyOrderedConsumer
from worker.envelope import Envelope

BAD = None  # a record aiokafka cannot decode (a header name that is not UTF-8)
Item = tuple[bytes, bytes] | None


class FakeKafka:
    """Partitions of a topic as lists of ``(key, value)`` or ``BAD``. A ``getmany`` over all
    partitions that meets a ``BAD`` raises UnicodeDecodeError, as aiokafka's record parser
    does: the partitions read before it in that call have moved on and their records are
    lost, the failing one stays where it was. ``errors`` are raised by the next calls,
    ``step_errors`` by the given calls for one partition."""

    def __init__(self, topic: str, *partitions: list[Item]) -> None:
        self.logs = {TopicPartition(topic, p): items for p, items in enumerate(partitions)}
        self.positions = dict.fromkeys(self.logs, 0)
        self.committed_offsets: dict[TopicPartition, int] = {}
        self.errors: list[Exception] = []
        self.step_errors: dict[int, Exception] = {}  # by the count of one-partition calls
        self.steps = 0
        self._paused: set[TopicPartition] = set()
        self._listener: Any = None

    def subscribe(self, topics: list[str], listener: Any) -> None:
        self._listener = listener

    async def getmany(
        self, *partitions: TopicPartition, timeout_ms: int = 0, max_records: int | None = None
    ) -> dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]:
        if self._listener is not None:
            listener, self._listener = self._listener, None
            await listener.on_partitions_assigned(set(self.logs))
        if self.errors:
            raise self.errors.pop(0)
        if partitions:
            self.steps += 1
            if self.steps in self.step_errors:
                raise self.step_errors.pop(self.steps)
        batch = {}
        for tp in partitions or [tp for tp in self.logs if tp not in self._paused]:
            if records := self._read(tp, max_records):
                batch[tp] = records
        if not batch:
            await asyncio.sleep(0.01)
        return batch

    def _read(self, tp: TopicPartition, limit: int | None) -> list[ConsumerRecord[bytes, bytes]]:
        start = self.positions[tp]
        items = self.logs[tp][start : start + limit if limit else None]
        if BAD in items:
            raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")
        self.positions[tp] = start + len(items)
        return [_record(tp, start + i, item) for i, item in enumerate(items) if item]

    async def position(self, tp: TopicPartition) -> int:
        return self.positions[tp]

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.positions[tp] = offset

    async def seek_to_beginning(self, tp: TopicPartition) -> None:
        self.positions[tp] = 0

    async def committed(self, tp: TopicPartition) -> int | None:
        return self.committed_offsets.get(tp)

    def pause(self, tp: TopicPartition) -> None:
        self._paused.add(tp)

    def resume(self, tp: TopicPartition) -> None:
        self._paused.discard(tp)

    def paused(self) -> set[TopicPartition]:
        return set(self._paused)

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.committed_offsets.update(offsets)


def _record(tp: TopicPartition, offset: int, item: tuple[bytes, bytes]) -> ConsumerRecord[Any, Any]:
    key, value = item
    return ConsumerRecord(tp.topic, tp.partition, offset, 1_000, 0, key, value, None, 1, 1, ())


async def _consume(kafka: FakeKafka, handler: Any, done: asyncio.Event) -> None:
    consumer = KeyOrderedConsumer(
        kafka,  # type: ignore[arg-type]
        handler,
        topics=("t",),
        max_in_flight=8,
        commit_interval=0.01,
        drain_timeout=1,
    )
    running = asyncio.create_task(consumer.run())
    waiter = asyncio.create_task(done.wait())
    try:
        await asyncio.wait({running, waiter}, timeout=5, return_when=asyncio.FIRST_COMPLETED)
        assert done.is_set() or running.done(), "the handler never saw what the test waits for"
    finally:
        waiter.cancel()
        consumer.stop()
        await running


async def test_records_of_one_key_run_in_order_while_other_keys_run_beside_them() -> None:
    """The second record of key ``a`` waits for the first, which itself waits for key ``b``'s
    record: ``b`` overtakes ``a`` and ``a`` keeps its order."""
    kafka = FakeKafka("t", [(b"a", b"1"), (b"a", b"2"), (b"b", b"3")])
    order: list[bytes] = []
    b_seen, done = asyncio.Event(), asyncio.Event()

    async def handler(envelope: Envelope) -> None:
        if envelope.value == b"1":
            await b_seen.wait()
        order.append(envelope.value or b"")
        if envelope.key == b"b":
            b_seen.set()
        if len(order) == 3:
            done.set()

    await _consume(kafka, handler, done)
    assert order == [b"3", b"1", b"2"]


async def test_an_undecodable_record_is_handed_on_with_a_fault_and_nothing_is_lost() -> None:
    """When aiokafka raises on partition 1's third record after it had read partition 0, every
    record of both partitions reaches the handler once, the bad one with a fault, and both
    partitions are committed to their end."""
    good = [(b"k", b"%d" % i) for i in range(3)]
    kafka = FakeKafka("t", list(good), [*good[:2], BAD, good[2]])
    seen: list[Envelope] = []
    done = asyncio.Event()

    async def handler(envelope: Envelope) -> None:
        seen.append(envelope)
        if len(seen) == 7:
            done.set()

    await _consume(kafka, handler, done)
    assert sorted((e.partition, e.offset, e.fault is None) for e in seen) == [
        (0, 0, True), (0, 1, True), (0, 2, True),
        (1, 0, True), (1, 1, True), (1, 2, False), (1, 3, True),
    ]  # fmt: skip
    assert {tp.partition: o for tp, o in kafka.committed_offsets.items()} == {0: 3, 1: 4}


async def test_a_broker_error_while_reading_around_an_undecodable_record_loses_nothing() -> None:
    """A passing broker error while partitions are read one by one, after partition 0's
    undecodable record was passed and partition 1's first record read, loses neither: both
    still reach the handler."""
    kafka = FakeKafka("t", [BAD], [(b"k", b"0"), (b"k", b"1")])
    kafka.step_errors = {4: KafkaConnectionError()}
    seen: list[Envelope] = []
    done = asyncio.Event()

    async def handler(envelope: Envelope) -> None:
        seen.append(envelope)
        if len(seen) == 3:
            done.set()

    await _consume(kafka, handler, done)
    assert sorted((e.partition, e.offset, e.fault is None) for e in seen) == [
        (0, 0, False), (1, 0, True), (1, 1, True),
    ]  # fmt: skip
    assert kafka.step_errors == {}


async def test_a_passing_broker_error_is_waited_out() -> None:
    """A retriable KafkaError from getmany is logged and polled past: the record still arrives."""
    kafka = FakeKafka("t", [(b"k", b"v")])
    kafka.errors = [KafkaConnectionError(), KafkaConnectionError()]
    done = asyncio.Event()

    async def handler(envelope: Envelope) -> None:
        done.set()

    await _consume(kafka, handler, done)
    assert kafka.errors == []


async def test_a_configuration_error_from_getmany_stops_the_consumer() -> None:
    """A KafkaError that is not retriable (not authorized to read) stops the consumer with
    ConsumerFailed (the command exits 1 with one line), the Kafka error as its cause."""
    kafka = FakeKafka("t", [(b"k", b"v")])
    kafka.errors = [TopicAuthorizationFailedError()]
    with pytest.raises(ConsumerFailed, match="TopicAuthorizationFailedError") as failed:
        await _consume(kafka, lambda envelope: asyncio.sleep(0), asyncio.Event())
    assert isinstance(failed.value.__cause__, TopicAuthorizationFailedError)
