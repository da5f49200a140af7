"""One notification on one channel, from claim to recorded outcome.

    claim (taken with the event's acceptance, or here, waiting while another live worker
    holds it) -> render -> send, retrying a transient failure a few times in process ->
    record the outcome and release the claim:
      sent            the provider accepted it
      deferred        still failing: handed to the retry topic with a due time
      dead_lettered   permanent failure, or retries exhausted: on the dead-letter topic

The outcome is written to the store only after the retry or dead-letter record is durable, so a
crash in between leads to a resend attempt (guarded by the claim), never to a silent loss.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from worker.channels import (
    Outgoing,
    PermanentDeliveryError,
    Sender,
    TransientDeliveryError,
)
from worker.dedup import DedupStore
from worker.envelope import Envelope
from worker.events import Event
from worker.logs import get_logger, mask_email, mask_phone
from worker.policy import Delivery
from worker.render import Renderer, RenderError
from worker.retry import HISTORY, Backoff, RetryLimits, RetryState, first_retry, history_text

log = get_logger(__name__)

SENT = "sent"
DEFERRED = "deferred"
DEAD_LETTERED = "dead_lettered"
STALE = "stale"


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


@dataclass(frozen=True, slots=True)
class InProcessRetry:
    attempts: int  # retries after the first try, before the retry topic takes over
    backoff: Backoff


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

    async def deliver(
        self,
        event: Event,
        envelope: Envelope,
        delivery: Delivery,
        retry: RetryState | None = None,
        *,
        claimed: bool = False,
    ) -> str:
        """Deliver one channel and return its recorded outcome. ``claimed``: this worker
        already holds the channel's claim (``DedupStore.accept`` took it)."""
        channel = delivery.channel
        to = mask_email(delivery.address) if channel == "email" else mask_phone(delivery.address)
        done = None if claimed else await self._claim(event.event_id, channel)
        if done is not None:
            log.info("notification_already_done", channel=channel, outcome=done)
            return done
        try:
            message = self._compose(event, delivery)
            await self._send(message, to, tries=1 if retry else 1 + self._in_process.attempts)
        except PermanentDeliveryError as exc:
            await self._dead_letter(event, envelope, channel, "permanent", str(exc), to)
            return DEAD_LETTERED
        except TransientDeliveryError as exc:
            return await self._defer(event, envelope, channel, str(exc), to, retry)
        await self._store.mark_done(event.event_id, channel, SENT)
        log.info("notification_sent", channel=channel, to=to)
        return SENT

    async def _claim(self, event_id: str, channel: str) -> str | None:
        """Hold the claim (None), or the outcome another worker recorded meanwhile. While a
        live worker holds it, wait: it finishes, or its lease ends."""
        waited = False
        while True:
            claim = await self._store.claim(event_id, channel, self.owner, self.lease)
            if claim.granted:
                return None
            if claim.outcome is not None:
                return claim.outcome
            if not waited:
                log.info("notification_claim_busy", channel=channel, holder=claim.holder)
                waited = True
            await asyncio.sleep(min(1.0, self.lease / 4))

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

    async def _send(self, message: Outgoing, to: str, tries: int) -> None:
        sender = self._senders[message.channel]
        for attempt in range(1, tries + 1):
            try:
                await sender.send(message)
                return
            except TransientDeliveryError as exc:
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

    async def _defer(
        self,
        event: Event,
        envelope: Envelope,
        channel: str,
        error: str,
        to: str,
        retry: RetryState | None,
    ) -> str:
        now = self._clock()
        if retry is None:
            following = first_retry(channel, now, error, self._limits)
        else:
            following = retry.failed_again(now, error, self._limits)
        if following is None:
            failures = (*(retry.history if retry else ()), (now, error))
            extra = [(HISTORY, history_text(failures).encode())]
            await self._dead_letter(event, envelope, channel, "retries_exhausted", error, to, extra)
            return DEAD_LETTERED
        await self._retries.schedule(envelope, following, error)
        await self._store.mark_done(event.event_id, channel, DEFERRED)
        log.warning(
            "notification_retry_scheduled",
            channel=channel,
            to=to,
            attempt=following.attempt,
            due_in=round(following.due - now, 3),
            error=error,
        )
        return DEFERRED

    async def _dead_letter(
        self,
        event: Event,
        envelope: Envelope,
        channel: str,
        error_type: str,
        error: str,
        to: str,
        extra: list[tuple[str, bytes]] | None = None,
    ) -> None:
        await self._dead_letters.publish(envelope, error_type, error, channel=channel, extra=extra)
        await self._store.mark_done(event.event_id, channel, DEAD_LETTERED)
        log.error("notification_failed", channel=channel, to=to, error_type=error_type, error=error)
