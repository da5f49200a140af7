"""The preferences topic's records into the store (the rules: ``worker/preferences.py``).

A record that cannot be read (a key that is no subject, a value that is not the JSON choice,
an unknown channel) is dead-lettered as ``bad_preference``; nothing a record holds stops the
worker.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from worker import logs
from worker.dedup import DedupStore
from worker.dedup.store import Preference
from worker.delivery import DeadLetters, describe_exception
from worker.envelope import Envelope
from worker.logs import get_logger
from worker.policy import CHANNELS
from worker.preferences import TOPIC, InvalidPreference, Update, masked, read

log = get_logger(__name__)

Handler = Callable[[Envelope], Awaitable[object]]


class PreferenceFeed:
    """Keeps the preferences topic's records in the store. ``route`` puts it in front of the
    record handler: the consumer reads this topic with the events (same group), so its
    records get the same per-key order, bounded concurrency and commit-after-done."""

    def __init__(
        self,
        store: DedupStore,
        topic: str,
        dead_letters: DeadLetters,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self.topic = topic
        self._dead_letters = dead_letters
        self._clock = clock

    def route(self, handler: Handler) -> Handler:
        """``handler`` for every other topic, this feed for the preferences topic."""

        async def handle(envelope: Envelope) -> object:
            if envelope.topic != self.topic:
                return await handler(envelope)
            await self.apply(envelope)
            return None

        return handle

    async def apply(self, envelope: Envelope) -> None:
        """One preferences record to the store, in one logged line; a bad one dead-lettered."""
        logs.new_context(topic=envelope.topic, partition=envelope.partition, offset=envelope.offset)
        try:
            update = read(envelope, self._clock())
        except InvalidPreference as exc:
            await self._reject(envelope, "bad_preference", str(exc))
            return
        try:
            await self._keep(update)
        except Exception as exc:  # the last resort: one record's bug must not stop the worker
            log.error("preference_crashed", exc_info=True)
            await self._reject(envelope, "internal_error", describe_exception(exc))

    async def _keep(self, update: Update) -> None:
        kept: dict[str, list[str]] = {"opted_out": [], "opted_in": [], "superseded": []}
        for channel in CHANNELS:
            out = channel in update.opted_out
            preference = Preference(out, update.at, TOPIC)
            if not await self._store.set_preference(update.subject, channel, preference):
                kept["superseded"].append(channel)  # a newer choice is stored: it stands
            else:
                kept["opted_out" if out else "opted_in"].append(channel)
        log.info("preference_recorded", subject=masked(update.subject), **kept)

    async def _reject(self, envelope: Envelope, kind: str, message: str) -> None:
        await self._dead_letters.publish(envelope, kind, message)
        log.warning("preference_dead_lettered", reason=kind, error=message)
