"""An in-process store for tests and demos: forgets everything on exit."""

from __future__ import annotations

import time
from dataclasses import replace

from worker.dedup.store import EventRecord, ShipmentState, Snapshot


class MemoryStore:
    def __init__(self, ttl_seconds: float) -> None:
        self._ttl = ttl_seconds
        self._events: dict[str, tuple[float, EventRecord]] = {}
        self._shipments: dict[str, tuple[float, ShipmentState]] = {}

    async def load(self, event_id: str, shipment_id: str) -> Snapshot:
        now = time.time()
        event = self._events.get(event_id)
        shipment = self._shipments.get(shipment_id)
        return Snapshot(
            event=event[1] if event and event[0] > now else None,
            shipment=shipment[1] if shipment and shipment[0] > now else None,
        )

    async def accept(
        self, event_id: str, channels: tuple[str, ...], shipment_id: str, state: ShipmentState
    ) -> None:
        expires = time.time() + self._ttl
        self._events[event_id] = (expires, EventRecord(channels))
        self._shipments[shipment_id] = (expires, state)

    async def mark_done(self, event_id: str, channel: str, outcome: str) -> None:
        expires, record = self._events[event_id]
        self._events[event_id] = (expires, replace(record, done={**record.done, channel: outcome}))

    async def close(self) -> None:
        self._events.clear()
        self._shipments.clear()
