"""The notification log's pure parts and its place in the record path, without a broker:
recipients masked, ids stable across repeats, the partition of a key as Kafka's producers
compute it, notes published only after the store has the outcome (the same behaviour through a
real broker is in test_notification_log_kafka.py)."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiokafka.partitioner import murmur2
from prometheus_client import generate_latest

from tests.factories import event, record
from tests.test_pipeline import TEMPLATES, FakeSender, FakeSideTopics
from tests.test_preview_cli import worker_cli
from tests.test_quiet import NIGHT, UTC_ZONE, HoldingSideTopics
from tests.test_settings import SetEnv, env  # noqa: F401 (the fixture)
from worker import headers
from worker.channels import TransientDeliveryError
from worker.channels.sms import provider_id
from worker.dedup.memory import MemoryStore
from worker.dedup.store import ChannelOutcome, Preference
from worker.delivery import Courier, InProcessRetry
from worker.envelope import Envelope
from worker.events import Event, Shop, decode
from worker.history import Query, _Matcher, partition_for, timeline
from worker.metrics import Metrics
from worker.notification_log import LogRecord, Noted, NotificationLog, record_id, shown_recipient
from worker.pipeline import Pipeline
from worker.policy import DEFAULT_POLICY
from worker.quiet import QuietHours
from worker.render import Renderer
from worker.retry import Backoff, RetryLimits
from worker.settings import ConfigError, load_settings

ROOT = Path(__file__).resolve().parent.parent
TOPIC, RETRY_TOPIC = "events", "events.retry"


def sample(event_id: str = "e1", status: str = "shipped", **fields: Any) -> Event:
    decoded = decode(record(event(event_id, status, **fields))[1])
    assert isinstance(decoded, Event)
    return decoded


def noted(stored: ChannelOutcome | None, *, attempt: int | None = None, **what: Any) -> Noted:
    retry = [] if attempt is None else [(headers.RETRY_ATTEMPT, str(attempt - 1).encode())]
    envelope = Envelope(TOPIC, 0, 7, b"SHP-1", b"{}", tuple(retry), timestamp=1_700_000_000.5)
    return Noted(sample(), envelope, what.pop("channel", "email"), stored, **what)


def test_recipients_are_masked_unless_full_is_chosen() -> None:
    """Masked by default (one letter of the local part, the last three digits), as given with
    ``full``, absent with ``none``; a channel without an address has none either way."""
    assert shown_recipient("email", "lan.nguyen@example.com", "masked") == "l***@example.com"
    assert shown_recipient("sms", "+84901234567", "masked") == "+84******567"
    assert shown_recipient("email", "lan.nguyen@example.com", "full") == "lan.nguyen@example.com"
    assert shown_recipient("sms", "+84901234567", "none") is None
    assert shown_recipient("sms", None, "full") is None


def test_a_record_says_what_happened_with_contacts_masked_in_an_error() -> None:
    """A deferral's record carries the ids of the event, the reason and the error's text with
    the address the server quoted masked, the attempt, and the three times."""
    log = NotificationLog(None, "t", recipients="masked", worker_id="w1", clock=lambda: 1.8e9)  # type: ignore[arg-type]
    error = "recipient refused: 451 <an@example.com> mailbox busy"
    deferred = noted(
        ChannelOutcome.DEFERRED,
        attempt=3,
        reason="transient",
        detail=error,
        address="an@example.com",
    )
    built = log.record(deferred)
    assert (built.event_id, built.shipment_id, built.order_id) == ("e1", "SHP-1", "ORD-5521")
    assert (built.status, built.channel, built.outcome, built.reason) == (
        "shipped", "email", "deferred", "transient"
    )  # fmt: skip
    assert built.detail == "recipient refused: 451 <a***@example.com> mailbox busy"
    assert (built.recipient, built.attempt, built.worker_id) == ("a***@example.com", 3, "w1")
    assert built.produced_at == datetime.fromtimestamp(1_700_000_000.5, UTC)
    assert built.outcome_at == datetime.fromtimestamp(1.8e9, UTC)
    assert built.occurred_at == sample().occurred_at
    # the fast path (orjson) publishes what the model would: a reader reads the same record
    published = log.value(deferred)
    assert LogRecord.model_validate_json(published) == built
    assert published == built.model_dump_json().encode()


def test_ids_are_stable_per_event_channel_and_outcome_and_per_attempt_of_a_deferral() -> None:
    """A repeat computes the id again from what the store keeps: the same id whatever else it
    knows (a Message-ID, an attempt of a final outcome, why a channel went stale); another
    channel, outcome or event, or another attempt's deferral, has another."""
    sent = record_id(noted(ChannelOutcome.SENT, message_id="<x@y>"))
    assert record_id(noted(ChannelOutcome.SENT, attempt=3)) == sent
    stale = record_id(noted(ChannelOutcome.STALE, reason="superseded"))
    assert record_id(noted(ChannelOutcome.STALE)) == stale
    deferred = {record_id(noted(ChannelOutcome.DEFERRED, attempt=a)) for a in (1, 2, 2)}
    others = {
        sent,
        stale,
        record_id(noted(ChannelOutcome.SENT, channel="sms")),
        record_id(noted(None, reason="no_contact")),
        record_id(noted(ChannelOutcome.DEAD_LETTERED)),
        *deferred,
    }
    assert len(deferred) == 2 and len(others) == 7


