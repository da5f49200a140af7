"""Notifications, from acceptance to recorded outcome: the one owner of every per-channel
store write (accept with its claims, claim, reopen, mark_done).

    accept the event and claim its channels (or claim one, waiting while another live worker
    holds it) -> render -> send, retrying a transient failure a few times in process ->
    record the channel's ``ChannelOutcome`` and release the claim:
      sent            the provider accepted it
      deferred        still failing: handed to the retry topic with a due time
      dead_lettered   permanent failure, retries exhausted, or a crash while sending it: on
                      the dead-letter topic, where ``dlq replay`` can reopen it
      stale           the shipment moved on, or the channel is no longer planned
      held            the recipient's quiet hours (``quiet.QuietHours``): on the retry topic,
                      due when they end; not a failure, no attempt counted
      expired         quiet hours, and the status's news would be late by their end: dropped
      opted_out       the recipient opted out (checked before every send), or the provider
                      refused because they did (remembered: ``worker/preferences.py``)

Each send waits for its channel's turn (``ratelimit.Throttle``: the configured rate, and any
pause a provider's 429 asked for); a long wait renews the claim, so it never lapses.

The outcome is written to the store only after the retry or dead-letter record is durable, so a
crash in between leads to a resend attempt (guarded by the claim), never to a silent loss.
Each outcome, and each channel the plan skips, is then noted in the notification log
(``notification_log``), all through ``_record``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol
from zoneinfo import ZoneInfo

from worker import headers
from worker.channels import (
    Outgoing,
    PermanentDeliveryError,
    RecipientOptedOut,
    Sender,
    TransientDeliveryError,
)
from worker.dedup import DedupStore, EventRecord, ShipmentState
from worker.dedup.store import ChannelOutcome, Preference
from worker.envelope import Envelope
from worker.events import Event
from worker.logs import get_logger, mask_email, mask_phone, terminal_text
from worker.metrics import Metrics
from worker.notification_log import NoLog, Noted
from worker.policy import Delivery, Skip
from worker.preferences import PROVIDER, address_subject, subjects
from worker.quiet import Quiet, QuietHours
from worker.ratelimit import Throttle
from worker.render import Renderer, RenderError
from worker.retry import Backoff, Held, RetryLimits, RetryState, first_retry, history_text

log = get_logger(__name__)


class DeadLetters(Protocol):
    async def publish(
        self,
        envelope: Envelope,
        error_type: str,
        message: str,
        channel: str | None = None,
        extra: list[tuple[str, bytes]] | None = None,
    ) -> None:
        """Store the record, unchanged, with the reason; return once it is durable."""


class Retries(Protocol):
    async def schedule(self, envelope: Envelope, state: RetryState, error: str) -> None:
        """Put the record on the retry topic for ``state``; return once it is durable."""

    async def hold(self, envelope: Envelope, held: Held) -> None:
        """Put the record on the retry topic until quiet hours end; return once durable."""


class Notes(Protocol):
    async def note(self, noted: Noted) -> None:
        """Publish the outcome to the notification log; return once it is durable."""


@dataclass(frozen=True, slots=True)
class InProcessRetry:
    attempts: int  # retries after the first try, before the retry topic takes over
    backoff: Backoff


@dataclass(frozen=True, slots=True)
class Notification:
    """One channel of one event, to one address, from one record: what the courier delivers.
    ``retry``: the retry record's state when this is a later attempt."""

    event: Event
    envelope: Envelope
    delivery: Delivery
    retry: RetryState | None = None

    @property
    def channel(self) -> str:
        return self.delivery.channel

    @property
    def event_id(self) -> str:
        return self.event.event_id

    @property
    def to(self) -> str:
        """The address, masked for logs."""
        address = self.delivery.address
        return mask_email(address) if self.channel == "email" else mask_phone(address)

    def noted(
        self,
        outcome: ChannelOutcome,
        reason: str | None = None,
        detail: str | None = None,
        message_id: str | None = None,
    ) -> Noted:
        address = self.delivery.address
        return Noted(
            self.event, self.envelope, self.channel, outcome, reason, detail, address, message_id
        )


