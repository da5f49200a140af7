"""The baselines the worker is compared with, each run as its own process
(``python -m bench.baselines NAME ...`` prints one JSON object) so that each gets a core of its
own like the worker does, and the orchestrator's timeout can end it.

- ``kafka``: raw aiokafka consumption of the same records, no processing (Kafka-side ceiling);
- ``aiosmtplib``: pre-built messages (bytes, the size of a rendered email) sent with aiosmtplib
  over as many connections as the worker's pool (Python SMTP ceiling);
- ``naive`` (``bench/naive.py``): the worker's pipeline one record at a time, a new SMTP
  connection per email.

``smtp-source`` (postfix's C client, the machine's SMTP ceiling) is run by ``run_smtp_source``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosmtplib
from aiokafka import AIOKafkaConsumer, TopicPartition

from bench.naive import naive_worker
from worker.channels.mime import WireMessage
from worker.channels.smtp import transaction
from worker.cli import loop_factory
from worker.settings import EventLoop

ENVELOPE_FROM = "no-reply@shop.example"
ENVELOPE_TO = "customer@mail.example"


@dataclass
class Ceiling:
    name: str
    unit: str  # what is counted: records, emails or notifications
    count: int
    seconds: float
    cpu_seconds: float | None = None  # the measuring process's CPU over ``seconds``

    @property
    def rate(self) -> float:
        return self.count / self.seconds if self.seconds > 0 else 0.0

    def as_json(self) -> dict[str, Any]:
        return {**self.__dict__, "rate": round(self.rate, 1)}


async def kafka_ceiling(bootstrap: str, topic: str, partitions: int, records: int) -> Ceiling:
    """Read ``records`` records from the start of every partition (assigned directly, no group
    join to wait for), from the first fetch to the last record."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
    )
    await consumer.start()
    try:
        consumer.assign([TopicPartition(topic, p) for p in range(partitions)])
        started, cpu, count = time.perf_counter(), time.process_time(), 0
        while count < records:
            batch = await consumer.getmany(timeout_ms=200)
            count += sum(len(r) for r in batch.values())
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    finally:
        await consumer.stop()
    return Ceiling("kafka", "records", count, elapsed, cpu)


async def smtp_ceiling(
    port: int, connections: int, messages: int, message: bytes, path: str = "sendmail"
) -> Ceiling:
    """Send ``messages`` copies of ``message`` over ``connections`` open connections, with
    aiosmtplib's ``sendmail`` or (``path="worker"``) the worker's own transaction, which
    leaves out sendmail's passes over the message and its wait per reply, and pipelines
    MAIL/RCPT/DATA when the server offers PIPELINING (smtp-sink does)."""
    clients = [
        aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=30) for _ in range(connections)
    ]
    await asyncio.gather(*(c.connect() for c in clients))
    mail = WireMessage(ENVELOPE_FROM, (ENVELOPE_TO,), message, "<bench@shop.example>")

    async def send(client: aiosmtplib.SMTP, count: int) -> None:
        for _ in range(count):
            if path == "worker":
                await transaction(client, mail)
            else:
                await client.sendmail(ENVELOPE_FROM, [ENVELOPE_TO], message)

    shares = [messages // connections + (i < messages % connections) for i in range(connections)]
    started, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(send(c, n) for c, n in zip(clients, shares, strict=True)))
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    await asyncio.gather(*(c.quit() for c in clients))
    return Ceiling("aiosmtplib", "emails", messages, elapsed, cpu)


def run_smtp_source(
    port: int, sessions: int, messages: int, message: bytes, workdir: Path, timeout: float
) -> Ceiling:
    """postfix's ``smtp-source``: ``-d`` keeps each of the ``-s`` sessions open, ``-F`` sends
    the same pre-built message (it wants LF line ends and adds the CR itself)."""
    path = workdir / "message.lf.eml"
    path.write_bytes(message.replace(b"\r\n", b"\n"))
    command = [
        "smtp-source",
        "-d",
        "-s",
        str(sessions),
        "-m",
        str(messages),
        "-F",
        str(path),
        "-f",
        ENVELOPE_FROM,
        "-t",
        ENVELOPE_TO,
        f"127.0.0.1:{port}",
    ]
    started = time.perf_counter()
    subprocess.run(command, check=True, timeout=timeout, capture_output=True)
    return Ceiling("smtp-source", "emails", messages, time.perf_counter() - started)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="one benchmark baseline; prints JSON")
    sub = parser.add_subparsers(dest="name", required=True)
    kafka = sub.add_parser("kafka")
    kafka.add_argument("--bootstrap", required=True)
    kafka.add_argument("--topic", required=True)
    kafka.add_argument("--partitions", type=int, required=True)
    kafka.add_argument("--records", type=int, required=True)
    smtp = sub.add_parser("aiosmtplib")
    smtp.add_argument("--port", type=int, required=True)
    smtp.add_argument("--connections", type=int, required=True)
    smtp.add_argument("--messages", type=int, required=True)
    smtp.add_argument("--message-file", type=Path, required=True)
    smtp.add_argument("--loop", choices=[e.value for e in EventLoop], default="uvloop")
    smtp.add_argument("--path", choices=("sendmail", "worker"), default="sendmail")
    naive = sub.add_parser("naive")
    naive.add_argument("--topic", required=True)
    naive.add_argument("--records", type=int, required=True)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    if args.name == "kafka":
        result = asyncio.run(
            kafka_ceiling(args.bootstrap, args.topic, args.partitions, args.records)
        )
    elif args.name == "aiosmtplib":
        message = args.message_file.read_bytes()
        with asyncio.Runner(loop_factory=loop_factory(EventLoop(args.loop))) as runner:
            result = runner.run(
                smtp_ceiling(args.port, args.connections, args.messages, message, args.path)
            )
    else:
        sent, seconds = asyncio.run(naive_worker(args.topic, args.records))
        result = Ceiling("naive", "notifications", sent, seconds)
    json.dump(result.as_json(), sys.stdout)
    print()


if __name__ == "__main__":
    main()
