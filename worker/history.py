"""Reading the notification log back: ``python -m worker history``.

No consumer group: the reader assigns itself partitions and seeks, so it runs beside the
workers and commits nothing. It reads each partition up to the end it had when the query
started.
- ``--shipment S`` reads one partition: the one the producer's default partitioner (Kafka's
  murmur2 of the key, as the Java client and aiokafka compute it) puts key ``S`` in.
- ``--order O`` cannot know the partition (records are keyed by shipment), so it reads every
  partition, each from at most ``scan_limit / partitions`` records before its end.
- ``--since T`` starts each partition at the first record at or after ``T`` (the broker's
  time index), so a scan covers only that period.
Repeats (the same ``id``, see ``notification_log``) are shown once.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.partitioner import DefaultPartitioner
from pydantic import ValidationError

from worker.notification_log import LogRecord
from worker.settings import KafkaSettings
from worker.topics import partitions_of

# a fetch at the position a partition had before the seek waits this long for new records
# before the seek takes effect (the client's default, 500 ms, doubled a query's time)
FETCH_MAX_WAIT_MS = 20
SCAN_LIMIT = 1_000_000  # records an --order query reads at most, by default


def partition_for(key: str, partitions: list[int]) -> int:
    """The partition the producers' default partitioner sends ``key`` to (murmur2)."""
    return int(DefaultPartitioner()(key.encode(), sorted(partitions), sorted(partitions)))


@dataclass(frozen=True, slots=True)
class Query:
    shipment: str | None = None
    order: str | None = None
    since: datetime | None = None
    scan_limit: int = SCAN_LIMIT  # records read at most by an --order query


@dataclass(slots=True)
class Found:
    records: list[LogRecord] = field(default_factory=list)
    scanned: int = 0
    unreadable: int = 0  # records that are not a LogRecord (another writer, a newer schema)
    truncated: bool = False  # an --order scan stopped at its bound before the start

    def add(self, record: LogRecord) -> None:
        self.records.append(record)


async def search(settings: KafkaSettings, topic: str, query: Query) -> Found:
    """The records of ``topic`` that match ``query``, in the order they were published per
    partition (merged by outcome time across partitions), repeats dropped."""
    found = Found()
    numbers = await partitions_of(settings, topic)
    if not numbers:
        return found
    if query.shipment is not None:
        tps = [TopicPartition(topic, partition_for(query.shipment, numbers))]
    else:
        tps = [TopicPartition(topic, p) for p in numbers]
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers,
        client_id=f"{settings.client_id}-history",
        group_id=None,
        enable_auto_commit=False,
        fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
    )
    await consumer.start()
    try:
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        starts = await _starts(consumer, ends, query, found)
        for tp in tps:
            if starts[tp] < ends[tp]:
                consumer.seek(tp, starts[tp])
                await _read(consumer, tp, ends[tp], _Matcher(query), found)
    finally:
        await consumer.stop()
    found.records = _unique(found.records if len(tps) == 1 else _by_time(found.records))
    return found


async def _starts(
    consumer: AIOKafkaConsumer, ends: dict[TopicPartition, int], query: Query, found: Found
) -> dict[TopicPartition, int]:
    """Where each partition's read begins: its start, or ``--since``, or an ``--order``
    scan's bound before its end."""
    tps = list(ends)
    starts = dict(await consumer.beginning_offsets(tps))
    if query.since is not None:
        at = await consumer.offsets_for_times(
            {tp: int(query.since.timestamp() * 1000) for tp in tps}
        )
        starts = {tp: (at[tp].offset if at[tp] is not None else ends[tp]) for tp in tps}
    if query.shipment is None:  # an --order scan: the newest records of each partition
        share = max(1, query.scan_limit // len(tps))
        for tp in tps:
            if ends[tp] - starts[tp] > share:
                starts[tp] = ends[tp] - share
                found.truncated = True
    return starts


class _Matcher:
    """Whether a record belongs to the query: the key for a shipment (no parsing needed);
    for an order, a byte search for its JSON before the record is parsed."""

    def __init__(self, query: Query) -> None:
        self.key = query.shipment.encode() if query.shipment is not None else None
        self.order = query.order
        # '"order_id":"O"' as the writer's JSON has it (tests/test_notification_log.py checks)
        self.needle = f'"order_id":{json.dumps(query.order or "", ensure_ascii=False)}'.encode()

    def wanted(self, key: bytes | None, value: bytes | None) -> bool:
        if self.key is not None and key != self.key:
            return False
        return value is not None and (self.order is None or self.needle in value)


async def _read(
    consumer: AIOKafkaConsumer, tp: TopicPartition, end: int, match: _Matcher, found: Found
) -> None:
    position = await consumer.position(tp)
    while position < end:
        batch = await consumer.getmany(tp, timeout_ms=1000)
        for record in batch.get(tp, []):
            if record.offset >= end:
                return
            found.scanned += 1
            position = record.offset + 1
            if match.wanted(record.key, record.value):
                _parse_into(record.value, match, found)
        if not batch:
            position = await consumer.position(tp)


def _parse_into(value: bytes, match: _Matcher, found: Found) -> None:
    try:
        parsed = LogRecord.model_validate_json(value)
    except ValidationError:
        found.unreadable += 1
        return
    if match.order is None or parsed.order_id == match.order:
        found.add(parsed)


def _by_time(records: list[LogRecord]) -> list[LogRecord]:
    return sorted(records, key=lambda r: r.outcome_at)  # stable: partition order on ties


def _unique(records: Iterable[LogRecord]) -> list[LogRecord]:
    seen: set[str] = set()
    kept = []
    for record in records:
        if record.id not in seen:
            seen.add(record.id)
            kept.append(record)
    return kept


COLUMNS = ("time (UTC)", "status", "channel", "locale", "outcome", "reason", "to", "id")


def timeline(records: list[LogRecord], *, with_shipment: bool) -> list[str]:
    """The records as aligned text lines, a header first."""
    rows = [[*(["shipment"] if with_shipment else []), *COLUMNS]]
    for r in records:
        why = r.reason or ""
        if r.detail:
            why = f"{why}: {r.detail}" if why else r.detail
        if r.attempt > 1:
            why = f"{why} (attempt {r.attempt})".lstrip()
        rows.append(
            [
                *([r.shipment_id] if with_shipment else []),
                r.outcome_at.strftime("%Y-%m-%d %H:%M:%S"),
                r.status,
                r.channel,
                r.locale or "-",
                r.outcome,
                why or "-",
                r.recipient or "-",
                r.message_id or "-",
            ]
        )
    rows = [[_shown(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return [
        "  ".join([*(c.ljust(w) for c, w in zip(row, widths, strict=False)), row[-1]]).rstrip()
        for row in rows
    ]


def _shown(cell: str) -> str:
    """A cell as inert text on one line (other writers than the worker may write the topic),
    with what the log holds left as it is: the writer masked what needed masking."""
    return "".join(c if c.isprintable() else "\ufffd" for c in cell[:400])