class Courier:
    def __init__(
        self,
        *,
        store: DedupStore,
        renderer: Renderer,
        senders: Mapping[str, Sender],
        dead_letters: DeadLetters,
        retries: Retries,
        in_process: InProcessRetry,
        limits: RetryLimits,
        owner: str,
        lease: float,
        clock: Callable[[], float] = time.time,
        metrics: Metrics | None = None,
        quiet: QuietHours | None = None,
        throttles: Mapping[str, Throttle] | None = None,
        notes: Notes | None = None,
    ) -> None:
        self._store = store
        self._renderer = renderer
        self._senders = senders
        self._dead_letters = dead_letters
        self._retries = retries
        self._in_process = in_process
        self._limits = limits
        self.owner = owner
        self.lease = lease
        self._clock = clock
        self._metrics = metrics or Metrics()
        self._quiet = quiet
        self._throttles = throttles or {}
        self._notes: Notes = notes or NoLog()

    async def first(
        self, event: Event, envelope: Envelope, deliveries: tuple[Delivery, ...]
    ) -> dict[str, ChannelOutcome]:
        """A new event: accept it (its shipment's state moves on, and every planned channel is
        claimed in the same step) and deliver each channel concurrently."""
        state = ShipmentState(event.status, event.occurred_at.timestamp())
        claimed = await self._store.accept(
            event.event_id,
            tuple(d.channel for d in deliveries),
            event.shipment.id,
            state,
            self.owner,
            self.lease,
        )
        sends = [
            self._deliver(n) if n.channel in claimed else self._claim_and_deliver(n)
            for n in (Notification(event, envelope, d) for d in deliveries)
        ]
        results = await _concurrently(sends)
        return {d.channel: r for d, r in zip(deliveries, results, strict=True)}

    async def resume(
        self,
        event: Event,
        envelope: Envelope,
        record: EventRecord,
        deliveries: tuple[Delivery, ...],
    ) -> dict[str, ChannelOutcome]:
        """A redelivered event: the channels ``record`` has no outcome for. A pending channel
        that is no longer planned (the policy, the contact or the configured channels changed
        since) is dropped as stale."""
        planned = {d.channel for d in deliveries}
        for channel in record.pending:
            if channel not in planned:
                stale = ChannelOutcome.STALE
                await self._record(Noted(event, envelope, channel, stale, "no_longer_planned"))
                log.info("notification_skipped", channel=channel, reason="no_longer_planned")
        pending = [d for d in deliveries if d.channel in record.pending]
        results = await _concurrently(
            [self._claim_and_deliver(Notification(event, envelope, d)) for d in pending]
        )
        return {d.channel: r for d, r in zip(pending, results, strict=True)}

    async def again(self, notification: Notification) -> ChannelOutcome:
        """A retry record's attempt."""
        return await self._claim_and_deliver(notification)

    async def replay(self, notification: Notification) -> ChannelOutcome:
        """A dead-lettered channel put back by ``dlq replay``: its outcome is forgotten, then it
        is delivered as a retry is."""
        await self._store.reopen(notification.event_id, notification.channel)
        log.info("notification_reopened", channel=notification.channel)
        return await self._claim_and_deliver(notification)

    async def drop(
        self, event: Event, envelope: Envelope, channels: Iterable[str], reason: str
    ) -> None:
        """The channels will not be sent: their news is outdated or no longer planned."""
        for channel in channels:
            await self._record(Noted(event, envelope, channel, ChannelOutcome.STALE, reason))
            log.info("notification_stale_dropped", channel=channel, reason=reason)

    async def skip(self, event: Event, envelope: Envelope, skips: Iterable[Skip]) -> None:
        """Channels left out by the plan or by an ordering rule: noted, never stored (a
        redelivery decides them again). Not a channel the worker has no sender for."""
        for skip in skips:
            if skip.channel in self._senders:
                await self._record(Noted(event, envelope, skip.channel, None, skip.reason))

    async def recall(self, event: Event, envelope: Envelope, done: Mapping[str, str]) -> None:
        """A redelivered record: note again the outcomes the store holds, since the first
        notes may have been lost with a crash right after they were stored. They carry the
        same ids; what only the first note knew (a Message-ID, an error) is left out."""
        for channel, word in done.items():
            if word in _KNOWN:  # a word of a newer worker sharing the store is not ours to note
                noted = Noted(event, envelope, channel, ChannelOutcome(word))
                await self._notes.note(noted)

    async def _record(self, noted: Noted) -> None:
        """Store a channel's outcome (a skip is not stored), then note it in the log: after
        the store, so a note never runs ahead of what a redelivery would find."""
        if noted.stored is not None:
            await self._store.mark_done(noted.event.event_id, noted.channel, noted.stored)
        await self._notes.note(noted)
        counted = _counted(noted)
        if counted is not None:
            self._metrics.notification(noted.channel, *counted)

    async def _claim_and_deliver(self, notification: Notification) -> ChannelOutcome:
        done = await self._claim(notification.event_id, notification.channel)
        if done is not None:
            log.info("notification_already_done", channel=notification.channel, outcome=done)
            return done
        return await self._deliver(notification)

    async def _claim(self, event_id: str, channel: str) -> ChannelOutcome | None:
        """Hold the claim (None), or the outcome another worker recorded meanwhile. While a
        live worker holds it, wait: it finishes, or its lease ends."""
        waited = False
        while True:
            claim = await self._store.claim(event_id, channel, self.owner, self.lease)
            if claim.granted:
                return None
            if claim.outcome is not None:
                return ChannelOutcome(claim.outcome)
            if not waited:
                log.info("notification_claim_busy", channel=channel, holder=claim.holder)
                waited = True
            await asyncio.sleep(min(1.0, self.lease / 4))

    async def _deliver(self, notification: Notification) -> ChannelOutcome:
        """Send a claimed notification and record its outcome."""
        n = notification
        refusal = await self._store.opted_out(
            subjects(n.channel, n.delivery.address, n.event.customer.id), n.channel
        )
        if refusal is not None:  # before quiet hours: an opted-out recipient is not held
            return await self._opted_out(n, refusal.source)
        quiet = self._quiet.check(n.event, n.channel, self._clock()) if self._quiet else None
        if quiet is not None:
            return await self._hold(n, quiet)
        if n.envelope.header(headers.RETRY_HELD) is not None:  # only retry records carry it
            log.info("notification_released", channel=n.channel, to=n.to)
        tries = 1 if n.retry else 1 + self._in_process.attempts
        try:
            message = self._compose(n)
            took, message_id = await self._send(message, n.to, tries)
        except RecipientOptedOut:
            subject, stop = address_subject(n.channel, n.delivery.address), self._clock()
            await self._store.set_preference(subject, n.channel, Preference(True, stop, PROVIDER))
            return await self._opted_out(n, PROVIDER)
        except PermanentDeliveryError as exc:
            return await self._dead_letter(n, "permanent", str(exc))
        except TransientDeliveryError as exc:
            return await self._defer(n, str(exc))
        except Exception as exc:  # a bug, or an answer nobody foresaw: this channel ends here
            log.error("notification_crashed", channel=n.channel, to=n.to, exc_info=True)
            return await self._dead_letter(n, "internal_error", describe_exception(exc))
        await self._record(n.noted(ChannelOutcome.SENT, message_id=message_id))
        log.info("notification_sent", channel=n.channel, to=n.to)
        self._metrics.sent(n.channel, took, n.envelope.origin_timestamp())
        if message.segments:
            self._metrics.sms_segments(message.encoding, message.segments)
        return ChannelOutcome.SENT

    async def _hold(self, notification: Notification, quiet: Quiet) -> ChannelOutcome:
        """Quiet hours: hold the notification until they end, or drop news that would be late."""
        n, release = notification, _iso(quiet.release, quiet.zone)
        where = {"channel": n.channel, "to": n.to, "zone": quiet.zone, "zone_from": quiet.source}
        if quiet.expires:
            await self._record(n.noted(ChannelOutcome.EXPIRED, "expired"))
            log.info("notification_expired", **where, quiet_until=release)
            return ChannelOutcome.EXPIRED
        await self._retries.hold(n.envelope, Held(n.channel, quiet.due, quiet.release, n.retry))
        await self._record(n.noted(ChannelOutcome.HELD, "quiet_hours"))
        log.info("notification_held", **where, release_at=release)
        return ChannelOutcome.HELD

    async def _opted_out(self, notification: Notification, source: str) -> ChannelOutcome:
        n = notification
        await self._record(n.noted(ChannelOutcome.OPTED_OUT, "opted_out", source))
        log.info(
            "notification_skipped", channel=n.channel, to=n.to, reason="opted_out", source=source
        )
        return ChannelOutcome.OPTED_OUT

    def _compose(self, notification: Notification) -> Outgoing:
        event, delivery = notification.event, notification.delivery
        try:
            if delivery.channel == "email":
                email = self._renderer.email(event)
                text, subject, html = email.text, email.subject, email.html
                encoding, segments = "", 0
            else:
                sms = self._renderer.sms(event)
                text, subject, html = sms.text, "", ""
                encoding, segments = sms.encoding, sms.segments
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
            encoding=encoding,
            segments=segments,
            order_id=event.shipment.order_id,
            customer_id=event.customer.id,
        )

    async def _send(self, message: Outgoing, to: str, tries: int) -> tuple[float, str | None]:
        """Send, retrying a transient failure up to ``tries`` times in all; the seconds the
        accepted send took, and the sender's id for the message."""
        sender = self._senders[message.channel]
        throttle = self._throttles.get(message.channel)
        for attempt in range(1, tries + 1):
            try:
                if throttle is not None:
                    await self._keep_claim(message, throttle.turn())
                return await self._timed(sender, message)
            except TransientDeliveryError as exc:
                if throttle is not None:
                    throttle.refused(exc)
                if attempt == tries:
                    raise
                delay = self._in_process.backoff.delay(attempt)
                log.warning(
                    "notification_retrying",
                    channel=message.channel,
                    to=to,
                    attempt=attempt,
                    delay=round(delay, 3),
                    error=str(exc),
                )
                await asyncio.sleep(delay)
                # a slow provider must not let the claim lapse while we still own the send
                await self._store.claim(message.event_id, message.channel, self.owner, self.lease)
        raise AssertionError("tries must be at least 1")

    async def _timed(self, sender: Sender, message: Outgoing) -> tuple[float, str | None]:
        """One send: the seconds it took (counted whether or not it was accepted), and the
        sender's id for the message."""
        started = time.perf_counter()
        try:
            message_id = await sender.send(message)
        except BaseException:  # refused, failed or cancelled
            self._metrics.send_failed(message.channel, time.perf_counter() - started)
            raise
        return time.perf_counter() - started, message_id

    async def _keep_claim(self, message: Outgoing, wait: Awaitable[None]) -> None:
        """Await ``wait`` (a send's turn), renewing the claim while it lasts."""
        waiting = asyncio.ensure_future(wait)
        try:
            while not (await asyncio.wait({waiting}, timeout=self.lease / 3))[0]:
                await self._store.claim(message.event_id, message.channel, self.owner, self.lease)
        finally:
            waiting.cancel()

    async def _defer(self, notification: Notification, error: str) -> ChannelOutcome:
        n, now = notification, self._clock()
        if n.retry is None:
            following = first_retry(n.channel, now, error, self._limits)
        else:
            following = n.retry.failed_again(now, error, self._limits)
        if following is None:
            failures = (*(n.retry.history if n.retry else ()), (now, error))
            extra = [(headers.RETRY_HISTORY, history_text(failures).encode())]
            return await self._dead_letter(n, "retries_exhausted", error, extra)
        await self._retries.schedule(n.envelope, following, error)
        await self._record(n.noted(ChannelOutcome.DEFERRED, "transient", error))
        log.warning(
            "notification_retry_scheduled",
            channel=n.channel,
            to=n.to,
            attempt=following.attempt,
            due_in=round(following.due - now, 3),
            error=error,
        )
        return ChannelOutcome.DEFERRED

    async def _dead_letter(
        self,
        notification: Notification,
        error_type: str,
        error: str,
        extra: list[tuple[str, bytes]] | None = None,
    ) -> ChannelOutcome:
        n = notification
        await self._dead_letters.publish(
            n.envelope, error_type, error, channel=n.channel, extra=extra
        )
        await self._record(n.noted(ChannelOutcome.DEAD_LETTERED, error_type, error))
        log.error(
            "notification_failed", channel=n.channel, to=n.to, error_type=error_type, error=error
        )
        return ChannelOutcome.DEAD_LETTERED