def test_stale_is_superseded_unless_the_channel_is_no_longer_planned() -> None:
    """The store's one word ``stale`` is two outcomes in the log; a repeat that does not know
    why says superseded."""
    assert noted(ChannelOutcome.STALE, reason="superseded").outcome == "superseded"
    assert noted(ChannelOutcome.STALE).outcome == "superseded"
    assert noted(ChannelOutcome.STALE, reason="no_longer_planned").outcome == "skipped"
    assert noted(None, reason="opted_out").outcome == "skipped"


# murmur2 of Kafka's Java client (UtilsTest.testMurmur2): the partitioner must agree with it
MURMUR2 = {
    b"21": -973932308,
    b"foobar": -790332482,
    b"a-little-bit-long-string": -985981536,
    b"a-little-bit-longer-string": -1486304829,
    b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    b"abc": 479470107,
}


@pytest.mark.parametrize(("key", "hashed"), MURMUR2.items())
def test_the_partition_of_a_key_follows_the_java_clients_murmur2(key: bytes, hashed: int) -> None:
    """aiokafka's murmur2 gives the Java client's values (as unsigned 32 bits, the Java
    client's are signed), and ``partition_for`` takes the positive part modulo the partition
    count, as both clients' default partitioners do."""
    assert murmur2(key) == hashed & 0xFFFFFFFF
    for count in (1, 3, 12, 50):
        assert partition_for(key.decode(), list(range(count))) == (hashed & 0x7FFFFFFF) % count


@pytest.mark.parametrize("order", ["ORD-5521", 'Đơn "hàng" \\ 주문', "ORD-🚚-x"])
def test_the_order_search_finds_the_order_id_as_the_writer_wrote_it(order: str) -> None:
    """The byte search ``--order`` runs before parsing matches the JSON the writer produces,
    for non-ASCII ids and ids with quotes and backslashes alike."""
    log = NotificationLog(None, "t", recipients="masked", worker_id="w")  # type: ignore[arg-type]
    envelope = Envelope(TOPIC, 0, 1, b"S", b"{}")
    data = event("e1", "shipped", shipment={"order_id": order})
    decoded = decode(record(data)[1])
    assert isinstance(decoded, Event)
    value = log.value(Noted(decoded, envelope, "email", ChannelOutcome.SENT))
    assert _Matcher(Query(order=order)).wanted(b"S", value)
    assert not _Matcher(Query(order=order + "1")).wanted(b"S", value)


