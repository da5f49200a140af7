"""Micro benchmarks of the worker's per-notification steps and of the proposed replacements,
in one process without I/O (``python -m bench.micro`` prints JSON: microseconds per call).

They give clean per-step costs where the end-to-end profile mixes in sampling overhead and
the other processes on the machine; each replacement is measured on the same sample events
(every locale) as the code it would replace, and the hand-built email is checked to parse
back to the same subject, recipient and bodies as the ``EmailMessage`` one.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import io
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from contextlib import redirect_stderr
from pathlib import Path
from typing import Any, cast

from bench.budget import (
    BUILD_8BIT,
    DECODE,
    LOG_LINE,
    PLAN,
    RENDER_EMAIL,
    RENDER_SMS,
    SMS_REQUEST,
    STORE_ACCEPT,
    STORE_OUTCOME,
)
from bench.events import EventFactory
from bench.legacy_email import build_email_message
from worker import logs, render
from worker.app import build_renderer
from worker.channels import Outgoing
from worker.channels.http import HttpClient
from worker.channels.smtp import SmtpSender
from worker.events import Event, decode
from worker.policy import DEFAULT_POLICY, plan
from worker.settings import load_settings


def per_call_us(fn: Callable[[], object], seconds: float = 0.5) -> float:
    """Mean wall time of ``fn()`` in microseconds over about ``seconds``."""
    fn()
    calls, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        fn()
        calls += 1
    return (time.perf_counter() - started) / calls * 1e6


def _cycle(items: list[Any]) -> Callable[[], Any]:
    state = {"i": 0}

    def take() -> Any:
        state["i"] = (state["i"] + 1) % len(items)
        return items[state["i"]]

    return take


def _samples() -> tuple[list[bytes], list[Event]]:
    factory = EventFactory("micro", seed=7)
    records = [value for _, value in factory.batch(0, 200)[0]]
    events = [e for e in map(decode, records) if isinstance(e, Event)]
    return records, [e for e in events if DEFAULT_POLICY[e.status][:1] == ("email",)]


def _outgoing(renderer: render.Renderer, event: Event) -> Outgoing:
    mail = renderer.email(event)
    assert event.customer.email
    return Outgoing(
        "email",
        event.event_id,
        event.status,
        renderer.locale_for(event.customer.locale),
        event.customer.email,
        event.customer.name,
        mail.text,
        mail.subject,
        mail.html,
    )


def check_same_email(reference: bytes, other: bytes) -> None:
    """``other`` reads back like the ``EmailMessage`` reference."""
    a, b = (email.message_from_bytes(m, policy=email.policy.default) for m in (reference, other))
    for header in ("Subject", "To", "From", "Message-ID", "Content-Language"):
        assert str(a[header]) == str(b[header]), (header, a[header], b[header])
    for kind in ("plain", "html"):
        pa, pb = a.get_body((kind,)), b.get_body((kind,))
        assert pa is not None and pb is not None, kind
        assert pa.get_content() == pb.get_content(), kind


def wire_bytes(sender: SmtpSender, message: Outgoing, eight_bit: bool = False) -> bytes:
    """The bytes the worker's SMTP sender puts on the wire for ``message``: quoted-printable
    bodies, or with ``eight_bit`` as sent to a server announcing 8BITMIME."""
    return bytes(sender.mime.build(message, eight_bit=eight_bit).data)


def email_costs(
    renderer: render.Renderer, sender: SmtpSender, events: list[Event]
) -> dict[str, float]:
    from aiosmtplib.email import flatten_message

    outgoing = [_outgoing(renderer, e) for e in events]
    from_, reply_to = sender_addresses()

    def reference(message: Outgoing) -> Any:
        return build_email_message(from_, reply_to, message)

    for message in outgoing[:20]:  # the worker's bytes read back as the reference's do
        for eight_bit in (False, True):
            check_same_email(
                flatten_message(reference(message)), wire_bytes(sender, message, eight_bit)
            )
    next_message, next_mail = _cycle(outgoing), _cycle([reference(m) for m in outgoing])
    return {
        "EmailMessage build (reference)": per_call_us(lambda: reference(next_message())),
        "EmailMessage flatten (aiosmtplib)": per_call_us(lambda: flatten_message(next_mail())),
        "worker's message build, quoted-printable bodies": per_call_us(
            lambda: wire_bytes(sender, next_message())
        ),
        BUILD_8BIT: per_call_us(lambda: wire_bytes(sender, next_message(), eight_bit=True)),
    }


def sender_addresses() -> tuple[str, str | None]:
    settings = load_settings()
    return settings.email.from_, settings.email.reply_to


def render_costs(renderer: render.Renderer, events: list[Event]) -> dict[str, float]:
    for event in events:  # each template compiled first, as the worker's start-up check does
        renderer.email(event)
        renderer.sms(event)
    next_event = _cycle(events)

    def afresh() -> Event:
        """The next event, with no context kept for it: a render from scratch. (In the
        worker, an event's second render mostly reuses its first one's context.)"""
        renderer._recent.clear()
        return cast(Event, next_event())

    costs = {
        RENDER_EMAIL: per_call_us(lambda: renderer.email(afresh())),
        RENDER_SMS: per_call_us(lambda: renderer.sms(afresh())),
    }
    return costs


def decode_costs(records: list[bytes], events: list[Event]) -> dict[str, float]:
    next_record, next_event = _cycle(records), _cycle(events)
    channels = frozenset({"email", "sms"})
    return {
        DECODE: per_call_us(lambda: decode(next_record())),
        PLAN: per_call_us(lambda: plan(next_event(), DEFAULT_POLICY, channels)),
    }


def log_costs(settings: Any) -> dict[str, float]:
    """One INFO line with the pipeline's usual context, to a throw-away stream."""

    loggers: list[logs.Logger] = []

    def one_line() -> None:
        if not loggers:  # a logger made after configure() keeps what it configured
            loggers.append(logs.get_logger("bench"))
        logs.new_context(topic="t", partition=0, offset=1, event_id="e")
        to = logs.mask_email("chi@mail.example")
        loggers[0].info("notification_sent", channel="email", to=to)

    costs = {}
    # a text stream over bytes, like sys.stderr
    stream = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", line_buffering=True)
    with redirect_stderr(stream):
        logs.configure(settings.log)
        loggers.clear()
        costs[LOG_LINE] = per_call_us(one_line)
        _configure_through_stdlib_logging(settings.log)
        loggers.clear()
        costs["one log line (structlog via stdlib logging, long before)"] = per_call_us(one_line)
    return costs


