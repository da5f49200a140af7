"""Quiet hours on their own and through Pipeline and Courier with a clock the test moves: the
window's arithmetic in several zones and across DST changes, where the recipient's zone comes
from, and what happens to a held notification (released, superseded, expired, looked at
again). The same through a real broker and HTTP sink is in test_quiet_kafka.py."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from structlog.testing import capture_logs

from tests.factories import event
from tests.test_pipeline import TEMPLATES, FakeSender, FakeSideTopics, Published, Rig
from worker import headers
from worker.dedup.memory import MemoryStore
from worker.delivery import Courier, InProcessRetry
from worker.events import Customer, Shop
from worker.pipeline import Outcome, Pipeline
from worker.policy import DEFAULT_POLICY
from worker.quiet import QuietHours, Window, recipient_zone
from worker.render import Renderer
from worker.retry import Backoff, Held, RetryLimits, parse_waiting
from worker.sidetopics import origin_headers

RETRY_TOPIC = "events.retry"
NIGHT = Window.parse("21:00-08:00")
UTC_ZONE = ZoneInfo("UTC")


def at(text: str) -> float:
    """An instant, written with its offset."""
    return datetime.fromisoformat(text).timestamp()


def local(instant: float, zone: str) -> str:
    return datetime.fromtimestamp(instant, ZoneInfo(zone)).isoformat()


@dataclass
class Clock:
    now: float

    def __call__(self) -> float:
        return self.now


class HoldingSideTopics(FakeSideTopics):
    async def hold(self, envelope: Any, held: Held) -> None:
        fields = [*origin_headers(envelope), *held.headers()]
        self.published.append(Published(RETRY_TOPIC, envelope, fields))


def quiet_rig(clock: Clock, expiring: tuple[str, ...] = (), recheck: float = 86400) -> Rig:
    store = MemoryStore(86400 * 3)
    email, sms, side = FakeSender(), FakeSender(), HoldingSideTopics()
    renderer = Renderer(TEMPLATES, "en", Shop(name="Test Shop"))
    quiet = QuietHours({"sms": NIGHT, "email": None}, UTC_ZONE, expiring, recheck)
    courier = Courier(
        store=store,
        renderer=renderer,
        senders={"email": email, "sms": sms},
        dead_letters=side,
        retries=side,
        in_process=InProcessRetry(1, Backoff(0.001, 0.001, random.Random(1))),
        limits=RetryLimits(3, 86400 * 2, Backoff(1, 10, random.Random(1))),
        owner="test/1",
        lease=60,
        clock=clock,
        quiet=quiet,
    )
    pipeline = Pipeline(
        store=store,
        courier=courier,
        policy=DEFAULT_POLICY,
        channels=frozenset({"email", "sms"}),
        dead_letters=side,
        locale_for=renderer.locale_for,
        retry_topic=RETRY_TOPIC,
    )
    return Rig(pipeline, store, email, sms, side)


# --- the window, in several zones -----------------------------------------------------------

CASES = [
    # zone, the moment (UTC), when the quiet period ends (local), or None: not quiet
    ("Asia/Ho_Chi_Minh", "2026-12-04T22:00:00+00:00", "2026-12-05T08:00:00+07:00"),
    ("Asia/Ho_Chi_Minh", "2026-12-04T01:00:00+00:00", None),  # 08:00 sharp: open
    ("Asia/Seoul", "2026-12-04T12:30:00+00:00", "2026-12-05T08:00:00+09:00"),  # 21:30
    ("Asia/Seoul", "2026-12-04T11:59:59+00:00", None),  # 20:59:59
    ("Europe/Berlin", "2026-12-04T12:00:00+00:00", None),
    ("Europe/Berlin", "2026-12-05T05:30:00+00:00", "2026-12-05T08:00:00+01:00"),  # 06:30
    ("America/New_York", "2026-12-05T03:00:00+00:00", "2026-12-05T08:00:00-05:00"),  # 22:00
    # the night DST starts (2026-03-08, 02:00 EST -> 03:00 EDT) is an hour shorter
    ("America/New_York", "2026-03-08T02:00:00+00:00", "2026-03-08T08:00:00-04:00"),
    # the night it ends (2026-11-01, 02:00 EDT -> 01:00 EST) an hour longer
    ("America/New_York", "2026-11-01T01:00:00+00:00", "2026-11-01T08:00:00-05:00"),
    # Berlin's spring change (2026-03-29, 02:00 CET -> 03:00 CEST)
    ("Europe/Berlin", "2026-03-28T20:00:00+00:00", "2026-03-29T08:00:00+02:00"),
]


@pytest.mark.parametrize(("zone", "moment", "release"), CASES)
def test_the_window_is_read_on_the_recipients_wall_clock(
    zone: str, moment: str, release: str | None
) -> None:
    """Quiet from 21:00 up to 08:00 local time, whatever the zone's offset or DST: the release
    is 08:00 on the recipient's clock, not a fixed number of hours later."""
    ends = NIGHT.release(at(moment), ZoneInfo(zone)) if NIGHT else None
    assert (local(ends, zone) if ends is not None else None) == release


