"""Quiet hours through the real path: Kafka (main and retry topics), the SMTP sink and the HTTP
SMS sink, the worker in this process. The window is configured to end a few seconds after the
test starts, on the recipient's clock, so a held SMS is released within the test."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from structlog.testing import capture_logs

from tests.conftest import MakeTopic, Produce
from tests.factories import event, record
from tests.sinks import SmsSink, SmtpSink
from tests.test_pipeline_kafka import events_named
from worker.logs import merge_context

Env = Callable[..., dict[str, str]]
SHOWN = (
    "notification_held",
    "notification_released",
    "notification_sent",
    "notification_stale_dropped",
    "event_held",
    "event_superseded_skipped",
)


def clock_in(zone: str, at: float) -> str:
    return datetime.fromtimestamp(at, ZoneInfo(zone)).strftime("%H:%M:%S")


async def until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def test_night_sms_are_held_until_the_window_opens_and_superseded_ones_dropped(
    new_topic: MakeTopic,
    produce: Produce,
    worker_env: Env,
    run_worker: Any,
    smtp_sink: SmtpSink,
    sms_sink: SmsSink,
) -> None:
    """Quiet hours that end 25 s from now in Ho Chi Minh City: a Vietnamese customer's SMS is
    held and arrives when they end, not before; another's older status, superseded while held,
    is dropped and only the newer one arrives; a New York customer (mid-afternoon there) gets
    hers at once. Emails are not held."""
    opens = math.ceil(time.time()) + 25
    window = f"{clock_in('Asia/Ho_Chi_Minh', opens - 3600)}-{clock_in('Asia/Ho_Chi_Minh', opens)}"
    topic = await new_topic(partitions=2)
    env = worker_env(
        topic,
        SMS_PROVIDER="webhook",
        SMS_WEBHOOK_URL=sms_sink.url,
        SMS_QUIET_HOURS=window,
    )
    vn_a = {"phone": "+84 90 123 4567", "locale": "vi-VN"}  # zone from the phone number
    vn_b = {"phone": "+84 91 765 4321", "timezone": "Asia/Ho_Chi_Minh"}
    ny = {"phone": "+1 212 555 0123", "locale": "en-US", "email": "ny@example.com"}
    await produce(
        topic,
        [
            record(event("a1", "shipped", shipment_id="SHP-A", customer=vn_a)),
            record(event("b1", "shipped", shipment_id="SHP-B", customer=vn_b)),
            record(event("b2", "out_for_delivery", shipment_id="SHP-B", minutes=5, customer=vn_b)),
            record(event("n1", "shipped", shipment_id="SHP-N", customer=ny)),
        ],
    )
    with capture_logs(processors=[merge_context]) as logs:
        async with run_worker(env):
            await until(lambda: len(events_named(logs, "notification_held")) == 3, 20, "holds")
            await smtp_sink.wait_for(4)
            await sms_sink.wait_for(1)
            assert time.time() < opens, "the test machine was too slow to see the holds"
            assert [r.json["to"] for r in sms_sink.requests] == ["+12125550123"]
            await until(lambda: len(sms_sink.requests) >= 3, opens - time.time() + 30, "SMS")
            released_at = time.time()
            await asyncio.sleep(1.0)  # anything sent twice or late would follow right behind
    for entry in logs:
        if entry["event"] in SHOWN:
            shown = (
                "event",
                "event_id",
                "status",
                "channel",
                "to",
                "zone",
                "zone_from",
                "release_at",
            )
            shown += ("reason", "outcome")
            print({k: entry[k] for k in shown if k in entry})
    assert released_at >= opens
    got = sorted((r.json["to"], r.json["status"]) for r in sms_sink.requests)
    assert got == [
        ("+12125550123", "shipped"),
        ("+84901234567", "shipped"),
        ("+84917654321", "out_for_delivery"),
    ]
    held = events_named(logs, "notification_held")
    release = datetime.fromtimestamp(opens, ZoneInfo("Asia/Ho_Chi_Minh")).isoformat()
    assert {(h["event_id"], h["release_at"], h["zone_from"]) for h in held} == {
        ("a1", release, "phone"),
        ("b1", release, "customer"),
        ("b2", release, "customer"),
    }
    released = events_named(logs, "notification_released")
    assert sorted(r["event_id"] for r in released) == ["a1", "b2"]
    dropped = events_named(logs, "notification_stale_dropped")
    assert [(d["event_id"], d["reason"]) for d in dropped] == [("b1", "superseded")]
    assert len(smtp_sink.messages) == 4