def test_provider_ids_are_read_from_the_answer_only_when_safe_to_show() -> None:
    """Twilio's ``sid``, a gateway's ``id`` or ``message_id``; nothing from an answer that is
    not a small JSON object or whose id has spaces or controls."""
    assert provider_id(b'{"sid": "SM0123456789abcdef", "status": "queued"}') == "SM0123456789abcdef"
    assert provider_id(b'{"message_id": "3f2a-77"}') == "3f2a-77"
    assert provider_id(b'{"id": "a b\\u001b[2J"}') is None
    assert provider_id(b"[" * 50_000) is None
    assert provider_id(b"accepted") is None
    assert provider_id(b'{"id": 42}') is None


def test_the_timeline_prints_hostile_text_inert() -> None:
    """A record written by someone else, with escape sequences and a line break in its reason,
    prints as one inert line per record; the recipient as the log holds it (here: full)."""
    log = NotificationLog(None, "t", recipients="full", worker_id="w")  # type: ignore[arg-type]
    built = log.record(noted(None, reason="x\x1b[2J\n+84901234567", address="an@example.com"))
    lines = timeline([built], with_shipment=True)
    assert len(lines) == 2 and all(line.isprintable() for line in lines)
    assert "x\ufffd[2J\ufffd+84901234567" in lines[1] and "an@example.com" in lines[1]


def test_the_committed_schema_is_the_models() -> None:
    """``python -m worker schema --notifications`` prints exactly
    docs/notification.schema.json, so it cannot go stale."""
    result = worker_cli("schema", "--notifications")
    assert (result.returncode, result.stderr) == (0, "")
    committed = (ROOT / "docs" / "notification.schema.json").read_text(encoding="utf-8")
    assert result.stdout == committed
    schema = json.loads(committed)
    assert schema["title"] == "NotificationLogRecord"
    assert schema["properties"]["outcome"]["enum"] == [
        "sent", "deferred", "dead_lettered", "held", "expired", "opted_out", "skipped", "superseded"
    ]  # fmt: skip


def test_the_log_topic_defaults_to_the_topics_and_an_empty_value_turns_it_off(env: SetEnv) -> None:  # noqa: F811
    """Unset: ``<KAFKA_TOPIC>.notifications``; set: as given; empty: off."""
    env(KAFKA_TOPIC="orders")
    assert load_settings().kafka.notification_log_topic == "orders.notifications"
    env(KAFKA_NOTIFICATIONS_TOPIC="support.log")
    assert load_settings().kafka.notification_log_topic == "support.log"
    env(KAFKA_NOTIFICATIONS_TOPIC="")
    assert load_settings().kafka.notification_log_topic is None


def test_bad_log_settings_name_their_variable(env: SetEnv) -> None:  # noqa: F811
    """A topic name Kafka refuses and an unknown recipients choice are configuration errors
    naming the variable."""
    env(KAFKA_NOTIFICATIONS_TOPIC="a b", NOTIFICATIONS_LOG_RECIPIENTS="partial")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    problems = caught.value.problems
    assert [p.split(":")[0] for p in problems] == [
        "KAFKA_NOTIFICATIONS_TOPIC",
        "NOTIFICATIONS_LOG_RECIPIENTS",
    ]


@dataclass
class StoreCheckingNotes:
    """Keeps each note, after checking that the store already holds its outcome."""

    store: MemoryStore
    notes: list[Noted] = field(default_factory=list)

    async def note(self, n: Noted) -> None:
        snapshot = await self.store.load(n.event.event_id, n.event.shipment.id)
        if n.stored is not None:
            assert snapshot.event is not None
            assert snapshot.event.done.get(n.channel) == n.stored.value
        self.notes.append(n)


def pipeline(store: MemoryStore, notes: StoreCheckingNotes, email: FakeSender) -> Pipeline:
    side = FakeSideTopics()
    renderer = Renderer(TEMPLATES, "en", Shop(name="Test Shop"))
    courier = Courier(
        store=store,
        renderer=renderer,
        senders={"email": email},  # no SMS sender: the worker does not have that channel
        dead_letters=side,
        retries=side,
        in_process=InProcessRetry(0, Backoff(0.001, 0.001, random.Random(1))),
        limits=RetryLimits(3, 3600, Backoff(1, 10, random.Random(1))),
        owner="test/1",
        lease=60,
        notes=notes,
    )
    return Pipeline(
        store=store,
        courier=courier,
        policy=DEFAULT_POLICY,
        channels=frozenset({"email"}),
        dead_letters=side,
        locale_for=renderer.locale_for,
        retry_topic=RETRY_TOPIC,
    )


