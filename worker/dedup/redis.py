"""A store in Redis, shared by every worker replica of a consumer group.

Keys: ``<prefix>evt:<event_id>`` (hash: ``channels`` and ``done:<channel>``),
``<prefix>shp:<shipment_id>`` (hash: ``status``, ``occurred_at``), each with the TTL, and
``<prefix>claim:<event_id>:<channel>`` (the owner, expiring with the lease). ``accept`` writes
``accept``, ``claim`` and ``mark_done`` are Lua scripts, so each check-and-write (the
shipment state only moving forward; the outcome, the holder and the claim) is one atomic step
across replicas.
"""

from __future__ import annotations

import json

import redis.asyncio as aioredis

from worker.dedup.store import Claim, EventRecord, ShipmentState, Snapshot

# KEYS: event hash, claim key. ARGV: channel, owner, lease ms.
# Returns {"done", outcome} | {"busy", holder} | {"granted"}.
_CLAIM = """
local outcome = redis.call('HGET', KEYS[1], 'done:' .. ARGV[1])
if outcome and outcome ~= 'deferred' then return {'done', outcome} end
local holder = redis.call('GET', KEYS[2])
if holder and holder ~= ARGV[2] then
  local worker = string.match(ARGV[2], '^[^/]*')
  if string.match(holder, '^[^/]*') ~= worker then return {'busy', holder} end
end
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
return {'granted'}
"""
# KEYS: event hash, shipment hash. ARGV: channels JSON, status, occurred_at, ttl seconds.
# The shipment's state only moves forward in time, whatever order replicas write in.
_ACCEPT = """
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'channels', ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[4])
local newest = redis.call('HGET', KEYS[2], 'occurred_at')
if (not newest) or tonumber(newest) <= tonumber(ARGV[3]) then
  redis.call('HSET', KEYS[2], 'status', ARGV[2], 'occurred_at', ARGV[3])
  redis.call('EXPIRE', KEYS[2], ARGV[4])
end
return 1
"""
# KEYS: event hash, claim key. ARGV: channel, outcome.
_MARK_DONE = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HSET', KEYS[1], 'done:' .. ARGV[1], ARGV[2])
end
redis.call('DEL', KEYS[2])
return 1
"""


class RedisStore:
    def __init__(self, client: aioredis.Redis, ttl_seconds: float, prefix: str) -> None:
        self._redis = client
        self._ttl = max(1, int(ttl_seconds))
        self._prefix = prefix
        self._accept_script = client.register_script(_ACCEPT)
        self._claim_script = client.register_script(_CLAIM)
        self._mark_done_script = client.register_script(_MARK_DONE)

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
        keys = [self._event_key(event_id), self._shipment_key(shipment_id)]
        args: list[str | int] = [
            json.dumps(list(channels)),
            state.status,
            repr(state.occurred_at),
            self._ttl,
        ]
        await self._accept_script(keys=keys, args=args)

    def _claim_key(self, event_id: str, channel: str) -> str:
        return f"{self._prefix}claim:{event_id}:{channel}"

    async def claim(self, event_id: str, channel: str, owner: str, lease: float) -> Claim:
        keys = [self._event_key(event_id), self._claim_key(event_id, channel)]
        answer = await self._claim_script(keys=keys, args=[channel, owner, int(lease * 1000)])
        if answer[0] == "done":
            return Claim(False, outcome=answer[1])
        if answer[0] == "busy":
            return Claim(False, holder=answer[1])
        return Claim(True)

    async def mark_done(self, event_id: str, channel: str, outcome: str) -> None:
        keys = [self._event_key(event_id), self._claim_key(event_id, channel)]
        await self._mark_done_script(keys=keys, args=[channel, outcome])

    async def reopen(self, event_id: str, channel: str) -> None:
        await self._redis.hdel(self._event_key(event_id), f"done:{channel}")

    async def close(self) -> None:
        await self._redis.aclose()


def _event_record(fields: dict[str, str]) -> EventRecord:
    done = {k.removeprefix("done:"): v for k, v in fields.items() if k.startswith("done:")}
    return EventRecord(tuple(json.loads(fields["channels"])), done)
