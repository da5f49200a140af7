"""The notification log: one Kafka record per channel outcome, so support and the shop's order
page can answer "was I notified?" without the worker's private store or its logs.

What a record says (``LogRecord``; docs/notifications.md, docs/notification.schema.json):
an event's channel was ``sent`` (with its Message-ID or the SMS provider's id), ``skipped``
(with the plan's or the ordering rules' reason), ``deferred`` to the retry topic,
``superseded`` by a newer status, or ``dead_lettered``; every other ``ChannelOutcome`` is
published under its own word. Records are keyed by shipment id, so one shipment's history sits
in one partition, in the order it happened.

When: after the outcome is in the store, before the record's offset is committed. A crash in
between redelivers the record; the courier then notes again what the store kept
(``Courier.recall``), under the same ``id``: at-least-once, and ``id`` is what consumers drop
repeats by. It is stable per (event, channel, outcome), and per attempt for the outcomes
that recur (``CLAIMABLE``: a deferral), so a repeat never looks like a new fact.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import orjson
from aiokafka import AIOKafkaProducer
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from worker import headers
from worker.dedup.store import CLAIMABLE, ChannelOutcome
from worker.envelope import Envelope
from worker.events import Channel, Event, Status
from worker.logs import mask_email, mask_phone, terminal_text
from worker.settings import Settings
from worker.sidetopics import send_until_durable

SCHEMA_VERSION = 1
SKIPPED = "skipped"  # not sent, and never will be: the plan or an ordering rule left it out
SUPERSEDED = "superseded"  # dropped unsent: a newer status of the shipment came first
NO_LONGER_PLANNED = "no_longer_planned"
# the log's words: the store's, with "stale" told apart by why, and the plan's skips
OUTCOMES: tuple[str, ...] = (
    *(o.value for o in ChannelOutcome if o is not ChannelOutcome.STALE),
    SKIPPED,
    SUPERSEDED,
)
MAX_DETAIL = 300  # characters of an error's text

Recipients = Literal["masked", "full", "none"]


class LogRecord(BaseModel):
    """One channel outcome of one shipment-status event, as the notification log holds it."""

    model_config = ConfigDict(title="NotificationLogRecord", extra="ignore", frozen=True)

    schema_version: int = Field(
        SCHEMA_VERSION, description="Changes only when a field changes meaning or goes away."
    )
    id: str = Field(
        description="The same in every repeat of one outcome (per event, channel and outcome; "
        "for a deferral also per attempt): drop repeats by it."
    )
    event_id: str
    shipment_id: str = Field(description="Also the record's key.")
    order_id: str
    status: Status
    channel: Channel
    outcome: str = Field(json_schema_extra={"enum": list(OUTCOMES)})
    reason: str | None = Field(
        None,
        description="skipped: opted_out, no_contact, invalid_email, invalid_phone, "
        "not_configured, no_longer_planned, stale, after_terminal or repeated_status; "
        "superseded: superseded; deferred: transient; dead_lettered: the dead letter's "
        "error.type (permanent, retries_exhausted, internal_error).",
    )
    detail: str | None = Field(
        None, description="A failure's text, contacts in it masked, at most 300 characters."
    )
    message_id: str | None = Field(
        None, description="sent: the email's Message-ID, or the SMS provider's message id."
    )
    recipient: str | None = Field(
        None,
        description="The address or E.164 number, masked unless "
        "NOTIFICATIONS_LOG_RECIPIENTS=full; null with =none, and where none was chosen.",
    )
    locale: str | None = Field(
        None, description="The customer's locale tag (customer.locale): the templates' language."
    )
    attempt: int = Field(
        ge=1, description="1: the event's own record; n + 1: the retry topic's attempt n."
    )
    occurred_at: AwareDatetime = Field(description="When the event happened (its occurred_at).")
    produced_at: AwareDatetime | None = Field(
        description="The Kafka timestamp of the record handled (the event's, or its retry's)."
    )
    outcome_at: AwareDatetime = Field(description="When the outcome was recorded.")
    worker_id: str


@dataclass(frozen=True, slots=True)
class Noted:
    """What the courier knows of one channel's outcome when it records it. ``stored``: the
    store's word, None for a skip (never stored: a redelivery plans it again)."""

    event: Event
    envelope: Envelope
    channel: str
    stored: ChannelOutcome | None
    reason: str | None = None
    detail: str | None = None
    address: str | None = None
    message_id: str | None = None

    @property
    def outcome(self) -> str:
        if self.stored is None:
            return SKIPPED
        if self.stored is ChannelOutcome.STALE:
            return SKIPPED if self.reason == NO_LONGER_PLANNED else SUPERSEDED
        return self.stored.value

    @property
    def attempt(self) -> int:
        """1 on the main topic (the worker's own headers are stripped there), else one more
        than the retry record's attempt (checked by ``retry.parse`` before any outcome)."""
        raw = self.envelope.header(headers.RETRY_ATTEMPT)
        return 1 + int(raw) if raw is not None and raw.isdigit() and len(raw) <= 4 else 1


