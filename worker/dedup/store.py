"""The store contract and the records it keeps.

Per event: the channels it was accepted for and each channel's final outcome (``sent`` or
``dead_lettered``), so a redelivery resumes exactly the channels that are not done. Per
shipment: the status and time of the newest accepted event, for the ordering rules.
Entries expire after the TTL.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True, slots=True)
class ShipmentState:
    status: str
    occurred_at: float  # POSIX timestamp: comparable across the producers' time zones


@dataclass(frozen=True, slots=True)
class EventRecord:
    channels: tuple[str, ...]
    done: dict[str, str] = field(default_factory=dict)  # channel -> sent | dead_lettered

    @property
    def pending(self) -> tuple[str, ...]:
        return tuple(c for c in self.channels if c not in self.done)


@dataclass(frozen=True, slots=True)
class Snapshot:
    event: EventRecord | None
    shipment: ShipmentState | None


class DedupStore(Protocol):
    async def load(self, event_id: str, shipment_id: str) -> Snapshot:
        """What is remembered about this event and its shipment (expired entries are gone)."""

    async def accept(
        self, event_id: str, channels: tuple[str, ...], shipment_id: str, state: ShipmentState
    ) -> None:
        """Remember the event as accepted for ``channels`` and make ``state`` the shipment's
        newest, in one atomic step."""

    async def mark_done(self, event_id: str, channel: str, outcome: str) -> None:
        """Remember the final outcome of one channel of an accepted event."""

    async def close(self) -> None: ...


def open_store(url: str, ttl_seconds: float, key_prefix: str = "shipment-notifier:") -> DedupStore:
    """The store ``url`` names; ``key_prefix`` separates deployments sharing one Redis."""
    if url.startswith("sqlite:///"):
        from worker.dedup.sqlite import SqliteStore

        return SqliteStore(url.removeprefix("sqlite:///"), ttl_seconds)
    if url.startswith(("redis://", "rediss://")):
        from worker.dedup.redis import RedisStore

        return RedisStore.from_url(url, ttl_seconds, key_prefix)
    if url.startswith("memory://"):
        from worker.dedup.memory import MemoryStore

        return MemoryStore(ttl_seconds)
    raise ValueError(f"DEDUP_URL {url!r}: unknown store")
