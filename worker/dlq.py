"""Dead-letter tooling for operators: what is in the dead-letter topic, and putting it back.

``list`` reads the whole topic (no consumer group, nothing committed) and groups the records
by reason. ``replay`` puts the selected records back, value and producer headers unchanged:
- a dead-lettered channel (``error.channel``) goes to the retry topic as that channel's retry,
  due now, with a ``replay.from`` header naming the dead letter. The worker reopens the
  channel and sends it once: replaying the same dead letter twice notifies once. Only the
  retry topic can reopen a channel: ``replay.*`` headers on the main topic, where producers
  write, are dropped unread, so a producer cannot make the worker resend anything.
- any other dead letter (an invalid or undecodable record, an event_id conflict, a crash
  before its channels were decided) goes to the main topic as a producer would send it, to
  be decoded and handled afresh (useful once the producer or the worker is fixed); a record of
  the preferences topic goes back there (its choice then counts from the replay's time,
  unless its value has ``updated_at``).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from worker import headers, kafka_client
from worker.policy import CHANNELS
from worker.retry import RetryState
from worker.settings import KafkaSettings
from worker.topics import partitions_of


@dataclass(frozen=True, slots=True)
class DeadLetter:
    partition: int
    offset: int
    timestamp: datetime
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]

    def header(self, name: str) -> str:
        for key, value in reversed(self.headers):
            if key == name:
                return value.decode("utf-8", "replace")
        return ""

    @property
    def reason(self) -> str:
        channel = self.header(headers.ERROR_CHANNEL)
        kind = self.header(headers.ERROR_TYPE) or "unknown"
        return f"{kind}/{channel}" if channel else kind


async def read_all(settings: KafkaSettings) -> AsyncIterator[DeadLetter]:
    """Every record of the dead-letter topic as it is now, oldest first per partition."""
    topic = settings.dead_letter_topic
    tps = [TopicPartition(topic, p) for p in await partitions_of(settings, topic)]
    if not tps:
        return
    consumer = AIOKafkaConsumer(
        **kafka_client.connection_kwargs(settings), enable_auto_commit=False
    )
    await kafka_client.start(consumer, settings)
    try:
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        for tp in tps:
            while await consumer.position(tp) < ends[tp]:
                batch = await consumer.getmany(tp, timeout_ms=1000)
                for record in batch.get(tp, []):
                    if record.offset < ends[tp]:
                        yield _dead_letter(record)
    finally:
        await consumer.stop()


def _dead_letter(record: Any) -> DeadLetter:
    return DeadLetter(
        partition=record.partition,
        offset=record.offset,
        timestamp=datetime.fromtimestamp(record.timestamp / 1000, UTC),
        key=record.key,
        value=record.value,
        headers=tuple(record.headers),
    )


@dataclass(frozen=True, slots=True)
class Summary:
    total: int
    by_reason: Counter[str]
    first: datetime | None
    last: datetime | None
    examples: dict[str, str]  # reason -> one error message


async def summarize(settings: KafkaSettings) -> Summary:
    await kafka_client.wait_for_broker(settings)
    by_reason: Counter[str] = Counter()
    examples: dict[str, str] = {}
    first = last = None
    async for letter in read_all(settings):
        by_reason[letter.reason] += 1
        examples.setdefault(letter.reason, letter.header(headers.ERROR_MESSAGE))
        first = min(first or letter.timestamp, letter.timestamp)
        last = max(last or letter.timestamp, letter.timestamp)
    return Summary(sum(by_reason.values()), by_reason, first, last, examples)


def selector(reason: str | None, since: datetime | None) -> Callable[[DeadLetter], bool]:
    """``reason`` matches ``error.type`` or ``error.type/channel``."""

    def wanted(letter: DeadLetter) -> bool:
        if reason and reason not in (letter.reason, letter.header(headers.ERROR_TYPE)):
            return False
        return since is None or letter.timestamp >= since

    return wanted


async def replay(
    settings: KafkaSettings, wanted: Callable[[DeadLetter], bool], *, dry_run: bool = False
) -> int:
    """Put the wanted dead letters back (see the module docstring); return how many."""
    await kafka_client.wait_for_broker(settings)
    producer = AIOKafkaProducer(
        **kafka_client.connection_kwargs(settings), acks="all", enable_idempotence=True
    )
    await kafka_client.start(producer, settings)
    count = 0
    try:
        async for letter in read_all(settings):
            if not wanted(letter):
                continue
            count += 1
            if not dry_run:
                topic, fields = _replayed(letter, settings)
                await producer.send(topic, letter.value, key=letter.key, headers=fields)
        await producer.flush()
    finally:
        await producer.stop()
    return count


def _replayed(letter: DeadLetter, settings: KafkaSettings) -> tuple[str, list[tuple[str, bytes]]]:
    """Where a dead letter goes back to, and with which headers."""
    kept = [(k, v) for k, v in letter.headers if not headers.is_ours(k)]
    channel = letter.header(headers.ERROR_CHANNEL)
    if channel not in CHANNELS:
        preferences = settings.preferences_topic
        came_from = letter.header(headers.ORIGINAL_TOPIC)
        return preferences if preferences and came_from == preferences else settings.topic, kept
    now = time.time()
    origin = [(k, v) for k, v in letter.headers if k in headers.ORIGIN]
    source = [
        (headers.REPLAY_FROM, f"{letter.partition}:{letter.offset}".encode()),
        (headers.REPLAY_REASON, letter.reason.encode()),
    ]
    state = RetryState(channel, attempt=1, due=now, first_failed_at=now, history=())
    return settings.retries_topic, [*kept, *origin, *state.headers(), *source]
