"""Rate limits on their own: the throttle's pacing and pauses (real time, short), the
``Retry-After`` reading, and the SMS adapter's 429 against the real HTTP sink."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from datetime import UTC, datetime
from email.utils import format_datetime
from itertools import pairwise

import pytest

from tests.factories import event, record
from tests.sinks import SmsSink
from tests.test_pipeline import TEMPLATES, FakeSender, FakeSideTopics
from worker.channels import Outgoing, ProviderThrottled, TransientDeliveryError
from worker.channels.http import MAX_RETRY_AFTER, retry_after_seconds
from worker.channels.sms import WebhookSender, http_client
from worker.dedup.memory import MemoryStore
from worker.dedup.store import Claim
from worker.delivery import Courier, InProcessRetry
from worker.envelope import Envelope
from worker.events import Shop
from worker.pipeline import Pipeline
from worker.ratelimit import Throttle
from worker.render import Renderer
from worker.retry import Backoff, RetryLimits


async def turns(throttle: Throttle, count: int) -> list[float]:
    """When each of ``count`` concurrent sends got its turn."""
    times: list[float] = []

    async def one() -> None:
        await throttle.turn()
        times.append(time.monotonic())

    await asyncio.gather(*(one() for _ in range(count)))
    return sorted(times)


async def test_sends_are_spaced_by_the_rate() -> None:
    """At 20 a second, ten concurrent sends get their turns at least 50 ms apart (less a timer's
    slack), so no one-second window holds more than 20."""
    times = await turns(Throttle("sms", 20), 10)
    gaps = [b - a for a, b in pairwise(times)]
    assert min(gaps) >= 0.05 - 0.005
    assert times[-1] - times[0] >= 9 * 0.05 - 0.01


async def test_without_a_rate_sends_are_not_paced() -> None:
    """No rate configured: a hundred turns are given at once."""
    times = await turns(Throttle("sms", None), 100)
    assert times[-1] - times[0] < 0.05


async def test_a_429_pauses_every_send_of_the_channel_for_its_retry_after() -> None:
    """After a 429 asking for 0.4 s, no send gets its turn sooner, including those already
    waiting; then they resume at the rate, one by one."""
    throttle = Throttle("sms", 20)
    await throttle.turn()
    started = time.monotonic()
    throttle.refused(ProviderThrottled("429", retry_after=0.4))
    times = await turns(throttle, 5)
    assert times[0] - started >= 0.4 - 0.005
    assert min(b - a for a, b in pairwise(times)) >= 0.05 - 0.005


async def test_other_failures_do_not_pause() -> None:
    """A 503 or a timeout says nothing about the rate: the next turn is not delayed."""
    throttle = Throttle("sms", None)
    throttle.refused(TransientDeliveryError("503"))
    started = time.monotonic()
    await throttle.turn()
    assert time.monotonic() - started < 0.05


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("7", 7.0),
        (" 0 ", 0.0),
        ("999999", MAX_RETRY_AFTER),
        ("soon", None),
        ("-3", None),
        (None, None),
        ("Fri, 04 Dec 2026 22:00:30 GMT", 30.0),
        ("Fri, 04 Dec 2026 21:59:00 GMT", 0.0),
    ],
)
def test_retry_after_is_read_as_seconds_or_an_http_date(
    value: str | None, seconds: float | None
) -> None:
    """RFC 9110: delta-seconds or an HTTP date (relative to now); a date in the past means no
    wait; anything else is no answer; at most an hour is believed."""
    now = datetime(2026, 12, 4, 22, 0, tzinfo=UTC).timestamp()
    assert retry_after_seconds(value, now) == seconds


async def test_the_sms_adapter_reports_a_429_with_its_retry_after(sms_sink: SmsSink) -> None:
    """A provider over its rate answers 429 with Retry-After (seconds, or a date): the adapter
    raises ProviderThrottled carrying how long it asked for."""
    sms_sink.per_second = 1
    client = http_client(5.0)
    sender = WebhookSender(client, sms_sink.url)
    message = Outgoing("sms", "e1", "shipped", "en", "+84901234567", None, "hi")
    try:
        sms_sink.retry_after = "3"
        await sender.send(message)
        with pytest.raises(ProviderThrottled) as caught:
            await sender.send(message)
        assert caught.value.retry_after == 3.0
        assert str(caught.value) == "SMS provider answered 429, retry after 3s"
        sms_sink.retry_after = format_datetime(datetime.fromtimestamp(time.time() + 60, UTC), True)
        with pytest.raises(ProviderThrottled) as caught:
            await sender.send(message)
        assert caught.value.retry_after is not None and 55 <= caught.value.retry_after <= 61
    finally:
        await client.close()


class CountingStore(MemoryStore):
    """The memory store, counting claim calls per (event, channel)."""

    def __init__(self) -> None:
        super().__init__(3600)
        self.claims: Counter[tuple[str, str]] = Counter()

    async def claim(self, event_id: str, channel: str, owner: str, lease: float) -> Claim:
        self.claims[(event_id, channel)] += 1
        return await super().claim(event_id, channel, owner, lease)


async def test_a_send_waiting_for_its_turn_keeps_its_claim() -> None:
    """At 2 SMS a second with a 0.3 s lease, the third SMS of a burst waits about 1 s for its
    turn: its claim is renewed meanwhile (every lease/3), so no other worker may take it over;
    all three are sent once, in turn."""
    store = CountingStore()
    sms = FakeSender()
    courier = Courier(
        store=store,
        renderer=Renderer(TEMPLATES, "en", Shop(name="Test Shop")),
        senders={"email": FakeSender(), "sms": sms},
        dead_letters=FakeSideTopics(),
        retries=FakeSideTopics(),
        in_process=InProcessRetry(0, Backoff(0.001, 0.001)),
        limits=RetryLimits(1, 60, Backoff(1, 1)),
        owner="test/1",
        lease=0.3,
        throttles={"sms": Throttle("sms", 2)},
    )
    pipeline = Pipeline(
        store=store,
        courier=courier,
        policy={"shipped": ("sms",)},
        channels=frozenset({"email", "sms"}),
        dead_letters=FakeSideTopics(),
        locale_for=lambda locale: "en",
        retry_topic="events.retry",
    )
    records = [record(event(f"e{n}", "shipped", shipment_id=f"S{n}")) for n in range(3)]
    outcomes = await asyncio.gather(
        *(pipeline.handle(Envelope("events", 0, n, *kv)) for n, kv in enumerate(records))
    )
    assert [o.kind for o in outcomes] == ["notified"] * 3
    assert len(sms.sent) == 3
    renewals = sorted(store.claims[(f"e{n}", "sms")] for n in range(3))
    assert renewals[-1] >= 3  # the last in line: about 1 s of waiting, a renewal every 0.1 s
