"""A store in Redis, shared by every worker replica of a consumer group.

Keys: ``<prefix>evt:<event_id>`` (hash: ``channels``, ``shipment`` and ``done:<channel>``),
``<prefix>shp:<shipment_id>`` (hash: ``status``, ``occurred_at``), each with the TTL, and
``<prefix>claim:<event_id>:<channel>`` (the owner, expiring with the lease). ``accept``,
``claim`` and ``mark_done`` are Lua scripts, so each check-and-write (the event record kept
once stored; the shipment state only moving forward; the outcome, the holder and the claim)
is one atomic step across replicas. The outcome words come from ``ChannelOutcome`` as script
arguments. A connection failure, a timeout, a server still loading its data or a replica in
the middle of a failover raises ``StoreError``.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

import redis.asyncio as aioredis
import redis.exceptions

from worker.dedup.store import (
    CLAIMABLE,
    ChannelOutcome,
    Claim,
    EventRecord,
    Preference,
    ShipmentState,
    Snapshot,
    StoreError,
)

# the failures that pass: the same call may succeed once the server is back
_PASSING = (
    redis.exceptions.ConnectionError,  # AuthenticationError too: a password being rotated
    redis.exceptions.TimeoutError,
    redis.exceptions.BusyLoadingError,
    redis.exceptions.ReadOnlyError,
    redis.exceptions.TryAgainError,
    OSError,
)
_CLAIMABLE = json.dumps(sorted(CLAIMABLE))

# One channel's claim, as ``claim`` and ``accept`` take it.
# Returns {"done", outcome} | {"busy", holder} | {"granted"}.
_CLAIM_FUNCTION = """
local function claim(event_key, claim_key, channel, owner, lease_ms, claimable)
  local outcome = redis.call('HGET', event_key, 'done:' .. channel)
  if outcome and not claimable[outcome] then return {'done', outcome} end
  local holder = redis.call('GET', claim_key)
  if holder and holder ~= owner then
    local worker = string.match(owner, '^[^/]*')
    if string.match(holder, '^[^/]*') ~= worker then return {'busy', holder} end
  end
  redis.call('SET', claim_key, owner, 'PX', lease_ms)
  return {'granted'}
end
"""
_CLAIMABLE_SET = """
local function claimable_set(encoded)
  local set = {}
  for _, outcome in ipairs(cjson.decode(encoded)) do set[outcome] = true end
  return set
end
"""
# KEYS: event hash, claim key. ARGV: channel, owner, lease ms, the claimable outcomes (JSON).
_CLAIM = (
    _CLAIM_FUNCTION
    + _CLAIMABLE_SET
    + "return claim(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3], claimable_set(ARGV[4]))"
)
# KEYS: event hash, shipment hash, one claim key per channel. ARGV: channels JSON, status,
# occurred_at, ttl seconds, owner, lease ms, the claimable outcomes (JSON), the shipment id,
# then the channels in the claim keys' order.
# A stored event record stays (another replica accepted the event meanwhile). The shipment's
# state only moves forward in time, whatever order replicas write in. Returns the channels
# claimed.
_ACCEPT = (
    _CLAIM_FUNCTION
    + _CLAIMABLE_SET
    + """
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('HSET', KEYS[1], 'channels', ARGV[1], 'shipment', ARGV[8])
  redis.call('EXPIRE', KEYS[1], ARGV[4])
end
local newest = redis.call('HGET', KEYS[2], 'occurred_at')
if (not newest) or tonumber(newest) <= tonumber(ARGV[3]) then
  redis.call('HSET', KEYS[2], 'status', ARGV[2], 'occurred_at', ARGV[3])
  redis.call('EXPIRE', KEYS[2], ARGV[4])
end
local claimed = {}
local claimable = claimable_set(ARGV[7])
for i = 3, #KEYS do
  local channel = ARGV[i + 6]
  if claim(KEYS[1], KEYS[i], channel, ARGV[5], ARGV[6], claimable)[1] == 'granted' then
    table.insert(claimed, channel)
  end
end
return claimed
"""
)
# KEYS: event hash, claim key. ARGV: channel, outcome.
_MARK_DONE = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HSET', KEYS[1], 'done:' .. ARGV[1], ARGV[2])
end
redis.call('DEL', KEYS[2])
return 1
"""


