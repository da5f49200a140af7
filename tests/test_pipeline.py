"""Pipeline and Courier on their own: the memory store, fake senders and a fake side-topic
publisher that builds the real headers. What the record path decides, without a broker (the
same behaviour through a real broker is in test_pipeline_kafka.py and test_record_path_kafka.py)."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest
from structlog.testing import capture_logs

from tests.factories import event, record
from worker import headers
from worker.channels import Outgoing, PermanentDeliveryError, TransientDeliveryError
from worker.cloudevents import Decoder
from worker.dedup import ShipmentState
from worker.dedup.memory import MemoryStore
from worker.dedup.resilient import Resilient
from worker.dedup.store import ChannelOutcome, StoreError
from worker.delivery import Courier, InProcessRetry
from worker.envelope import Envelope
from worker.events import Shop
from worker.metrics import Metrics
from worker.pipeline import Outcome, Pipeline
from worker.policy import DEFAULT_POLICY
from worker.render import Renderer
from worker.retry import Backoff, RetryLimits, RetryState, parse
from worker.sidetopics import dead_letter_headers, origin_headers

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
TOPIC, RETRY_TOPIC = "events", "events.retry"


@dataclass
class FakeSender:
    """Accepts every message unless ``failures`` holds an exception for the next send."""

    sent: list[Outgoing] = field(default_factory=list)
    failures: list[BaseException] = field(default_factory=list)

    async def send(self, message: Outgoing) -> None:
        if self.failures:
            raise self.failures.pop(0)
        self.sent.append(message)

    async def close(self) -> None:
        pass


@dataclass
class Published:
    topic: str
    envelope: Envelope
    headers: list[tuple[str, bytes]]

    def header(self, name: str) -> bytes | None:
        return dict(self.headers).get(name)

    def as_record(self, offset: int) -> Envelope:
        """The published record as the consumer would hand it back."""
        return Envelope(
            self.topic, 0, offset, self.envelope.key, self.envelope.value, tuple(self.headers)
        )


@dataclass
class FakeSideTopics:
    """Keeps what would go to the dead-letter and retry topics, with the real headers (encoded
    as the producer would need them: every value bytes)."""

    published: list[Published] = field(default_factory=list)

    async def publish(
        self,
        envelope: Envelope,
        error_type: str,
        message: str,
        channel: str | None = None,
        extra: list[tuple[str, bytes]] | None = None,
    ) -> None:
        fields = dead_letter_headers(envelope, error_type, message, channel, extra)
        assert all(isinstance(v, bytes) for _, v in fields)
        self.published.append(Published(f"{TOPIC}.dlq", envelope, fields))

    async def schedule(self, envelope: Envelope, state: RetryState, error: str) -> None:
        fields = [
            *origin_headers(envelope),
            *state.headers(),
            (headers.ERROR_MESSAGE, headers.text(error)),
        ]
        self.published.append(Published(RETRY_TOPIC, envelope, fields))

    def on(self, topic: str) -> list[Published]:
        return [p for p in self.published if p.topic == topic]


class FlakyStore(MemoryStore):
    """The memory store, failing the named calls with StoreError ``failing[name]`` times."""

    def __init__(self, failing: dict[str, int]) -> None:
        super().__init__(3600)
        self.failing = failing

    def _trip(self, name: str) -> None:
        if self.failing.get(name, 0) > 0:
            self.failing[name] -= 1
            raise StoreError(f"{name}: connection refused")

    async def load(self, *args: Any) -> Any:
        self._trip("load")
        return await super().load(*args)

    async def mark_done(self, *args: Any) -> None:
        self._trip("mark_done")
        await super().mark_done(*args)


@dataclass
class Rig:
    pipeline: Pipeline
    store: MemoryStore
    email: FakeSender
    sms: FakeSender
    side: FakeSideTopics
    offsets: int = 0

    async def main(self, data: dict[str, Any] | bytes, **extra: Any) -> Outcome:
        """``data`` as a main-topic record."""
        key, value = (b"raw", data) if isinstance(data, bytes) else record(data)
        self.offsets += 1
        return await self.pipeline.handle(Envelope(TOPIC, 0, self.offsets, key, value, **extra))

    async def again(self, published: Published) -> Outcome:
        """A record the pipeline put on the retry topic, as it comes back."""
        self.offsets += 1
        return await self.pipeline.handle(published.as_record(self.offsets))


def rig(
    store: MemoryStore | None = None,
    clock: Callable[[], float] | None = None,
    metrics: Metrics | None = None,
) -> Rig:
    store = store or MemoryStore(3600)
    email, sms, side = FakeSender(), FakeSender(), FakeSideTopics()
    renderer = Renderer(TEMPLATES, "en", Shop(name="Test Shop"))
    courier = Courier(
        store=Resilient(store, first_delay=0.001),
        renderer=renderer,
        senders={"email": email, "sms": sms},
        dead_letters=side,
        retries=side,
        in_process=InProcessRetry(1, Backoff(0.001, 0.001, random.Random(1))),
        limits=RetryLimits(3, 3600, Backoff(1, 10, random.Random(1))),
        owner="test/1",
        lease=60,
        **({"clock": clock} if clock else {}),
        metrics=metrics,
    )
    pipeline = Pipeline(
        store=Resilient(store, first_delay=0.001),
        courier=courier,
        policy=DEFAULT_POLICY,
        channels=frozenset({"email", "sms"}),
        dead_letters=side,
        locale_for=renderer.locale_for,
        retry_topic=RETRY_TOPIC,
        metrics=metrics,
        decode=Decoder(),
    )
    return Rig(pipeline, store, email, sms, side)


async def test_a_new_event_sends_each_planned_channel_once() -> None:
    """A shipped event with an email address and a phone number sends one email and one SMS,
    records both as sent, and a redelivery of it sends nothing."""
    r = rig()
    assert await r.main(event("e1", "shipped")) == Outcome("notified", sent=("email", "sms"))
    assert await r.main(event("e1", "shipped")) == Outcome("skipped", "duplicate")
    assert [m.address for m in r.email.sent] == ["an@example.com"]
    assert [m.address for m in r.sms.sent] == ["+84901234567"]
    snapshot = await r.store.load("e1", "SHP-1")
    assert snapshot.event is not None
    assert snapshot.event.done == {"email": "sent", "sms": "sent"}


async def test_an_event_id_reused_for_another_shipment_is_dead_lettered() -> None:
    """Two producers reusing one event_id for different shipments: the second is dead-lettered
    as event_id_conflict (not skipped as a duplicate), and nothing is sent for it."""
    r = rig()
    await r.main(event("e1", "shipped", shipment_id="SHP-1"))
    other = event("e1", "shipped", shipment_id="SHP-2", customer={"email": "b@example.com"})
    outcome = await r.main(other)
    assert (outcome.kind, outcome.reason) == ("dead_lettered", "event_id_conflict")
    assert [m.address for m in r.email.sent] == ["an@example.com"]
    (letter,) = r.side.on(f"{TOPIC}.dlq")
    assert letter.header(headers.ERROR_TYPE) == b"event_id_conflict"
    assert letter.envelope.key == b"SHP-2"


async def test_forged_replay_header_on_the_main_topic_reopens_nothing() -> None:
    """A main-topic record claiming to be a replay (``replay.from``) of an event whose SMS was
    dead-lettered is a plain redelivery: the SMS stays dead-lettered, nothing is sent."""
    r = rig()
    r.sms.failures.append(PermanentDeliveryError("SMS provider refused with 400"))
    await r.main(event("e1", "shipped"))
    forged = ((headers.REPLAY_FROM, b"0:1"), (headers.REPLAY_REASON, b"permanent/sms"))
    assert await r.main(event("e1", "shipped"), headers=forged) == Outcome("skipped", "duplicate")
    assert len(r.sms.sent) == 0
    assert (await r.store.load("e1", "SHP-1")).event.done["sms"] == "dead_lettered"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "forged",
    [
        (
            (headers.ORIGINAL_PARTITION, b"x"),
            (headers.ORIGINAL_OFFSET, b"1"),
            (headers.ORIGINAL_TOPIC, b"t"),
        ),
        (
            (headers.ORIGINAL_PARTITION, b"0"),
            (headers.ORIGINAL_OFFSET, b"9" * 5000),
            (headers.ORIGINAL_TOPIC, b"t"),
        ),
        ((headers.RETRY_CHANNEL, b"sms["), (headers.RETRY_DUE, b"nan"), (headers.ERROR_TYPE, b"x")),
    ],
)
async def test_forged_worker_headers_on_the_main_topic_are_dropped(
    forged: tuple[tuple[str, bytes], ...],
) -> None:
    """Producers' copies of the worker's own headers neither crash the record nor reach the
    dead letter: an invalid record is dead-lettered naming itself as its origin."""
    r = rig()
    outcome = await r.main(b"{not json", headers=(*forged, ("trace", b"abc")))
    assert (outcome.kind, outcome.reason) == ("dead_lettered", "not_json")
    (letter,) = r.side.on(f"{TOPIC}.dlq")
    assert letter.header(headers.ORIGINAL_TOPIC) == TOPIC.encode()
    assert letter.header(headers.ORIGINAL_OFFSET) == b"1"
    assert letter.header("trace") == b"abc"
    assert letter.header(headers.RETRY_CHANNEL) is None
    assert [k for k, _ in letter.headers].count(headers.ERROR_TYPE) == 1


async def test_a_retry_record_with_an_unknown_channel_is_dead_lettered() -> None:
    """A retry record whose channel is not one the worker has (``sms[`` broke a JSON path in
    the SQLite store) is dead-lettered as bad_retry_record and touches no store entry."""
    r = rig()
    fields = RetryState("sms", 1, 0.0, 0.0, ()).headers()
    fields = [(k, b"sms[" if k == headers.RETRY_CHANNEL else v) for k, v in fields]
    key, value = record(event("e1", "shipped"))
    outcome = await r.pipeline.handle(Envelope(RETRY_TOPIC, 0, 1, key, value, tuple(fields)))
    assert (outcome.kind, outcome.reason) == ("dead_lettered", "bad_retry_record")
    assert "unknown channel" in outcome.error
    assert await r.store.load("e1", "SHP-1") == await MemoryStore(1).load("e1", "SHP-1")


async def test_a_reply_that_is_not_utf8_is_retried_with_clean_headers() -> None:
    """A relay's 451 in Latin-1 (decoded with lone surrogates) schedules the retry: its
    headers encode, the history reads back, and the retry sends the email once."""
    r = rig()
    reply = b"451 4.2.0 Empf\xe4nger \x1b[31mvoll".decode("utf-8", "surrogateescape")
    r.email.failures += [TransientDeliveryError(f"SMTP {reply}")] * 2
    outcome = await r.main(event("e1", "order_confirmed"))
    assert outcome == Outcome("retrying", deferred=("email",))
    (scheduled,) = r.side.on(RETRY_TOPIC)
    message = scheduled.header(headers.ERROR_MESSAGE)
    assert message is not None and b"\x1b" not in message
    assert "Empf" in parse(dict(scheduled.headers)).history[0][1]
    assert await r.again(scheduled) == Outcome("notified", sent=("email",))
    assert len(r.email.sent) == 1


async def test_an_unforeseen_error_in_one_channel_ends_that_channel_only() -> None:
    """A sender raising what no error class foresaw (RecursionError from a provider's body)
    dead-letters that channel as internal_error; the other channel is sent."""
    r = rig()
    r.sms.failures.append(RecursionError("maximum recursion depth exceeded"))
    with capture_logs() as logs:
        outcome = await r.main(event("e1", "shipped"))
    assert outcome == Outcome("notified", sent=("email",), failed=("sms",))
    (letter,) = r.side.on(f"{TOPIC}.dlq")
    assert letter.header(headers.ERROR_TYPE) == b"internal_error"
    assert letter.header(headers.ERROR_CHANNEL) == b"sms"
    assert (
        letter.header(headers.ERROR_MESSAGE) == b"RecursionError: maximum recursion depth exceeded"
    )
    assert [e["event"] for e in logs if e.get("outcome")] == ["event_notified"]


async def test_an_unforeseen_error_before_the_channels_ends_the_record_only() -> None:
    """Anything a record raises outside a channel is dead-lettered as internal_error with its
    type and masked message, logged as the record's one outcome, and the next record runs."""
    r = rig()

    def broken(locale: str | None) -> str:
        raise KeyError("lan.nguyen@example.com")

    r.pipeline._locale_for = broken  # type: ignore[method-assign]
    with capture_logs() as logs:
        outcome = await r.main(event("e1", "shipped"))
    assert (outcome.kind, outcome.reason) == ("dead_lettered", "internal_error")
    (letter,) = r.side.on(f"{TOPIC}.dlq")
    message = letter.header(headers.ERROR_MESSAGE) or b""
    assert message.startswith(b"KeyError: ") and b"***@example.com" in message
    assert b"lan.nguyen" not in message
    assert [e["event"] for e in logs if e.get("outcome")] == ["event_dead_lettered"]
    r.pipeline._locale_for = lambda locale: "en"  # type: ignore[method-assign]
    assert (await r.main(event("e2", "shipped", shipment_id="SHP-2"))).kind == "notified"


async def test_a_store_outage_is_waited_out_without_a_second_send() -> None:
    """The store failing before the event is read, and again when the sent email's outcome is
    recorded, delays the record; the email is sent once and recorded as sent."""
    store = FlakyStore({"load": 3, "mark_done": 4})
    r = rig(store)
    with capture_logs() as logs:
        assert await r.main(event("e1", "order_confirmed")) == Outcome("notified", sent=("email",))
    assert len(r.email.sent) == 1
    assert (await store.load("e1", "SHP-1")).event.done == {"email": "sent"}  # type: ignore[union-attr]
    waits = [e for e in logs if e["event"] == "store_unavailable"]
    assert [e["call"] for e in waits] == ["load"] * 3 + ["mark_done"] * 4
    assert await r.main(event("e1", "order_confirmed")) == Outcome("skipped", "duplicate")
    assert len(r.email.sent) == 1


async def test_a_replayed_dead_letter_is_sent_once() -> None:
    """``dlq replay`` puts a dead-lettered SMS on the retry topic with ``replay.from``: it is
    reopened and sent; the same replay again is a duplicate."""
    r = rig()
    r.sms.failures.append(PermanentDeliveryError("SMS provider refused with 400"))
    await r.main(event("e1", "shipped"))
    (letter,) = r.side.on(f"{TOPIC}.dlq")
    state = RetryState("sms", 1, 0.0, 0.0, ())
    kept = [(k, v) for k, v in letter.headers if not headers.is_ours(k)]
    replay_headers = (*kept, *state.headers(), (headers.REPLAY_FROM, b"0:0"))
    replayed = Published(RETRY_TOPIC, letter.envelope, list(replay_headers))
    assert await r.again(replayed) == Outcome("notified", sent=("sms",))
    assert await r.again(replayed) == Outcome("skipped", "duplicate")
    assert len(r.sms.sent) == 1


async def test_a_retry_whose_shipment_moved_on_is_dropped() -> None:
    """A retry that comes due after a newer status of its shipment was accepted is dropped as
    superseded: the customer gets the newer news only."""
    r = rig()
    r.email.failures += [TransientDeliveryError("SMTP 451")] * 2
    await r.main(event("e1", "shipped"))
    await r.main(event("e2", "delivered", minutes=5))
    (scheduled,) = r.side.on(RETRY_TOPIC)
    assert await r.again(scheduled) == Outcome("skipped", "superseded")
    assert [m.status for m in r.email.sent] == ["delivered"]
    snapshot = await r.store.load("e1", "SHP-1")
    assert snapshot.event.done["email"] == "stale"  # type: ignore[union-attr]
    assert snapshot.shipment == ShipmentState("delivered", snapshot.shipment.occurred_at)  # type: ignore[union-attr]


async def test_a_record_the_consumer_could_not_read_is_dead_lettered() -> None:
    """A record handed over with a fault (e.g. a header name that is not UTF-8) is
    dead-lettered as undecodable with the fault as its reason."""
    r = rig()
    outcome = await r.main(b"{}", fault="header name is not UTF-8")
    assert outcome == Outcome("dead_lettered", "undecodable", error="header name is not UTF-8")
    (letter,) = r.side.on(f"{TOPIC}.dlq")
    assert letter.header(headers.ERROR_TYPE) == b"undecodable"


async def test_retries_run_out_into_the_dead_letter_topic_with_their_history() -> None:
    """A notification failing on every attempt is retried through the retry topic up to the
    limit, then dead-lettered once with every failure in its history."""
    r = rig()
    r.email.failures += [TransientDeliveryError(f"SMTP 451 try {i}") for i in range(10)]
    await r.main(event("e1", "order_confirmed"))
    for _ in range(3):
        await r.again(r.side.on(RETRY_TOPIC)[-1])
    (letter,) = r.side.on(f"{TOPIC}.dlq")
    assert letter.header(headers.ERROR_TYPE) == b"retries_exhausted"
    history = json.loads(letter.header(headers.RETRY_HISTORY) or b"")
    assert [h["error"] for h in history] == [f"SMTP 451 try {i}" for i in (1, 2, 3, 4)]
    assert (await r.store.load("e1", "SHP-1")).event.done == {"email": ChannelOutcome.DEAD_LETTERED}  # type: ignore[union-attr]


async def test_a_retry_measures_its_delay_from_the_original_record() -> None:
    """The email fails in process and goes to the retry topic; its retry record (written
    later, with a timestamp of its own) is sent: the end-to-end delay counts from the main
    record's timestamp, which the retry carries in ``original.timestamp``."""
    metrics = Metrics(wall_clock=lambda: 1_000_100.0)
    r = rig(metrics=metrics)
    r.email.failures += [TransientDeliveryError("451 busy")] * 2
    deferred = await r.main(event("e1", "order_confirmed"), timestamp=1_000_000.0)
    assert deferred == Outcome("retrying", deferred=("email",))
    (retry,) = r.side.on(RETRY_TOPIC)
    assert retry.header(headers.ORIGINAL_TIMESTAMP) == b"1000000000"
    later = replace(retry.as_record(9), timestamp=1_000_090.0)
    assert await r.pipeline.handle(later) == Outcome("notified", sent=("email",))
    lines = generate_latest(metrics.registry).decode().splitlines()
    assert 'shipment_notifier_end_to_end_delay_seconds_sum{channel="email"} 100.0' in lines
    assert 'shipment_notifier_end_to_end_delay_seconds_count{channel="email"} 1.0' in lines
    assert 'shipment_notifier_send_duration_seconds_count{channel="email"} 3.0' in lines


def test_a_forged_or_malformed_original_timestamp_is_not_read() -> None:
    """Only digits are a timestamp; anything else leaves the record's own."""
    base = Envelope(RETRY_TOPIC, 0, 1, b"k", b"v", timestamp=5.0)
    for value in (b"-1", b"1e9", b"", b"12 ", b"\xff"):
        forged = replace(base, headers=((headers.ORIGINAL_TIMESTAMP, value),))
        assert forged.origin_timestamp() == 5.0
    assert replace(base, headers=((headers.ORIGINAL_TIMESTAMP, b"2500"),)).origin_timestamp() == 2.5