async def test_notes_follow_the_store_and_a_redelivery_repeats_them() -> None:
    """Each outcome is noted once the store has it; a channel the worker has no sender for is
    not noted; a stale event notes its channels as skipped; a redelivery notes the stored
    outcomes again with the same ids and sends nothing."""
    store, email = MemoryStore(3600), FakeSender()
    notes = StoreCheckingNotes(store)
    run = pipeline(store, notes, email)
    main = [Envelope(TOPIC, 0, i, *record(event(f"e{i}", s, minutes=m))) for i, (s, m) in
            enumerate([("out_for_delivery", 10), ("shipped", 0)])]  # fmt: skip
    email.failures.append(TransientDeliveryError("451 busy"))
    await run.handle(main[0])
    await run.handle(main[1])
    await run.handle(main[0])
    got = [(n.event.event_id, n.channel, n.outcome, n.reason) for n in notes.notes]
    assert got == [
        ("e0", "email", "deferred", "transient"),
        ("e1", "email", "skipped", "stale"),
        ("e0", "email", "deferred", None),
    ]
    assert record_id(notes.notes[2]) == record_id(notes.notes[0])
    assert email.sent == []


async def test_held_and_opted_out_channels_are_noted_after_the_store() -> None:
    """Quiet hours and opt-outs end a channel like any outcome: an SMS at night is noted as
    held (quiet_hours), an SMS to a number that opted out as opted_out (with where the
    opt-out came from), each once the store holds it."""
    store, metrics = MemoryStore(86400), Metrics()
    notes = StoreCheckingNotes(store)
    side = HoldingSideTopics()
    renderer = Renderer(TEMPLATES, "en", Shop(name="Test Shop"))
    courier = Courier(
        store=store,
        renderer=renderer,
        senders={"email": FakeSender(), "sms": FakeSender()},
        dead_letters=side,
        retries=side,
        in_process=InProcessRetry(0, Backoff(0.001, 0.001, random.Random(1))),
        limits=RetryLimits(3, 86400, Backoff(1, 10, random.Random(1))),
        owner="test/1",
        lease=60,
        clock=lambda: datetime(2026, 12, 4, 23, 0, tzinfo=UTC).timestamp(),  # 23:00 UTC
        quiet=QuietHours({"sms": NIGHT, "email": None}, UTC_ZONE, (), 86400),
        notes=notes,
        metrics=metrics,
    )
    run = Pipeline(
        store=store,
        courier=courier,
        policy=DEFAULT_POLICY,
        channels=frozenset({"email", "sms"}),
        dead_letters=side,
        locale_for=renderer.locale_for,
        retry_topic=RETRY_TOPIC,
    )
    night = event("e1", "shipped", customer={"timezone": "UTC"})
    await run.handle(Envelope(TOPIC, 0, 1, *record(night)))
    await store.set_preference("phone:+84901234567", "sms", Preference(True, 1.0, "topic"))
    later = event("e2", "delivered", minutes=5, customer={"timezone": "UTC"})
    await run.handle(Envelope(TOPIC, 0, 2, *record(later)))
    got = [(n.event.event_id, n.channel, n.outcome, n.reason, n.detail) for n in notes.notes]
    assert sorted(got) == [
        ("e1", "email", "sent", None, None),
        ("e1", "sms", "held", "quiet_hours", None),
        ("e2", "email", "sent", None, None),
        ("e2", "sms", "opted_out", "opted_out", "topic"),
    ]
    counted = generate_latest(metrics.registry).decode().splitlines()
    assert 'shipment_notifier_notifications_total{channel="sms",outcome="held",reason=""} 1.0' in (
        counted
    )
    assert (
        'shipment_notifier_notifications_total{channel="sms",outcome="skipped",reason="opted_out"}'
        " 1.0"
    ) in counted
