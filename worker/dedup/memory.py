"""An in-process store for tests and demos: forgets everything on exit."""

from __future__ import annotations

import time
from dataclasses import replace

from worker.dedup.store import (
    CLAIMABLE,
    ChannelOutcome,
    Claim,
    EventRecord,
    Preference,
    ShipmentState,
    Snapshot,
    may_take_over,
)


class MemoryStore:
    def __init__(self, ttl_seconds: float) -> None:
        self._ttl = ttl_seconds
        self._events: dict[str, tuple[float, EventRecord]] = {}
        self._shipments: dict[str, tuple[float, ShipmentState]] = {}
        self._claims: dict[tuple[str, str], tuple[float, str]] = {}
        self._preferences: dict[tuple[str, str], Preference] = {}

    async def load(self, event_id: str, shipment_id: str) -> Snapshot:
        now = time.time()
        event = self._events.get(event_id)
        shipment = self._shipments.get(shipment_id)
        return Snapshot(
            event=event[1] if event and event[0] > now else None,
            shipment=shipment[1] if shipment and shipment[0] > now else None,
        )

    async def accept(
        self,
        event_id: str,
        channels: tuple[str, ...],
        shipment_id: str,
        state: ShipmentState,
        owner: str,
        lease: float,
    ) -> tuple[str, ...]:
        now = time.time()
        expires = now + self._ttl
        stored = self._events.get(event_id)
        if stored is None or stored[0] <= now:
            self._events[event_id] = (expires, EventRecord(channels, {}, shipment_id))
        known = self._shipments.get(shipment_id)
        if known is None or known[0] <= now or known[1].occurred_at <= state.occurred_at:
            self._shipments[shipment_id] = (expires, state)  # only forward in time
        return tuple(c for c in channels if self._claim(event_id, c, owner, lease).granted)

    async def claim(self, event_id: str, channel: str, owner: str, lease: float) -> Claim:
        return self._claim(event_id, channel, owner, lease)

    def _claim(self, event_id: str, channel: str, owner: str, lease: float) -> Claim:
        now = time.time()
        event = self._events.get(event_id)
        outcome = event[1].done.get(channel) if event else None
        if outcome is not None and outcome not in CLAIMABLE:
            return Claim(False, outcome=outcome)
        held = self._claims.get((event_id, channel))
        if held and held[0] > now and not may_take_over(held[1], owner):
            return Claim(False, holder=held[1])
        self._claims[(event_id, channel)] = (now + lease, owner)
        return Claim(True)

    async def mark_done(self, event_id: str, channel: str, outcome: ChannelOutcome) -> None:
        self._claims.pop((event_id, channel), None)
        stored = self._events.get(event_id)
        if stored is not None:  # a retry's claim may have had no record
            expires, record = stored
            done = {**record.done, channel: outcome}
            self._events[event_id] = (expires, replace(record, done=done))

    async def reopen(self, event_id: str, channel: str) -> None:
        stored = self._events.get(event_id)
        if stored is not None:
            expires, record = stored
            done = {c: o for c, o in record.done.items() if c != channel}
            self._events[event_id] = (expires, replace(record, done=done))

    async def check(self) -> None:
        """Nothing to reach."""

    async def set_preference(self, subject: str, channel: str, preference: Preference) -> bool:
        stored = self._preferences.get((subject, channel))
        if stored is not None and stored.at > preference.at:
            return False
        self._preferences[(subject, channel)] = preference
        return True

    async def opted_out(self, subjects: tuple[str, ...], channel: str) -> Preference | None:
        for subject in subjects:
            stored = self._preferences.get((subject, channel))
            if stored is not None and stored.opted_out:
                return stored
        return None

    async def close(self) -> None:
        self._preferences.clear()
        self._events.clear()
        self._shipments.clear()
        self._claims.clear()
