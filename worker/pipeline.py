"""One record from bytes to outcome: decode -> rules -> plan -> render -> send -> record.

Every record ends in exactly one ``Outcome`` (notified, skipped by a named rule, or
dead-lettered with a reason) and one summary log line. The dedup store is written before a
notification goes out (the event is accepted) and after (the channel is done), so a record
redelivered after a crash resends exactly the channels that were not done. No Kafka here: the
consumer hands in an ``Envelope`` and publishes dead letters through ``DeadLetters``.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

import structlog

from worker.channels import (
    DeliveryError,
    Outgoing,
    PermanentDeliveryError,
    Sender,
    TransientDeliveryError,
)
from worker.dedup import DedupStore, ShipmentState
from worker.dedup.rules import skip_reason
from worker.events import Event, InvalidEvent, decode
from worker.logs import get_logger, mask_email, mask_phone
from worker.policy import Delivery, plan
from worker.render import Renderer, RenderError

log = get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Envelope:
    """A record as it came from the broker."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()


class DeadLetters(Protocol):
    async def publish(
        self, envelope: Envelope, error_type: str, message: str, channel: str | None = None
    ) -> None:
        """Store the record, unchanged, with the reason; return once it is durable."""


@dataclass(frozen=True, slots=True)
class Outcome:
    kind: str  # notified | skipped | dead_lettered
    reason: str = ""  # the skip rule or the dead-letter error type
    sent: tuple[str, ...] = ()
    failed: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    attempts: int = 3  # retries after the first try
    base_delay: float = 0.5
    max_delay: float = 10.0
    jitter: random.Random = field(default_factory=random.Random)

    def delay(self, attempt: int) -> float:
        """Exponential backoff with full jitter for retry number ``attempt`` (1-based)."""
        ceiling = min(self.max_delay, self.base_delay * 2 ** (attempt - 1))
        return self.jitter.uniform(ceiling / 2, ceiling)