def test_dst_changes_shorten_and_lengthen_the_night_in_real_hours() -> None:
    """In New York a night that starts at 21:00 lasts 10 h when DST starts and 12 h when it
    ends (11 h otherwise)."""
    assert NIGHT is not None
    ny = ZoneInfo("America/New_York")
    for start, hours in (
        ("2026-03-08T02:00:00+00:00", 10),
        ("2026-11-01T01:00:00+00:00", 12),
        ("2026-12-05T02:00:00+00:00", 11),
    ):
        ends = NIGHT.release(at(start), ny)
        assert ends is not None and ends - at(start) == hours * 3600


def test_an_end_in_the_skipped_hour_is_the_first_moment_after_it() -> None:
    """A window ending at 02:30 on the night New York skips 02:00-03:00 ends at 03:30 EDT
    (02:30 read with the offset before the change)."""
    window = Window.parse("22:00-02:30")
    assert window is not None
    ends = window.release(at("2026-03-08T04:00:00+00:00"), ZoneInfo("America/New_York"))
    assert ends is not None and local(ends, "America/New_York") == "2026-03-08T03:30:00-04:00"


@pytest.mark.parametrize("text", ["21-08", "21:00", "21:00-21:00", "25:00-08:00", "21:00+07:00-8"])
def test_a_window_that_is_not_one_is_refused(text: str) -> None:
    """A malformed or empty window is a configuration error, not a guess."""
    with pytest.raises(ValueError):
        Window.parse(text)


def test_off_means_no_window_and_a_day_window_does_not_wrap() -> None:
    """``off`` disables quiet hours; ``12:00-14:00`` is quiet only over lunch."""
    assert Window.parse("off") is None and Window.parse("") is None
    lunch = Window.parse("12:00-14:00:30")
    assert lunch is not None
    berlin = ZoneInfo("Europe/Berlin")
    assert lunch.release(at("2026-12-04T10:59:00+00:00"), berlin) is None
    ends = lunch.release(at("2026-12-04T11:00:00+00:00"), berlin)
    assert ends is not None and local(ends, "Europe/Berlin") == "2026-12-04T14:00:30+01:00"
    assert lunch.release(at("2026-12-04T13:00:30+00:00"), berlin) is None


# --- where the zone comes from --------------------------------------------------------------

NOW = at("2026-12-04T22:00:00+00:00")


@pytest.mark.parametrize(
    ("customer", "zone", "source"),
    [
        ({"timezone": "Europe/Berlin", "phone": "+84901234567"}, "Europe/Berlin", "customer"),
        ({"phone": "+82 10-1234-5678", "locale": "vi-VN"}, "Asia/Seoul", "phone"),
        ({"phone": "+1 212 555 0123", "locale": "de-DE"}, "America/New_York", "phone"),
        ({"phone": "090 123 4567", "locale": "vi-VN"}, "Asia/Ho_Chi_Minh", "phone"),
        ({"locale": "de-DE"}, "Europe/Berlin", "locale"),
        ({"locale": "ko"}, "Asia/Seoul", "locale"),
        ({"phone": "not a number", "locale": "vi-VN"}, "Asia/Ho_Chi_Minh", "locale"),
        ({}, "UTC", "default"),
    ],
)
def test_the_zone_comes_from_the_first_source_that_gives_one(
    customer: dict[str, Any], zone: str, source: str
) -> None:
    """customer.timezone, else the phone number's region, else the locale's, else the
    default."""
    found, rule = recipient_zone(Customer(**customer), UTC_ZONE, NOW)
    assert (found.key, rule) == (zone, source)


