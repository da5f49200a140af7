"""Publish a JSON-lines file of shipment events to Kafka, keyed by ``shipment.id`` (lines that
are not valid events are sent as they are, keyed ``invalid``), and wait for every ack.

    .venv/bin/python scripts/produce.py samples/events.jsonl [--topic T] [--bootstrap H:P]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from pathlib import Path

from aiokafka import AIOKafkaProducer


def key_of(line: bytes) -> bytes:
    try:
        return str(json.loads(line)["shipment"]["id"]).encode()
    except (ValueError, KeyError, TypeError):
        return b"invalid"


async def produce(lines: list[bytes], topic: str, bootstrap: str) -> int:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        for line in lines:
            await producer.send(topic, line, key=key_of(line))
        await producer.flush()
    finally:
        await producer.stop()
    return len(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file", type=Path)
    parser.add_argument("--topic", default=os.environ.get("KAFKA_TOPIC", "shipment-status"))
    parser.add_argument(
        "--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "localhost:9092")
    )
    args = parser.parse_args()
    lines = [line for line in args.file.read_bytes().splitlines() if line.strip()]
    count = asyncio.run(produce(lines, args.topic, args.bootstrap))
    print(f"produced {count} records to {args.topic}")


if __name__ == "__main__":
    main()