def _configure_through_stdlib_logging(settings: Any) -> None:
    """The worker's logging set-up until 13bb388: every structlog event through a stdlib
    ``logging`` handler and ``ProcessorFormatter``."""
    import logging

    import structlog

    logs.configure(settings)  # the stdlib handler and its formatter stay as they are
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            logs.merge_context,
            logs.redact_contacts,
            structlog.stdlib.add_log_level,
            structlog.stdlib.add_logger_name,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    logging.getLogger("bench").setLevel(logging.INFO)


def http_client_costs(requests: int = 3000, in_flight: int = 64) -> dict[str, float]:
    """CPU per SMS request of httpx (the worker's client until b48eb7e), of aiohttp (its client
    until worker/channels/http.py) and of that module's ``HttpClient`` (now), ``in_flight``
    requests at once on one pool, against the bench SMS sink in its own process (so its CPU is
    not counted)."""
    sink = subprocess.Popen(
        [sys.executable, "-m", "bench.sinks"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert sink.stdout is not None
        url = f"http://127.0.0.1:{sink.stdout.readline().split('http=')[1].strip()}/sms"
        return asyncio.run(_http_costs(url, requests, in_flight))
    finally:
        sink.terminate()
        sink.wait()


async def _http_costs(url: str, requests: int, in_flight: int) -> dict[str, float]:
    import aiohttp
    import httpx

    body = json.dumps({"to": "+84901234567", "body": "Đơn hàng đang được giao. " * 3}).encode()
    headers = {"Content-Type": "application/json", "Idempotency-Key": "k" * 40}
    costs: dict[str, float] = {}
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=100)) as client:

        async def with_httpx() -> None:
            response = await client.post(url, content=body, headers=headers)
            assert response.status_code == 201

        costs["SMS request, httpx (before)"] = await _cpu_us(with_httpx, requests, in_flight)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100)) as session:

        async def with_aiohttp() -> None:
            async with session.post(url, data=body, headers=headers) as response:
                await response.read()
                assert response.status == 201

        costs["SMS request, aiohttp (before)"] = await _cpu_us(with_aiohttp, requests, in_flight)
    client = HttpClient(timeout=10.0, pool_size=100)
    try:

        async def with_worker_client() -> None:
            response = await client.post(url, body, headers)
            assert response.status == 201

        costs[SMS_REQUEST] = await _cpu_us(with_worker_client, requests, in_flight)
    finally:
        await client.close()
    return costs


async def _cpu_us(post: Callable[[], Any], requests: int, in_flight: int) -> float:
    slots = asyncio.Semaphore(in_flight)

    async def one() -> None:
        async with slots:
            await post()

    await asyncio.gather(*(one() for _ in range(in_flight)))  # connections opened
    started = time.process_time()
    await asyncio.gather(*(one() for _ in range(requests)))
    return (time.process_time() - started) / requests * 1e6


def store_costs() -> dict[str, float]:
    """The SQLite store's pattern (a hop to its thread per call, a commit per write) against
    writes batched into one transaction; each on a fresh database."""
    costs = {
        "SQLite write + commit per call (the store before 13bb388)": _sqlite_us(1),
        "SQLite writes, 2 per commit (per write)": _sqlite_us(2),
        "SQLite writes, 16 per commit (per write)": _sqlite_us(16),
        "SQLite writes, 100 per commit (per write)": _sqlite_us(100),
        "run_in_executor round trip (per store call)": asyncio.run(_hop_us()),
        "the SQLite store's calls for an email+SMS event, 4 in flight (CPU)": asyncio.run(
            _store_event_us(sequential=True)
        ),
        "the same with random ids (UUIDs; the benchmark's are sequential)": asyncio.run(
            _store_event_us(sequential=False)
        ),
    }
    costs[STORE_ACCEPT], costs[STORE_OUTCOME] = asyncio.run(_store_statements_us())
    return costs