def test_a_region_of_several_zones_gives_the_middle_one_by_offset() -> None:
    """``en-US`` spans Hawaii to New York: the zone taken has as many of the region's zones
    east of it as west of it (US Central), and the same one every time."""
    found, rule = recipient_zone(Customer(locale="en-US"), UTC_ZONE, NOW)
    moment = datetime.fromtimestamp(NOW, UTC)
    assert rule == "locale"
    assert (
        moment.astimezone(found).utcoffset()
        == moment.astimezone(ZoneInfo("America/Chicago")).utcoffset()
    )
    assert recipient_zone(Customer(locale="en-US"), UTC_ZONE, NOW)[0] == found


def test_an_unknown_timezone_makes_the_event_invalid() -> None:
    """``customer.timezone`` must name an IANA zone: a typo is refused when decoded, with the
    field named, rather than read as UTC."""
    with pytest.raises(ValueError, match="IANA time zone"):
        Customer(timezone="Asia/Hanoi")


# --- held, released, superseded, expired ----------------------------------------------------


def sms_customer(zone: str, **extra: Any) -> dict[str, Any]:
    return {"timezone": zone, **extra}


async def test_a_notification_at_night_is_held_and_sent_when_the_window_opens() -> None:
    """A Seoul customer's shipped event at 23:00 KST: the email goes at once, the SMS is held
    (an outcome, not a failure: no attempt counted) until 08:00 KST, and sent then."""
    clock = Clock(at("2026-12-04T23:00:00+09:00"))
    r = quiet_rig(clock)
    with capture_logs() as logs:
        outcome = await r.main(event("e1", "shipped", customer=sms_customer("Asia/Seoul")))
    assert outcome == Outcome("notified", sent=("email",), held=("sms",))
    assert (len(r.email.sent), r.sms.sent) == (1, [])
    (held,) = r.side.on(RETRY_TOPIC)
    assert held.header(headers.RETRY_ATTEMPT) is None
    assert parse_waiting(dict(held.headers)) == ("sms", None)
    release = at("2026-12-05T08:00:00+09:00")
    assert float(held.header(headers.RETRY_DUE) or b"") == release
    (line,) = [e for e in logs if e["event"] == "notification_held"]
    assert line["release_at"] == "2026-12-05T08:00:00+09:00"
    assert (line["zone"], line["zone_from"]) == ("Asia/Seoul", "customer")

    clock.now = release
    with capture_logs() as logs:
        assert await r.again(held) == Outcome("notified", sent=("sms",))
    assert [m.status for m in r.sms.sent] == ["shipped"]
    assert [e["event"] for e in logs if e["event"].startswith("notification_")] == [
        "notification_released",
        "notification_sent",
    ]


async def test_a_held_notification_superseded_meanwhile_gives_only_the_newer_news() -> None:
    """Two statuses of one shipment at Berlin night: both SMS are held; when the window opens
    the older one is dropped as superseded and the customer gets the newer one, once."""
    clock = Clock(at("2026-12-04T23:30:00+01:00"))
    r = quiet_rig(clock)
    customer = sms_customer("Europe/Berlin")
    await r.main(event("e1", "shipped", customer=customer))
    clock.now += 1800
    outcome = await r.main(event("e2", "delayed", minutes=30, customer=customer))
    assert outcome.held == ("sms",)
    first, second = r.side.on(RETRY_TOPIC)
    clock.now = at("2026-12-05T08:00:00+01:00")
    with capture_logs() as logs:
        assert await r.again(first) == Outcome("skipped", "superseded")
        assert await r.again(second) == Outcome("notified", sent=("sms",))
    assert [m.status for m in r.sms.sent] == ["delayed"]
    assert any(
        e["event"] == "notification_stale_dropped" and e["reason"] == "superseded" for e in logs
    )


