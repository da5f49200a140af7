"""A store in Redis, shared by every worker replica of a consumer group.

Keys: ``<prefix>evt:<event_id>`` (hash: ``channels`` and ``done:<channel>``) and
``<prefix>shp:<shipment_id>`` (hash: ``status``, ``occurred_at``), each with the TTL.
``accept`` writes both in one MULTI/EXEC transaction.
"""

from __future__ import annotations

import json

import redis.asyncio as aioredis

from worker.dedup.store import EventRecord, ShipmentState, Snapshot


class RedisStore:
    def __init__(self, client: aioredis.Redis, ttl_seconds: float, prefix: str) -> None:
        self._redis = client
        self._ttl = max(1, int(ttl_seconds))
        self._prefix = prefix

    @classmethod
    def from_url(cls, url: str, ttl_seconds: float, prefix: str) -> RedisStore:
        return cls(aioredis.Redis.from_url(url, decode_responses=True), ttl_seconds, prefix)

    def _event_key(self, event_id: str) -> str:
        return f"{self._prefix}evt:{event_id}"

    def _shipment_key(self, shipment_id: str) -> str:
        return f"{self._prefix}shp:{shipment_id}"

    async def load(self, event_id: str, shipment_id: str) -> Snapshot:
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(self._event_key(event_id))
            pipe.hgetall(self._shipment_key(shipment_id))
            event, shipment = await pipe.execute()
        return Snapshot(
            event=_event_record(event) if event else None,
            shipment=ShipmentState(shipment["status"], float(shipment["occurred_at"]))
            if shipment
            else None,
        )

    async def accept(
        self, event_id: str, channels: tuple[str, ...], shipment_id: str, state: ShipmentState
    ) -> None:
        event_key, shipment_key = self._event_key(event_id), self._shipment_key(shipment_id)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(event_key)
            pipe.hset(event_key, mapping={"channels": json.dumps(list(channels))})
            pipe.expire(event_key, self._ttl)
            pipe.hset(
                shipment_key,
                mapping={"status": state.status, "occurred_at": repr(state.occurred_at)},
            )
            pipe.expire(shipment_key, self._ttl)
            await pipe.execute()

    async def mark_done(self, event_id: str, channel: str, outcome: str) -> None:
        await self._redis.hset(self._event_key(event_id), f"done:{channel}", outcome)

    async def close(self) -> None:
        await self._redis.aclose()


def _event_record(fields: dict[str, str]) -> EventRecord:
    done = {k.removeprefix("done:"): v for k, v in fields.items() if k.startswith("done:")}
    return EventRecord(tuple(json.loads(fields["channels"])), done)
