"""A store that waits out its outages: every call that fails with ``StoreError`` is made again
after a growing delay, logged each time, until it succeeds.

Why every call, and without a deadline: a read or a claim that gives up would end the record
(dead-lettered for a blip of Redis), and a ``mark_done`` that gives up after a successful send
would let the redelivery send it again. Waiting holds the record's offset, so nothing is lost
and nothing is doubled; ``MAX_IN_FLIGHT`` bounds how many records wait, the consumer keeps
polling (the group keeps the partitions), and a shutdown cancels the waits (their records are
redelivered). The delay doubles from ``first_delay`` up to ``max_delay``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from worker.dedup.store import (
    ChannelOutcome,
    Claim,
    DedupStore,
    Preference,
    ShipmentState,
    Snapshot,
    StoreError,
)
from worker.logs import get_logger
from worker.metrics import Metrics

log = get_logger(__name__)

_T = TypeVar("_T")


class Resilient:
    """``store``, with each call retried through ``StoreError``: see the module docstring.
    Each try is timed into ``metrics`` (``store_call_duration_seconds``)."""

    def __init__(
        self,
        store: DedupStore,
        first_delay: float = 0.05,
        max_delay: float = 5.0,
        metrics: Metrics | None = None,
    ):
        self._store = store
        self._first_delay = first_delay
        self._max_delay = max_delay
        self._metrics = metrics or Metrics()

    async def load(self, event_id: str, shipment_id: str) -> Snapshot:
        return await self._until_done("load", lambda: self._store.load(event_id, shipment_id))

    async def accept(
        self,
        event_id: str,
        channels: tuple[str, ...],
        shipment_id: str,
        state: ShipmentState,
        owner: str,
        lease: float,
    ) -> tuple[str, ...]:
        return await self._until_done(
            "accept",
            lambda: self._store.accept(event_id, channels, shipment_id, state, owner, lease),
        )

    async def claim(self, event_id: str, channel: str, owner: str, lease: float) -> Claim:
        return await self._until_done(
            "claim", lambda: self._store.claim(event_id, channel, owner, lease)
        )

    async def mark_done(self, event_id: str, channel: str, outcome: ChannelOutcome) -> None:
        await self._until_done(
            "mark_done", lambda: self._store.mark_done(event_id, channel, outcome)
        )

    async def reopen(self, event_id: str, channel: str) -> None:
        await self._until_done("reopen", lambda: self._store.reopen(event_id, channel))

    async def check(self) -> None:
        """A refusal stops start-up at once; a store out of reach is waited for, as any call."""
        await self._until_done("check", self._store.check)

    async def ping(self) -> None:
        """The store's check, once, not waited out: ``/readyz`` asks how it is now."""
        await self._store.check()

    async def set_preference(self, subject: str, channel: str, preference: Preference) -> bool:
        return await self._until_done(
            "set_preference", lambda: self._store.set_preference(subject, channel, preference)
        )

    async def opted_out(self, subjects: tuple[str, ...], channel: str) -> Preference | None:
        return await self._until_done("opted_out", lambda: self._store.opted_out(subjects, channel))

    async def close(self) -> None:
        await self._store.close()

    async def _until_done(self, name: str, call: Callable[[], Awaitable[_T]]) -> _T:
        try:
            return await self._timed(name, call)
        except StoreError as exc:
            error = exc
        delay, attempt = self._first_delay, 1
        while True:
            log.warning(
                "store_unavailable", call=name, attempt=attempt, retry_in=delay, error=str(error)
            )
            await asyncio.sleep(delay)
            try:
                result = await self._timed(name, call)
            except StoreError as exc:
                error = exc
            else:
                log.info("store_recovered", call=name, attempts=attempt + 1)
                return result
            delay, attempt = min(delay * 2, self._max_delay), attempt + 1

    async def _timed(self, name: str, call: Callable[[], Awaitable[_T]]) -> _T:
        started = time.perf_counter()
        try:
            return await call()
        finally:
            self._metrics.store_call(name, time.perf_counter() - started)