async def test_a_status_whose_news_expires_is_dropped_not_sent_late() -> None:
    """QUIET_HOURS_DROP=out_for_delivery: an out-for-delivery SMS at 22:00 in Ho Chi Minh City
    is dropped as expired (no retry record), while its email goes."""
    clock = Clock(at("2026-12-04T22:00:00+07:00"))
    r = quiet_rig(clock, expiring=("out_for_delivery",))
    with capture_logs() as logs:
        outcome = await r.main(event("e1", "out_for_delivery", customer={}))
    assert outcome == Outcome("notified", sent=("email",))
    assert r.sms.sent == [] and r.side.on(RETRY_TOPIC) == []
    snapshot = await r.store.load("e1", "SHP-1")
    assert snapshot.event is not None and snapshot.event.done["sms"] == "expired"
    (line,) = [e for e in logs if e["event"] == "notification_expired"]
    assert line["zone"] == "Asia/Ho_Chi_Minh" and line["zone_from"] == "phone"

    sms_only = quiet_rig(clock, expiring=("out_for_delivery",))
    only = event("e1", "out_for_delivery", customer={"channels": ["sms"]})
    assert await sms_only.main(only) == Outcome("skipped", "expired")


async def test_a_long_hold_is_looked_at_again_without_being_sent() -> None:
    """With a recheck of 15 minutes, a New York SMS held at 22:00 comes back at 22:15, is held
    anew for the same release, and is sent only at 08:00."""
    clock = Clock(at("2026-12-04T22:00:00-05:00"))
    r = quiet_rig(clock, recheck=900)
    await r.main(event("e1", "shipped", customer=sms_customer("America/New_York")))
    (first,) = r.side.on(RETRY_TOPIC)
    assert float(first.header(headers.RETRY_DUE) or b"") == clock.now + 900
    clock.now += 900
    assert await r.again(first) == Outcome("held", held=("sms",))
    _, second = r.side.on(RETRY_TOPIC)
    assert second.header(headers.RETRY_HELD) == first.header(headers.RETRY_HELD)
    assert r.sms.sent == []
    clock.now = at("2026-12-05T08:00:00-05:00")
    assert await r.again(second) == Outcome("notified", sent=("sms",))


async def test_a_redelivered_held_event_sends_nothing_and_holds_nothing_more() -> None:
    """The main-topic record of a held notification, delivered again (a rebalance), is a
    duplicate: the held channel has its outcome, and its retry record will send it."""
    clock = Clock(at("2026-12-04T23:00:00+09:00"))
    r = quiet_rig(clock)
    data = event("e1", "shipped", customer=sms_customer("Asia/Seoul"))
    await r.main(data)
    assert await r.main(data) == Outcome("skipped", "duplicate")
    assert len(r.side.on(RETRY_TOPIC)) == 1 and len(r.email.sent) == 1


async def test_a_retry_that_falls_in_quiet_hours_keeps_its_place_in_the_retries() -> None:
    """An SMS that failed at 20:59 and whose retry comes due at 21:00:30 is held with its
    retry state (attempt 1, its history): holding counts no attempt."""
    from worker.channels import TransientDeliveryError

    clock = Clock(at("2026-12-04T20:59:00+07:00"))
    r = quiet_rig(clock)
    r.sms.failures = [TransientDeliveryError("503")] * 2
    outcome = await r.main(event("e1", "shipped", customer={}))
    assert outcome.deferred == ("sms",)
    (retry,) = r.side.on(RETRY_TOPIC)
    clock.now = at("2026-12-04T21:00:30+07:00")
    assert await r.again(retry) == Outcome("held", held=("sms",))
    _, held = r.side.on(RETRY_TOPIC)
    channel, state = parse_waiting(dict(held.headers))
    assert channel == "sms" and state is not None and state.attempt == 1
    assert len(state.history) == 1
    clock.now = at("2026-12-05T08:00:00+07:00")
    assert await r.again(held) == Outcome("notified", sent=("sms",))
