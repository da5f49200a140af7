"""Publish a JSON-lines file of shipment events to Kafka, keyed by ``shipment.id`` (lines that
are not valid events are sent as they are, keyed ``invalid``), and wait for every ack.

    .venv/bin/python scripts/produce.py samples/events.jsonl [--topic T] [--bootstrap H:P]

It connects as the worker does, with the worker's KAFKA_* settings (security included), and
waits for the broker as the worker does (KAFKA_CONNECT_TIMEOUT). Exit 1: no broker; 2: bad
settings or refused by the broker.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path

from aiokafka import AIOKafkaProducer

from worker import kafka_client, logs
from worker.settings import ConfigError, KafkaSettings, load_settings


def key_of(line: bytes) -> bytes:
    try:
        return str(json.loads(line)["shipment"]["id"]).encode()
    except (ValueError, KeyError, TypeError):
        return b"invalid"


async def produce(lines: list[bytes], topic: str, settings: KafkaSettings) -> int:
    await kafka_client.wait_for_broker(settings)
    producer = AIOKafkaProducer(
        **kafka_client.connection_kwargs(settings), acks="all", enable_idempotence=True
    )
    await kafka_client.start(producer, settings)
    try:
        for line in lines:
            await producer.send(topic, line, key=key_of(line))
        await producer.flush()
    finally:
        await producer.stop()
    return len(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file", type=Path)
    parser.add_argument("--topic", default=os.environ.get("KAFKA_TOPIC", "shipment-status"))
    parser.add_argument(
        "--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "localhost:9092")
    )
    args = parser.parse_args()
    lines = [line for line in args.file.read_bytes().splitlines() if line.strip()]
    os.environ["KAFKA_BOOTSTRAP_SERVERS"] = args.bootstrap
    try:
        settings = load_settings()
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"configuration error: {problem}", file=sys.stderr)
        return 2
    logs.configure(settings.log)
    try:
        count = asyncio.run(produce(lines, args.topic, settings.kafka))
    except kafka_client.KafkaUnavailable as exc:
        print(f"kafka error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(f"produced {count} records to {args.topic}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
