"""The naive worker baseline: what a first, straightforward implementation would do, built
from the worker's own pieces (decode, policy, templates) plus an ``EmailMessage`` per email
(``bench/legacy_email.py``), with none of the worker's concurrency:

    for each record, one at a time: decode -> plan -> remember the event in SQLite (blocking,
    committed) -> for each channel: render, then for email open a new SMTP connection, send,
    QUIT; for SMS one POST -> one JSON log line -> commit the offset.

It uses only the worker's public building blocks (``decode``, ``plan``, ``Renderer``), not
its pipeline wiring, so refactoring the pipeline does not break it.
"""

from __future__ import annotations

import json
import sqlite3
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import aiosmtplib
import httpx
from aiokafka import AIOKafkaConsumer

from bench.legacy_email import build_email_message
from worker.app import build_renderer
from worker.channels import Outgoing
from worker.events import Event, decode
from worker.policy import Delivery, plan
from worker.render import Renderer
from worker.settings import Settings, load_settings


@dataclass
class NaiveWorker:
    settings: Settings
    renderer: Renderer
    http: httpx.AsyncClient
    db: sqlite3.Connection

    async def handle(self, value: bytes | None) -> int:
        """One record; returns how many notifications it sent."""
        event = decode(value)
        if not isinstance(event, Event):
            raise RuntimeError(f"naive worker: invalid event: {event.message}")
        with self.db:
            self.db.execute("INSERT INTO events VALUES (?, ?)", (event.event_id, time.time()))
        deliveries = plan(event, self.settings.app.policy, frozenset({"email", "sms"})).deliveries
        for delivery in deliveries:
            await self._send(event, delivery)
        print(json.dumps({"event": "event_notified", "event_id": event.event_id}), file=sys.stderr)
        return len(deliveries)

    async def _send(self, event: Event, delivery: Delivery) -> None:
        locale = self.renderer.locale_for(event.customer.locale)
        if delivery.channel == "sms":
            text = self.renderer.sms(event).text
            payload = {"to": delivery.address, "body": text, "event_id": event.event_id}
            (
                await self.http.post(str(self.settings.sms.webhook_url), json=payload)
            ).raise_for_status()
            return
        rendered = self.renderer.email(event)
        outgoing = Outgoing(
            "email",
            event.event_id,
            event.status,
            locale,
            delivery.address,
            event.customer.name,
            rendered.text,
            rendered.subject,
            rendered.html,
        )
        mail = build_email_message(
            self.settings.email.from_, self.settings.email.reply_to, outgoing
        )
        smtp = self.settings.smtp
        client = aiosmtplib.SMTP(hostname=smtp.host, port=smtp.port, start_tls=False)
        await client.connect()
        try:
            await client.send_message(mail)
        finally:
            await client.quit()


def _open_db(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE IF NOT EXISTS events (event_id TEXT PRIMARY KEY, at REAL)")
    db.isolation_level = "DEFERRED"
    return db


async def naive_worker(topic: str, records: int) -> tuple[int, float]:
    """Process ``records`` records one by one, configured by the worker's environment
    variables; return (notifications sent, seconds from the first record to the last)."""
    settings = load_settings()
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=settings.kafka.bootstrap_servers,
        group_id=f"bench-naive-{uuid.uuid4().hex[:8]}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    async with httpx.AsyncClient() as http:
        worker = NaiveWorker(
            settings,
            build_renderer(settings),
            http,
            _open_db(settings.app.data_dir / "naive.sqlite3"),
        )
        await consumer.start()
        sent, started = 0, 0.0
        try:
            for _ in range(records):
                record = await consumer.getone()
                started = started or time.perf_counter()
                sent += await worker.handle(record.value)
                await consumer.commit()
        finally:
            await consumer.stop()
            worker.db.close()
    return sent, time.perf_counter() - started