def _iso(at: float, zone: str) -> str:
    """A moment in the recipient's zone, for the logs: 2026-12-05T08:00:00+07:00."""
    return datetime.fromtimestamp(at, ZoneInfo(zone)).isoformat(timespec="seconds")


_KNOWN = frozenset(ChannelOutcome)


def _counted(noted: Noted) -> tuple[str, str] | None:
    """``notifications_total``'s outcome and reason for a recorded outcome; None for a sent
    one (``Metrics.sent`` counts it, with its timings) and for a skip, which is not stored
    (the pipeline counts the plan's skips; an ordering rule's is the record's outcome)."""
    stored, reason = noted.stored, noted.reason or ""
    if stored is None or stored is ChannelOutcome.SENT:
        return None
    if stored is ChannelOutcome.STALE:
        return ("superseded", "") if reason == "superseded" else ("skipped", reason)
    if stored in (ChannelOutcome.EXPIRED, ChannelOutcome.OPTED_OUT):
        return "skipped", stored.value
    if stored is ChannelOutcome.DEAD_LETTERED:
        return stored.value, reason  # the error type
    return stored.value, ""  # deferred, held


def describe_exception(exc: BaseException) -> str:
    """An unforeseen exception for a dead letter's reason: its type and message on one line,
    bounded, any address or number in it masked."""
    return terminal_text(f"{type(exc).__name__}: {exc}", limit=500)


async def _concurrently(
    sends: list[Coroutine[Any, Any, ChannelOutcome]],
) -> list[ChannelOutcome]:
    """The results of ``sends``, run at the same time: the first in this task and each other
    one in a task of its own (``gather`` would create a task for every one). If this task is
    cancelled or the first raises, the others are cancelled and waited for."""
    if not sends:
        return []
    others = [asyncio.create_task(send) for send in sends[1:]]
    try:
        first = await sends[0]
    except BaseException:
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)
        raise
    return [first, *[await task for task in others]]
