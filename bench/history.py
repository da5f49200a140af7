"""How long ``python -m worker history --shipment S`` takes on a large notification log.

    .venv/bin/python -m bench.history                       # 100k records, 1 and 12 partitions
    .venv/bin/python -m bench.history --records 1000000 --partitions 12

Fills a fresh log topic (per partition count) with ``--records`` notification-log records as
the worker writes them (five outcomes per shipment, keyed by shipment id), then times the
command as a support engineer runs it: a new process, start to exit, ``--rounds`` times,
for a shipment whose records sit at the end of its partition (the whole partition is read
either way). One partition is the worst case: the query reads all records. Uses the broker
named by ``KAFKA_BOOTSTRAP_SERVERS``, else starts its own (``scripts/kafka``). Prints one line
per partition count; the figures of a run go to bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from bench.procs import Kafka
from worker.dedup.store import ChannelOutcome
from worker.envelope import Envelope
from worker.history import Query, search
from worker.notification_log import Noted, NotificationLog
from worker.preview import sample_event
from worker.settings import KafkaSettings

ROOT = Path(__file__).resolve().parent.parent
OUTCOMES = [  # what one shipment's log holds: (status, channel, stored outcome, reason)
    ("shipped", "email", ChannelOutcome.SENT, None),
    ("shipped", "sms", None, "no_contact"),
    ("out_for_delivery", "email", ChannelOutcome.DEFERRED, "transient"),
    ("out_for_delivery", "email", ChannelOutcome.SENT, None),
    ("delivered", "email", ChannelOutcome.SENT, None),
]


def _records(count: int) -> list[tuple[bytes, bytes]]:
    """``count`` log records as the worker writes them, five per shipment."""
    log = NotificationLog(None, "bench", recipients="masked", worker_id="bench")  # type: ignore[arg-type]
    base = sample_event("shipped", "vi")
    out: list[tuple[bytes, bytes]] = []
    for i in range(count):
        status, channel, stored, reason = OUTCOMES[i % len(OUTCOMES)]
        shipment = base.shipment.model_copy(
            update={"id": f"SHP-{i // len(OUTCOMES):07d}", "order_id": f"ORD-{i // 10:07d}"}
        )
        event = base.model_copy(
            update={
                "event_id": f"evt-{shipment.id}-{status}",
                "status": status,
                "shipment": shipment,
            }
        )
        envelope = Envelope("events", 0, i, shipment.id.encode(), b"{}", timestamp=time.time())
        noted = Noted(
            event,
            envelope,
            channel,
            stored,
            reason,
            address="an.nguyen@example.com" if channel == "email" else None,
            message_id="<5d41402abc4b2a76b9719d911017c592@shop.example>" if stored else None,
        )
        out.append((shipment.id.encode(), log.value(noted)))
    return out


async def _fill(
    bootstrap: str, topic: str, partitions: int, records: list[tuple[bytes, bytes]]
) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, linger_ms=20, max_batch_size=1 << 20, compression_type=None
    )
    await producer.start()
    try:
        for key, value in records:
            await producer.send(topic, value, key=key)
        await producer.flush()
    finally:
        await producer.stop()


async def _drop(bootstrap: str, topic: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.delete_topics([topic])
    finally:
        await admin.close()


def _query(bootstrap: str, topic: str, shipment: str) -> tuple[float, str]:
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "KAFKA_NOTIFICATIONS_TOPIC": topic,
        "LOG_LEVEL": "WARNING",
    }
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "worker", "history", "--shipment", shipment],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return time.perf_counter() - started, done.stdout


def _in_process(bootstrap: str, topic: str, shipment: str) -> float:
    """The query without starting Python: ``history.search`` in this process."""
    settings = KafkaSettings(bootstrap_servers=bootstrap)
    started = time.perf_counter()
    found = asyncio.run(search(settings, topic, Query(shipment=shipment)))
    assert len(found.records) == len(OUTCOMES), found
    return time.perf_counter() - started


def _startup() -> float:
    """Python and the worker package starting, for reference: ``history --help``."""
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "worker", "history", "--help"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    )
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.history", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--records", type=int, default=100_000)
    p.add_argument("--partitions", type=int, nargs="+", default=[1, 12])
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args(argv)
    kafka = None
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "")
    with tempfile.TemporaryDirectory(prefix="bench-history-") as tmp:
        if not bootstrap:
            kafka = Kafka(Path(tmp) / "kafka")
            bootstrap = kafka.start()
        try:
            records = _records(args.records)
            last = records[-1][0].decode()  # its records are the newest of its partition
            print(f"python and the worker starting (history --help): {_startup():.3f} s")
            for partitions in args.partitions:
                topic = f"bench-history-{uuid.uuid4().hex[:8]}"
                asyncio.run(_fill(bootstrap, topic, partitions, records))
                try:
                    times, inner, out = [], [], ""
                    for _ in range(args.rounds):
                        seconds, out = _query(bootstrap, topic, last)
                        times.append(seconds)
                        inner.append(_in_process(bootstrap, topic, last))
                finally:
                    asyncio.run(_drop(bootstrap, topic))
                found = len(out.splitlines()) - 2
                print(
                    f"{args.records} records, {partitions} partition(s): history --shipment "
                    f"found {found} in {statistics.median(times):.3f} s (median of "
                    f"{args.rounds}; min {min(times):.3f}, max {max(times):.3f}), "
                    f"reading ~{args.records // partitions} records; the query in process "
                    f"{statistics.median(inner):.3f} s (min {min(inner):.3f})"
                )
        finally:
            if kafka is not None:
                kafka.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
