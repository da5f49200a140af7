"""The store contract and the records it keeps.

Per event: the shipment it belongs to, the channels it was accepted for and each channel's
``ChannelOutcome``, so a redelivery resumes
exactly the channels that have none. Per (event, channel): a claim with a lease, taken before
sending, so two workers never send the same notification at once; a claim left by a crashed
worker is taken over when its lease ends, or at once by the same worker's next incarnation.
Per shipment: the status and time of the newest accepted event, for the ordering rules.
Entries expire after the TTL. A call that fails for a passing reason raises ``StoreError``
(``resilient.Resilient`` retries those).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from worker.dedup.redis_client import RedisOptions


class StoreUnavailable(Exception):
    """The store cannot be used: e.g. its SQLite file is held by another process."""


class StoreError(Exception):
    """A store call failed for a reason that may pass (Redis unreachable or failing over, a
    SQLite write that could not be committed): the call did not take effect and may be made
    again. Anything else a store raises is a bug."""


class ChannelOutcome(StrEnum):
    """What became of one channel of an accepted event: the words every store keeps."""

    SENT = "sent"  # the provider accepted it
    DEFERRED = "deferred"  # handed to the retry topic, which sends it later
    DEAD_LETTERED = "dead_lettered"  # on the dead-letter topic, until a replay reopens it
    STALE = "stale"  # dropped: the shipment moved on, or the channel is no longer planned
    HELD = "held"  # quiet hours: on the retry topic until the recipient's window opens
    EXPIRED = "expired"  # quiet hours, and its status's news would be late by then: dropped
    OPTED_OUT = "opted_out"  # not sent: the recipient opted out of the channel


# an outcome that still leaves the channel to be sent (by its retry record)
CLAIMABLE = frozenset({ChannelOutcome.DEFERRED, ChannelOutcome.HELD})


@dataclass(frozen=True, slots=True)
class ShipmentState:
    status: str
    occurred_at: float  # POSIX timestamp: comparable across the producers' time zones


@dataclass(frozen=True, slots=True)
class EventRecord:
    channels: tuple[str, ...]
    done: dict[str, str] = field(default_factory=dict)  # channel -> a ChannelOutcome's value
    shipment_id: str | None = None  # None in records of a worker that did not keep it

    @property
    def pending(self) -> tuple[str, ...]:
        return tuple(c for c in self.channels if c not in self.done)


@dataclass(frozen=True, slots=True)
class Preference:
    """One subject's choice for one channel (``worker/preferences.py`` names the subjects and
    the sources). The newest ``at`` wins, whatever order the sources' writes arrive in."""

    opted_out: bool
    at: float  # POSIX timestamp of the choice
    source: str  # "provider" (a STOP answer) or "topic" (the shop's preferences topic)


@dataclass(frozen=True, slots=True)
class Claim:
    """The answer to a claim: granted, or the channel's outcome when it is already done, or
    the live holder when another worker is sending it."""

    granted: bool
    outcome: str | None = None
    holder: str | None = None


def may_take_over(holder: str, owner: str) -> bool:
    """Owners are ``<worker id>/<incarnation>``; a worker id runs once at a time, so a claim of
    an older incarnation of the same worker id was left by a process that is gone."""
    return worker_of(holder) == worker_of(owner)


def worker_of(owner: str) -> str:
    """The worker id of an owner ``<worker id>/<incarnation>``."""
    return owner.split("/", 1)[0]


@dataclass(frozen=True, slots=True)
class Snapshot:
    event: EventRecord | None
    shipment: ShipmentState | None


class DedupStore(Protocol):
    """What the pipeline needs remembered; ``tests/test_dedup_stores.py`` holds every store
    to it."""

    async def load(self, event_id: str, shipment_id: str) -> Snapshot:
        """What is remembered about this event and its shipment (expired entries are gone)."""

    async def accept(
        self,
        event_id: str,
        channels: tuple[str, ...],
        shipment_id: str,
        state: ShipmentState,
        owner: str,
        lease: float,
    ) -> tuple[str, ...]:
        """In one atomic step: remember the event as accepted for ``channels``, of
        ``shipment_id`` (unless a
        record of it is already stored: another worker accepted it meanwhile, and its outcomes
        stand); make ``state`` the shipment's newest unless a newer one is stored; and
        ``claim`` each channel for ``owner``. Returns the channels whose claim was granted."""

    async def claim(self, event_id: str, channel: str, owner: str, lease: float) -> Claim:
        """Take (or renew) the right to send ``channel`` of ``event_id`` for ``lease`` seconds,
        unless its outcome is recorded and not ``CLAIMABLE``."""

    async def mark_done(self, event_id: str, channel: str, outcome: ChannelOutcome) -> None:
        """Remember the outcome of one channel of an accepted event and drop its claim."""

    async def reopen(self, event_id: str, channel: str) -> None:
        """Forget a channel's outcome, so a replayed event sends it again."""

    async def check(self) -> None:
        """At start-up: raise ``StoreUnavailable`` naming the cause when the store refuses
        this worker for good (a Redis refusing its credentials or its TLS), ``StoreError``
        when it cannot be reached for now."""

    async def set_preference(self, subject: str, channel: str, preference: Preference) -> bool:
        """Keep ``preference`` for ``subject`` and ``channel`` unless a newer one is stored
        (returns whether it was kept). Preferences never expire: an opt-out outlives the TTL."""

    async def opted_out(self, subjects: tuple[str, ...], channel: str) -> Preference | None:
        """The stored opt-out of any of ``subjects`` for ``channel``, or None."""

    async def close(self) -> None: ...


def open_store(
    url: str,
    ttl_seconds: float,
    key_prefix: str = "shipment-notifier:",
    redis: RedisOptions | None = None,
) -> DedupStore:
    """The store ``url`` names; ``key_prefix`` separates deployments sharing one Redis,
    ``redis`` (``DedupSettings``) tells how to reach it beyond the URL."""
    if url.startswith("sqlite:///"):
        from worker.dedup.sqlite import SqliteStore

        return SqliteStore(url.removeprefix("sqlite:///"), ttl_seconds)
    if url.startswith(("redis://", "rediss://")):
        from worker.dedup.redis import open_redis_store
        from worker.dedup.redis_client import UrlOnly

        return open_redis_store(url, ttl_seconds, key_prefix, redis or UrlOnly())
    if url.startswith("memory://"):
        from worker.dedup.memory import MemoryStore

        return MemoryStore(ttl_seconds)
    raise ValueError(f"DEDUP_URL {url!r}: unknown store")