class Pipeline:
    def __init__(
        self,
        *,
        store: DedupStore,
        renderer: Renderer,
        senders: Mapping[str, Sender],
        policy: Mapping[str, tuple[str, ...]],
        dead_letters: DeadLetters,
        retry: RetryPolicy,
    ) -> None:
        self._store = store
        self._renderer = renderer
        self._senders = senders
        self._policy = policy
        self._dead_letters = dead_letters
        self._retry = retry
        self._configured = frozenset(senders)

    async def process(self, envelope: Envelope) -> Outcome:
        structlog.contextvars.bind_contextvars(
            topic=envelope.topic,
            partition=envelope.partition,
            offset=envelope.offset,
            key=envelope.key.decode("utf-8", "replace") if envelope.key is not None else None,
        )
        decoded = decode(envelope.value)
        if isinstance(decoded, InvalidEvent):
            await self._dead_letters.publish(envelope, decoded.kind, decoded.message)
            log.warning(
                "event_dead_lettered",
                outcome="dead_lettered",
                reason=decoded.kind,
                error=decoded.message,
            )
            return Outcome("dead_lettered", decoded.kind)
        structlog.contextvars.bind_contextvars(
            event_id=decoded.event_id,
            shipment_id=decoded.shipment.id,
            status=decoded.status,
            locale=self._renderer.locale_for(decoded.customer.locale),
        )
        outcome = await self._handle(decoded, envelope)
        _log_outcome(outcome)
        return outcome

    async def _handle(self, event: Event, envelope: Envelope) -> Outcome:
        snapshot = await self._store.load(event.event_id, event.shipment.id)
        if snapshot.event is not None:
            pending = snapshot.event.pending
            if not pending:
                return Outcome("skipped", "duplicate")
            log.info("event_resumed", channels=list(pending))
            deliveries = [d for d in self._plan(event, log_skips=False) if d.channel in pending]
            return await self._deliver(event, envelope, deliveries)
        rule = skip_reason(event, snapshot.shipment)
        if rule is not None:
            return Outcome("skipped", rule)
        deliveries = self._plan(event, log_skips=True)
        state = ShipmentState(event.status, event.occurred_at.timestamp())
        await self._store.accept(
            event.event_id, tuple(d.channel for d in deliveries), event.shipment.id, state
        )
        if not deliveries:
            return Outcome("skipped", "no_channel")
        return await self._deliver(event, envelope, deliveries)

    def _plan(self, event: Event, *, log_skips: bool) -> list[Delivery]:
        decided = plan(event, self._policy, self._configured)
        if log_skips:
            for skip in decided.skips:
                log.info("notification_skipped", channel=skip.channel, reason=skip.reason)
        return list(decided.deliveries)

    async def _deliver(
        self, event: Event, envelope: Envelope, deliveries: list[Delivery]
    ) -> Outcome:
        results = await asyncio.gather(*(self._one(event, envelope, d) for d in deliveries))
        sent = tuple(d.channel for d, ok in zip(deliveries, results, strict=True) if ok)
        failed = tuple(d.channel for d, ok in zip(deliveries, results, strict=True) if not ok)
        if sent:
            return Outcome("notified", sent=sent, failed=failed)
        return Outcome("dead_lettered", "delivery_failed", failed=failed)

    async def _one(self, event: Event, envelope: Envelope, delivery: Delivery) -> bool:
        """Send one channel; True when sent, False when dead-lettered. Either way the outcome
        is recorded in the store before returning."""
        channel = delivery.channel
        to = mask_email(delivery.address) if channel == "email" else mask_phone(delivery.address)
        try:
            message = self._compose(event, delivery)
            await self._send_with_retry(message, to)
        except DeliveryError as exc:
            error_type = (
                "transient_exhausted" if isinstance(exc, TransientDeliveryError) else "permanent"
            )
            await self._dead_letters.publish(envelope, error_type, str(exc), channel=channel)
            await self._store.mark_done(event.event_id, channel, "dead_lettered")
            log.error(
                "notification_failed", channel=channel, to=to, error_type=error_type, error=str(exc)
            )
            return False
        await self._store.mark_done(event.event_id, channel, "sent")
        log.info("notification_sent", channel=channel, to=to)
        return True

    def _compose(self, event: Event, delivery: Delivery) -> Outgoing:
        try:
            if delivery.channel == "email":
                email = self._renderer.email(event)
                text, subject, html = email.text, email.subject, email.html
            else:
                text, subject, html = self._renderer.sms(event).text, "", ""
        except RenderError as exc:
            raise PermanentDeliveryError(f"template failed: {exc}") from exc
        return Outgoing(
            channel=delivery.channel,
            event_id=event.event_id,
            status=event.status,
            locale=self._renderer.locale_for(event.customer.locale),
            address=delivery.address,
            recipient_name=event.customer.name,
            text=text,
            subject=subject,
            html=html,
        )

    async def _send_with_retry(self, message: Outgoing, to: str) -> None:
        sender = self._senders[message.channel]
        for attempt in range(self._retry.attempts + 1):
            try:
                await sender.send(message)
                return
            except TransientDeliveryError as exc:
                if attempt == self._retry.attempts:
                    raise
                delay = self._retry.delay(attempt + 1)
                log.warning(
                    "notification_retrying",
                    channel=message.channel,
                    to=to,
                    attempt=attempt + 1,
                    delay=round(delay, 3),
                    error=str(exc),
                )
                await asyncio.sleep(delay)


def _log_outcome(outcome: Outcome) -> None:
    if outcome.kind == "skipped":
        log.info(f"event_{outcome.reason}_skipped", outcome="skipped", rule=outcome.reason)
    elif outcome.kind == "notified":
        log.info(
            "event_notified",
            outcome="notified",
            sent=list(outcome.sent),
            failed=list(outcome.failed),
        )
    else:
        log.warning(
            "event_dead_lettered",
            outcome="dead_lettered",
            reason=outcome.reason,
            failed=list(outcome.failed),
        )
