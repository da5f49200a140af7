"""One record from bytes to outcome: route it, decode it, apply the rules, decide its channels,
and hand them to the courier (``delivery.Courier``), which owns everything done per channel.

    handle(envelope)                      the last-resort boundary: one record, one outcome
      ├── a record the consumer could not read        -> dead-lettered (``undecodable``)
      ├── main topic:  decode -> load -> conflict? -> redelivery? -> rules -> plan
      │                  -> Courier.first / Courier.resume
      └── retry topic: retry state (or a quiet-hours hold) -> decode -> load -> replay? /
                         done? / superseded? -> plan (that channel) -> Courier.again / replay

Every record ends in exactly one ``Outcome`` (notified, retrying, held for quiet hours, skipped
by a named rule, or dead-lettered with a reason) and one summary log line. Anything a record
raises that nothing foresaw ends that record, not the worker: it is dead-lettered as
``internal_error`` with the exception's type and masked message. Main-topic records are the
producers': the worker's own headers on them are dropped unread, so only the retry topic
(written by the worker and by ``dlq replay``) can say that a record is a retry or a replay. No
Kafka here: the consumer hands in ``Envelope``s.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from worker import headers, logs, retry
from worker.cloudevents import Decoder
from worker.dedup import DedupStore, ShipmentState
from worker.dedup.rules import skip_reason
from worker.dedup.store import CLAIMABLE, ChannelOutcome
from worker.delivery import Courier, DeadLetters, Notification, describe_exception
from worker.envelope import Envelope
from worker.events import Event, InvalidEvent
from worker.logs import bind, get_logger
from worker.metrics import Metrics
from worker.policy import Delivery, Skip, plan

log = get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Outcome:
    kind: str  # notified | retrying | held | skipped | dead_lettered
    reason: str = ""  # the skip rule or the dead-letter error type
    sent: tuple[str, ...] = ()
    deferred: tuple[str, ...] = ()
    failed: tuple[str, ...] = ()
    held: tuple[str, ...] = ()  # waiting for the recipient's quiet hours to end
    error: str = ""  # why a record was dead-lettered


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
        retry_topic: str,
        metrics: Metrics | None = None,
        decode: Decoder | None = None,
    ) -> None:
        self._decode = decode or Decoder()  # plain JSON and CloudEvents of the default types
        self._store = store
        self._courier = courier
        self._policy = policy
        self._channels = channels
        self._dead_letters = dead_letters
        self._locale_for = locale_for
        self.retry_topic = retry_topic
        self._metrics = metrics or Metrics()

    async def handle(self, envelope: Envelope) -> Outcome:
        """One record of the main or the retry topic, to its one logged outcome."""
        logs.new_context(
            topic=envelope.topic,
            partition=envelope.partition,
            offset=envelope.offset,
            key=envelope.key_text,
        )
        try:
            outcome = await self._route(envelope)
        except Exception as exc:  # the last resort: one record's bug must not stop the worker
            log.error("record_crashed", exc_info=True)
            outcome = await self._reject(envelope, "internal_error", describe_exception(exc))
        _log_outcome(outcome)
        self._metrics.record_handled(envelope.topic, outcome.kind, outcome.reason)
        return outcome

    def due_at(self, envelope: Envelope) -> float | None:
        """When a record may run: a retry waits for its due time; anything else runs now."""
        if envelope.topic != self.retry_topic:
            return None
        return retry.due_time(dict(envelope.headers))

    async def _route(self, envelope: Envelope) -> Outcome:
        if envelope.fault is not None:
            return await self._reject(envelope, "undecodable", envelope.fault)
        if envelope.topic == self.retry_topic:
            return await self._retry(envelope)
        return await self._main(envelope.from_producer())

    async def _decoded(self, envelope: Envelope) -> Event | Outcome:
        decoded = self._decode(envelope)
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
        return Outcome("dead_lettered", kind, error=message)

    async def _main(self, envelope: Envelope) -> Outcome:
        event = await self._decoded(envelope)
        if isinstance(event, Outcome):
            return event
        snapshot = await self._store.load(event.event_id, event.shipment.id)
        record = snapshot.event
        if record is not None and record.shipment_id not in (None, event.shipment.id):
            return await self._reject(
                envelope,
                "event_id_conflict",
                f"event_id {event.event_id!r} was accepted for another shipment",
            )
        if record is not None:  # a redelivery: send what has no outcome yet
            await self._courier.recall(event, envelope, record.done)
            if not record.pending:
                return Outcome("skipped", "duplicate")
            if _superseded(event, snapshot.shipment):
                await self._courier.drop(event, envelope, record.pending, "superseded")
                return Outcome("skipped", "superseded")
            log.info("event_resumed", channels=list(record.pending))
            deliveries = self._deliveries(event, record.pending)
            return _summarize(await self._courier.resume(event, envelope, record, deliveries))
        rule = skip_reason(event, snapshot.shipment)
        if rule is not None:
            ruled = [Skip(c, rule) for c in self._policy.get(event.status, ())]
            await self._courier.skip(event, envelope, ruled)
            return Outcome("skipped", rule)
        decided = plan(event, self._policy, self._channels)
        for skip in decided.skips:
            log.info("notification_skipped", channel=skip.channel, reason=skip.reason)
            self._metrics.notification(skip.channel, "skipped", skip.reason)
        await self._courier.skip(event, envelope, decided.skips)
        return _summarize(await self._courier.first(event, envelope, decided.deliveries))

    async def _retry(self, envelope: Envelope) -> Outcome:
        """The next attempt of one channel of an accepted event, or a dead-lettered channel put
        back by ``dlq replay`` (``replay.from``, trusted on this topic only)."""
        try:  # a held notification that never failed has no retry state
            channel, state = retry.parse_waiting(dict(envelope.headers))
        except ValueError as exc:
            return await self._reject(envelope, "bad_retry_record", str(exc))
        event = await self._decoded(envelope)
        if isinstance(event, Outcome):
            return event
        bind(channel=channel, attempt=state.attempt if state else 0)
        snapshot = await self._store.load(event.event_id, event.shipment.id)
        done = snapshot.event.done.get(channel) if snapshot.event else None
        replayed = envelope.header(headers.REPLAY_FROM) is not None
        reopen = replayed and done == ChannelOutcome.DEAD_LETTERED
        if done is not None and done not in CLAIMABLE and not reopen:
            await self._courier.recall(event, envelope, {channel: done})
            return Outcome("skipped", "duplicate")
        if _superseded(event, snapshot.shipment):
            await self._courier.drop(event, envelope, (channel,), "superseded")
            return Outcome("skipped", "superseded")
        deliveries = self._deliveries(event, (channel,))
        if not deliveries:  # the contact or the policy changed since the first attempt
            await self._courier.drop(event, envelope, (channel,), "no_longer_planned")
            return Outcome("skipped", "no_channel")
        notification = Notification(event, envelope, deliveries[0], state)
        send = self._courier.replay if reopen else self._courier.again
        return _summarize({channel: await send(notification)})

    def _deliveries(self, event: Event, only: tuple[str, ...]) -> tuple[Delivery, ...]:
        """Which of the ``only`` channels of an accepted event it still gets, and where: the
        addresses are not stored, so a later attempt plans again."""
        decided = plan(event, self._policy, self._channels)
        return tuple(d for d in decided.deliveries if d.channel in only)


def _superseded(event: Event, shipment: ShipmentState | None) -> bool:
    """A newer event of the shipment was accepted after this one: its news is outdated."""
    if shipment is None:
        return False
    at = event.occurred_at.timestamp()
    return shipment.occurred_at > at or (
        shipment.occurred_at == at and shipment.status != event.status
    )


def _summarize(results: dict[str, ChannelOutcome]) -> Outcome:
    """The record's outcome from its channels': notified when one was sent."""
    if not results:
        return Outcome("skipped", "no_channel")
    sent, deferred, failed, stale, held, expired = (
        tuple(c for c, r in results.items() if r is outcome)
        for outcome in (
            ChannelOutcome.SENT,
            ChannelOutcome.DEFERRED,
            ChannelOutcome.DEAD_LETTERED,
            ChannelOutcome.STALE,
            ChannelOutcome.HELD,
            ChannelOutcome.EXPIRED,
        )
    )
    if sent:
        return Outcome("notified", sent=sent, deferred=deferred, failed=failed, held=held)
    if deferred:
        return Outcome("retrying", deferred=deferred, failed=failed, held=held)
    if failed:
        return Outcome("dead_lettered", "delivery_failed", failed=failed, held=held)
    if held:
        return Outcome("held", held=held)
    if ChannelOutcome.OPTED_OUT in results.values():
        return Outcome("skipped", ChannelOutcome.OPTED_OUT.value)
    return Outcome("skipped", "expired" if expired else "superseded" if stale else "duplicate")


def _log_outcome(outcome: Outcome) -> None:
    channels = {
        "sent": list(outcome.sent),
        "deferred": list(outcome.deferred),
        "failed": list(outcome.failed),
        **({"held": list(outcome.held)} if outcome.held else {}),
    }
    if outcome.kind == "skipped":
        log.info(f"event_{outcome.reason}_skipped", outcome="skipped", rule=outcome.reason)
    elif outcome.kind == "notified":
        log.info("event_notified", outcome="notified", **channels)
    elif outcome.kind == "held":
        log.info("event_held", outcome="held", **channels)
    elif outcome.kind == "retrying":
        log.warning("event_retrying", outcome="retrying", **channels)
    elif outcome.error:  # the record itself
        log.warning(
            "event_dead_lettered",
            outcome="dead_lettered",
            reason=outcome.reason,
            error=outcome.error,
        )
    else:
        log.warning(
            "event_dead_lettered", outcome="dead_lettered", reason=outcome.reason, **channels
        )