_P = ParamSpec("_P")
_T = TypeVar("_T")


def _passing_as_store_error(
    call: Callable[_P, Coroutine[Any, Any, _T]],
) -> Callable[_P, Coroutine[Any, Any, _T]]:
    @functools.wraps(call)
    async def wrapped(*args: _P.args, **kwargs: _P.kwargs) -> _T:
        try:
            return await call(*args, **kwargs)
        except _PASSING as exc:
            raise StoreError(f"Redis: {exc!r}") from exc

    return wrapped


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

    @_passing_as_store_error
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

    @_passing_as_store_error
    async def accept(
        self,
        event_id: str,
        channels: tuple[str, ...],
        shipment_id: str,
        state: ShipmentState,
        owner: str,
        lease: float,
    ) -> tuple[str, ...]:
        keys = [
            self._event_key(event_id),
            self._shipment_key(shipment_id),
            *(self._claim_key(event_id, c) for c in channels),
        ]
        args: list[str | int] = [
            json.dumps(list(channels)),
            state.status,
            repr(state.occurred_at),
            self._ttl,
            owner,
            _lease_ms(lease),
            _CLAIMABLE,
            shipment_id,
            *channels,
        ]
        return tuple(await self._accept_script(keys=keys, args=args))

    def _claim_key(self, event_id: str, channel: str) -> str:
        return f"{self._prefix}claim:{event_id}:{channel}"

    @_passing_as_store_error
    async def claim(self, event_id: str, channel: str, owner: str, lease: float) -> Claim:
        keys = [self._event_key(event_id), self._claim_key(event_id, channel)]
        args: list[str | int] = [channel, owner, _lease_ms(lease), _CLAIMABLE]
        answer = await self._claim_script(keys=keys, args=args)
        if answer[0] == "done":
            return Claim(False, outcome=answer[1])
        if answer[0] == "busy":
            return Claim(False, holder=answer[1])
        return Claim(True)

    @_passing_as_store_error
    async def mark_done(self, event_id: str, channel: str, outcome: ChannelOutcome) -> None:
        keys = [self._event_key(event_id), self._claim_key(event_id, channel)]
        await self._mark_done_script(keys=keys, args=[channel, outcome])

    @_passing_as_store_error
    async def reopen(self, event_id: str, channel: str) -> None:
        await self._redis.hdel(self._event_key(event_id), f"done:{channel}")

    # Preferences: ``<prefix>pref:<subject>``, a hash of channel -> JSON [opted_out, at,
    # source], without expiry. Each call touches one subject's key, apart from the event keys.
    # KEYS: the subject's hash. ARGV: channel, the JSON, at. The newest choice wins.
    _SET_PREFERENCE = """
local stored = redis.call('HGET', KEYS[1], ARGV[1])
if stored and cjson.decode(stored)[2] > tonumber(ARGV[3]) then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
"""

    def _preference_key(self, subject: str) -> str:
        return f"{self._prefix}pref:{subject}"

    @_passing_as_store_error
    async def set_preference(self, subject: str, channel: str, preference: Preference) -> bool:
        script = self._redis.register_script(self._SET_PREFERENCE)  # no server call
        value = json.dumps([preference.opted_out, preference.at, preference.source])
        args = [channel, value, repr(preference.at)]
        return bool(await script(keys=[self._preference_key(subject)], args=args))

    @_passing_as_store_error
    async def opted_out(self, subjects: tuple[str, ...], channel: str) -> Preference | None:
        async with self._redis.pipeline(transaction=False) as pipe:
            for subject in subjects:
                pipe.hget(self._preference_key(subject), channel)
            stored = await pipe.execute()
        for value in stored:
            if value is not None:
                opted_out, at, source = json.loads(value)
                if opted_out:
                    return Preference(True, float(at), source)
        return None

    async def close(self) -> None:
        await self._redis.aclose()


def _lease_ms(lease: float) -> int:
    return max(1, int(lease * 1000))  # SET's PX takes a positive integer


def _event_record(fields: dict[str, str]) -> EventRecord:
    done = {k.removeprefix("done:"): v for k, v in fields.items() if k.startswith("done:")}
    return EventRecord(tuple(json.loads(fields["channels"])), done, fields.get("shipment"))
