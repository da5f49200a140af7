"""One record from bytes to outcome: decode -> rules -> plan -> deliver each channel.

Every record ends in exactly one ``Outcome`` (notified, retrying, skipped by a named rule, or
dead-lettered with a reason) and one summary log line. The event is accepted in the store
before anything is sent, in the same step that claims its channels; each channel then records
its own outcome (``delivery.Courier``), so a record redelivered after a crash sends exactly the
channels that have none.

Main-topic records go through ``process``; retry-topic records through ``process_retry``,
which first drops a notification whose shipment has moved on (never send a status late).
No Kafka here: the consumer hands in ``Envelope``s.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any

from worker import retry
from worker.dedup import DedupStore, ShipmentState
from worker.dedup.rules import skip_reason
from worker.dedup.store import EventRecord
from worker.delivery import DEAD_LETTERED, DEFERRED, SENT, STALE, Courier, DeadLetters
from worker.envelope import REPLAYED_FROM, Envelope
from worker.events import Event, InvalidEvent, decode
from worker.logs import bind, get_logger
from worker.policy import Delivery, plan

log = get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Outcome:
    kind: str  # notified | retrying | skipped | dead_lettered
    reason: str = ""  # the skip rule or the dead-letter error type
    sent: tuple[str, ...] = ()
    deferred: tuple[str, ...] = ()
    failed: tuple[str, ...] = ()


class Pipeline:
    def __init__(
        self,
        *,
        store: DedupStore,
        courier: Courier,
        policy: Mapping[str, tuple[str, ...]],
        channels: frozenset[str],
        dead_letters: DeadLetters,
        locale_for: Callable[[str | None], str],
    ) -> None:
        self._store = store
        self._courier = courier
        self._policy = policy
        self._channels = channels
        self._dead_letters = dead_letters
        self._locale_for = locale_for

    async def process(self, envelope: Envelope) -> Outcome:
        """A main-topic record (or a replayed dead letter)."""
        event = await self._decoded(envelope)
        if isinstance(event, Outcome):
            return event
        outcome = await self._handle(event, envelope)
        _log_outcome(outcome)
        return outcome

    async def process_retry(self, envelope: Envelope) -> Outcome:
        """A retry-topic record: the next attempt of one channel of an accepted event."""
        try:
            state = retry.parse(envelope.header_map())
        except ValueError as exc:
            return await self._reject(envelope, "bad_retry_record", str(exc))
        event = await self._decoded(envelope)
        if isinstance(event, Outcome):
            return event
        bind(channel=state.channel, attempt=state.attempt)
        outcome = await self._retry(event, envelope, state)
        _log_outcome(outcome)
        return outcome

    async def _decoded(self, envelope: Envelope) -> Event | Outcome:
        bind(
            topic=envelope.topic,
            partition=envelope.partition,
            offset=envelope.offset,
            key=envelope.key_text,
        )
        decoded = decode(envelope.value)
        if isinstance(decoded, InvalidEvent):
            return await self._reject(envelope, decoded.kind, decoded.message)
        bind(
            event_id=decoded.event_id,
            shipment_id=decoded.shipment.id,
            status=decoded.status,
            locale=self._locale_for(decoded.customer.locale),
        )
        return decoded

    async def _reject(self, envelope: Envelope, kind: str, message: str) -> Outcome:
        await self._dead_letters.publish(envelope, kind, message)
        log.warning("event_dead_lettered", outcome="dead_lettered", reason=kind, error=message)
        return Outcome("dead_lettered", kind)

    async def _handle(self, event: Event, envelope: Envelope) -> Outcome:
        snapshot = await self._store.load(event.event_id, event.shipment.id)
        if snapshot.event is not None:
            return await self._resume(event, envelope, snapshot.event, snapshot.shipment)
        rule = skip_reason(event, snapshot.shipment)
        if rule is not None:
            return Outcome("skipped", rule)
        deliveries = self._plan(event, log_skips=True)
        state = ShipmentState(event.status, event.occurred_at.timestamp())
        claimed = await self._store.accept(
            event.event_id,
            tuple(d.channel for d in deliveries),
            event.shipment.id,
            state,
            self._courier.owner,
            self._courier.lease,
        )
        if not deliveries:
            return Outcome("skipped", "no_channel")
        return await self._deliver(event, envelope, deliveries, claimed)

    async def _resume(
        self,
        event: Event,
        envelope: Envelope,
        record: EventRecord,
        shipment: ShipmentState | None,
    ) -> Outcome:
        """A redelivery: send what has no outcome yet (and, for a replayed dead letter, what
        was dead-lettered), unless the shipment has moved on since."""
        replayed = [c for c, o in record.done.items() if o == DEAD_LETTERED]
        if envelope.header(REPLAYED_FROM) is not None:
            for channel in replayed:
                await self._store.reopen(event.event_id, channel)
            pending = tuple(c for c in record.channels if c in replayed or c not in record.done)
        else:
            pending = record.pending
        if not pending:
            return Outcome("skipped", "duplicate")
        if _superseded(event, shipment):
            await self._drop_stale(event.event_id, pending)
            return Outcome("skipped", "superseded")
        log.info("event_resumed", channels=list(pending))
        deliveries = [d for d in self._plan(event, log_skips=False) if d.channel in pending]
        unplanned = tuple(c for c in pending if c not in {d.channel for d in deliveries})
        for channel in unplanned:  # the policy or the configured channels changed since
            await self._store.mark_done(event.event_id, channel, STALE)
            log.info("notification_skipped", channel=channel, reason="no_longer_planned")
        if not deliveries:
            return Outcome("skipped", "no_channel")
        return await self._deliver(event, envelope, deliveries)

    async def _retry(self, event: Event, envelope: Envelope, state: retry.RetryState) -> Outcome:
        snapshot = await self._store.load(event.event_id, event.shipment.id)
        done = snapshot.event.done.get(state.channel) if snapshot.event else None
        if done is not None and done != DEFERRED:
            return Outcome("skipped", "duplicate")
        if _superseded(event, snapshot.shipment):
            await self._drop_stale(event.event_id, (state.channel,))
            return Outcome("skipped", "superseded")
        deliveries = [d for d in self._plan(event, log_skips=False) if d.channel == state.channel]
        if not deliveries:  # the contact or the policy changed since the first attempt
            await self._store.mark_done(event.event_id, state.channel, STALE)
            return Outcome("skipped", "no_channel")
        result = await self._courier.deliver(event, envelope, deliveries[0], state)
        return _summarize([(state.channel, result)])

    async def _drop_stale(self, event_id: str, channels: tuple[str, ...]) -> None:
        for channel in channels:
            await self._store.mark_done(event_id, channel, STALE)
            log.info("notification_stale_dropped", channel=channel)

    def _plan(self, event: Event, *, log_skips: bool) -> list[Delivery]:
        decided = plan(event, self._policy, self._channels)
        if log_skips:
            for skip in decided.skips:
                log.info("notification_skipped", channel=skip.channel, reason=skip.reason)
        return list(decided.deliveries)

    async def _deliver(
        self,
        event: Event,
        envelope: Envelope,
        deliveries: list[Delivery],
        claimed: tuple[str, ...] = (),
    ) -> Outcome:
        """Each channel concurrently; ``claimed``: the channels whose claim ``accept`` took."""
        sends = [
            self._courier.deliver(event, envelope, d, claimed=d.channel in claimed)
            for d in deliveries
        ]
        results = await _concurrently(sends)
        return _summarize([(d.channel, r) for d, r in zip(deliveries, results, strict=True)])


async def _concurrently(sends: list[Coroutine[Any, Any, str]]) -> list[str]:
    """The results of ``sends``, run at the same time: the first in this task and each other
    one in a task of its own (``gather`` would create a task for every one). If this task is
    cancelled or the first raises, the others are cancelled and waited for."""
    others = [asyncio.create_task(send) for send in sends[1:]]
    try:
        first = await sends[0]
    except BaseException:
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)
        raise
    return [first, *[await task for task in others]]


def _superseded(event: Event, shipment: ShipmentState | None) -> bool:
    """A newer event of the shipment was accepted after this one: its news is outdated."""
    if shipment is None:
        return False
    at = event.occurred_at.timestamp()
    return shipment.occurred_at > at or (
        shipment.occurred_at == at and shipment.status != event.status
    )


def _summarize(results: list[tuple[str, str]]) -> Outcome:
    sent = tuple(c for c, r in results if r == SENT)
    deferred = tuple(c for c, r in results if r == DEFERRED)
    failed = tuple(c for c, r in results if r == DEAD_LETTERED)
    stale = tuple(c for c, r in results if r == STALE)
    if sent:
        return Outcome("notified", sent=sent, deferred=deferred, failed=failed)
    if deferred:
        return Outcome("retrying", deferred=deferred, failed=failed)
    if failed:
        return Outcome("dead_lettered", "delivery_failed", failed=failed)
    return Outcome("skipped", "superseded" if stale else "duplicate")


def _log_outcome(outcome: Outcome) -> None:
    channels = {
        "sent": list(outcome.sent),
        "deferred": list(outcome.deferred),
        "failed": list(outcome.failed),
    }
    if outcome.kind == "skipped":
        log.info(f"event_{outcome.reason}_skipped", outcome="skipped", rule=outcome.reason)
    elif outcome.kind == "notified":
        log.info("event_notified", outcome="notified", **channels)
    elif outcome.kind == "retrying":
        log.warning("event_retrying", outcome="retrying", **channels)
    else:
        log.warning(
            "event_dead_lettered", outcome="dead_lettered", reason=outcome.reason, **channels
        )