def record_id(noted: Noted) -> str:
    """Stable per (event, channel, stored outcome), and per attempt for the outcomes that
    recur: what a repeat after a crash computes again from the store."""
    kind = noted.stored.value if noted.stored is not None else SKIPPED
    basis = [noted.event.event_id, noted.channel, kind]
    if noted.stored in CLAIMABLE:
        basis.append(str(noted.attempt))
    return hashlib.sha256("\x00".join(basis).encode()).hexdigest()[:32]


def shown_recipient(channel: str, address: str | None, recipients: Recipients) -> str | None:
    """The recipient as ``NOTIFICATIONS_LOG_RECIPIENTS`` lets the log hold it."""
    if address is None or recipients == "none":
        return None
    if recipients == "full":
        return address
    return str(mask_email(address) if channel == "email" else mask_phone(address))


def _utc(posix: float) -> datetime:
    return datetime.fromtimestamp(posix, UTC)


class NotificationLog:
    """Publishes each noted outcome to the log topic and returns once the broker has it."""

    def __init__(
        self,
        producer: AIOKafkaProducer,
        topic: str,
        *,
        recipients: Recipients,
        worker_id: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._producer = producer
        self.topic = topic
        self._recipients = recipients
        self._worker_id = worker_id
        self._clock = clock

    def fields(self, noted: Noted) -> dict[str, Any]:
        """The record's fields, from values the worker has already checked."""
        event, envelope = noted.event, noted.envelope
        detail = terminal_text(noted.detail, MAX_DETAIL) if noted.detail else None
        return {
            "schema_version": SCHEMA_VERSION,
            "id": record_id(noted),
            "event_id": event.event_id,
            "shipment_id": event.shipment.id,
            "order_id": event.shipment.order_id,
            "status": event.status,
            "channel": noted.channel,
            "outcome": noted.outcome,
            "reason": noted.reason,
            "detail": detail,
            "message_id": noted.message_id,
            "recipient": shown_recipient(noted.channel, noted.address, self._recipients),
            "locale": event.customer.locale,
            "attempt": noted.attempt,
            "occurred_at": event.occurred_at,
            "produced_at": _utc(envelope.timestamp) if envelope.timestamp is not None else None,
            "outcome_at": _utc(self._clock()),
            "worker_id": self._worker_id,
        }

    def record(self, noted: Noted) -> LogRecord:
        """The record as the model (the slow twin of ``value``, which tests hold to it)."""
        return LogRecord.model_validate(self.fields(noted))

    def value(self, noted: Noted) -> bytes:
        """The record's JSON as published: the fields serialized by orjson, a third of what
        building and serializing the model cost (``fields`` holds only str, int, None and
        datetimes; a UTC time ends in ``Z`` as the model writes it)."""
        return orjson.dumps(self.fields(noted), option=orjson.OPT_UTC_Z)

    async def note(self, noted: Noted) -> None:
        value = self.value(noted)
        await send_until_durable(
            self._producer, self.topic, value, noted.event.shipment.id.encode(), []
        )


class NoLog:
    """The notification log turned off (``KAFKA_NOTIFICATIONS_TOPIC=``)."""

    async def note(self, noted: Noted) -> None:
        return None


def build_notes(settings: Settings, producer: AIOKafkaProducer) -> NotificationLog | NoLog:
    """The notification log on the side topics' producer, or none when it is turned off."""
    topic = settings.kafka.notification_log_topic
    if topic is None:
        return NoLog()
    recipients, worker_id = settings.app.notifications_log_recipients, settings.app.worker_id
    return NotificationLog(producer, topic, recipients=recipients, worker_id=worker_id)