async def _store_event_us(sequential: bool, events: int = 20000, in_flight: int = 4) -> float:
    """CPU per event of what the pipeline asks of the default store for an event with an
    email and an SMS: load, accept (claiming both), then both outcomes at once; ``in_flight``
    events share each group commit."""
    from worker.dedup import ShipmentState, open_store

    ids = _event_ids(events, sequential)

    async def one(i: int, event_id: str, shipment_id: str) -> None:
        await store.load(event_id, shipment_id)
        state = ShipmentState("shipped", 1e9 + i)
        await store.accept(event_id, ("email", "sms"), shipment_id, state, "w/1", 30.0)
        await asyncio.gather(
            store.mark_done(event_id, "email", "sent"), store.mark_done(event_id, "sms", "sent")
        )

    with tempfile.TemporaryDirectory() as tmp:
        store = open_store(f"sqlite:///{tmp}/dedup.sqlite3", 86400.0)
        await store.load("warm", "up")  # the first load purges
        started = time.process_time()
        for start in range(0, events, in_flight):
            batch = range(start, min(events, start + in_flight))
            await asyncio.gather(*(one(i, *ids[i]) for i in batch))
        elapsed = time.process_time() - started
        await store.close()
    return elapsed / events * 1e6


async def _store_statements_us(events: int = 20000, per_commit: int = 4) -> tuple[float, float]:
    """CPU of the same store work without its awaits, committed as the worker's pattern does:
    the SQLite store's statements (the synchronous halves of its calls) for ``per_commit``
    events' loads and accepts, a commit, then their two outcomes each, a commit; sequential
    ids. Returns the CPU per event's load and accept, and per outcome, each with its commits.
    (A loop runs only for the first load's purge, which schedules a commit.)"""
    from worker.dedup import ShipmentState
    from worker.dedup.sqlite import SqliteStore

    ids = _event_ids(events, sequential=True)
    accepting = outcomes = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        store = SqliteStore(f"{tmp}/dedup.sqlite3", 86400.0)
        store._load("warm", "up")  # the first load purges
        for start in range(0, events, per_commit):
            batch = ids[start : start + per_commit]
            started = time.process_time()
            for i, (event_id, shipment_id) in enumerate(batch, start):
                store._load(event_id, shipment_id)
                state = ShipmentState("shipped", 1e9 + i)
                store._accept(event_id, ("email", "sms"), shipment_id, state, "w/1", 30.0)
            store._commit()
            accepted = time.process_time()
            for event_id, _ in batch:
                store._mark_done(event_id, "email", "sent")
                store._mark_done(event_id, "sms", "sent")
            store._commit()
            accepting += accepted - started
            outcomes += time.process_time() - accepted
        await store.close()
    return accepting / events * 1e6, outcomes / (2 * events) * 1e6


def _event_ids(events: int, sequential: bool) -> list[tuple[str, str]]:
    """(event id, shipment id) pairs: numbered like the benchmark's events, or UUIDs."""
    if sequential:
        run = uuid.uuid4().hex[:8]
        return [(f"{run}-{i:08d}", f"SHP-{run}-{i:08d}") for i in range(events)]
    return [(uuid.uuid4().hex, uuid.uuid4().hex) for _ in range(events)]


def _sqlite_us(batch: int, writes: int = 20000) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        db = sqlite3.connect(Path(tmp) / "d.sqlite3", isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("CREATE TABLE e (id TEXT PRIMARY KEY, v TEXT)")
        db.isolation_level = "DEFERRED"
        started = time.perf_counter()
        for start in range(0, writes, batch):
            with db:
                db.executemany(
                    "INSERT INTO e VALUES (?, ?)",
                    [(f"ev-{i}", "{}") for i in range(start, start + batch)],
                )
        elapsed = time.perf_counter() - started
        db.close()
    return elapsed / writes * 1e6


async def _hop_us(calls: int = 3000) -> float:
    from concurrent.futures import ThreadPoolExecutor

    loop = asyncio.get_running_loop()
    with ThreadPoolExecutor(max_workers=1) as pool:
        started = time.perf_counter()
        for _ in range(calls):
            await loop.run_in_executor(pool, int)
        return (time.perf_counter() - started) / calls * 1e6


def run_all() -> dict[str, float]:
    settings = load_settings()
    renderer = build_renderer(settings)
    sender = SmtpSender(settings.smtp, settings.email)
    records, events = _samples()
    costs: dict[str, float] = {}
    costs.update(decode_costs(records, events))
    costs.update(render_costs(renderer, events))
    costs.update(email_costs(renderer, sender, events))
    costs.update(log_costs(settings))
    costs.update(http_client_costs())
    costs.update(store_costs())
    return {name: round(us, 1) for name, us in costs.items()}


if __name__ == "__main__":
    os.environ.setdefault("SMS_PROVIDER", "disabled")
    json.dump(run_all(), sys.stdout, indent=1, ensure_ascii=False)
    print()
