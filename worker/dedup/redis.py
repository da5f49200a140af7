"""A store in Redis, shared by every worker replica of a consumer group: one server
(``RedisStore``) or a Redis Cluster (``RedisClusterStore``).

Keys on one server: ``<prefix>evt:<event_id>`` (hash: ``channels``, ``shipment`` and
``done:<channel>``), ``<prefix>shp:<shipment_id>`` (hash: ``status``, ``occurred_at``), each
with the TTL, and ``<prefix>claim:<event_id>:<channel>`` (the owner, expiring with the lease).
``accept``, ``claim`` and ``mark_done`` are Lua scripts, so each check-and-write (the event
record kept once stored; the shipment state only moving forward; the outcome, the holder and
the claim) is one atomic step across replicas. The outcome words come from ``ChannelOutcome``
as script arguments. A connection failure, a timeout, a server still loading its data or a
replica in the middle of a failover raises ``StoreError``.

In a cluster a script's keys must share a slot. An event's keys carry its id as their hash tag
(``<prefix>{evt:<event_id>}``, ``<prefix>{evt:<event_id>}:claim:<channel>``): claims, outcomes
and the reuse check find an event by its id alone. The shipment's hash
(``<prefix>{shp:<shipment_id>}``) is shared by many events, so no tag can put it beside all of
them, and ``accept`` takes two atomic steps there: the event record and its claims, then the
shipment's state. The record keeps the state it was accepted with; a worker that dies between
the two steps leaves a record newer than its shipment, and the next ``load`` of that event
finishes the second step. (Done the other way round, a redelivery would find the shipment at
its own status and skip it as repeated.)
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, ParamSpec, TypeVar

import redis.exceptions

from worker.dedup.redis_client import Client, RedisOptions, check, connect, describe
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
    redis.exceptions.ClusterError,  # CLUSTERDOWN, MASTERDOWN: a failover under way
    redis.exceptions.SlotNotCoveredError,
    redis.exceptions.RedisClusterUnreachableError,
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
# Claims KEYS[first..] for the channels ARGV[first + offset..]; returns the channels claimed.
_CLAIM_ALL_FUNCTION = """
local function claim_all(first, offset, owner, lease_ms, claimable)
  local claimed = {}
  for i = first, #KEYS do
    local channel = ARGV[i + offset]
    if claim(KEYS[1], KEYS[i], channel, owner, lease_ms, claimable)[1] == 'granted' then
      table.insert(claimed, channel)
    end
  end
  return claimed
end
"""
# A stored event record stays (another replica accepted the event meanwhile).
_RECORD_FUNCTION = """
local function record(event_key, ttl, ...)
  if redis.call('EXISTS', event_key) == 0 then
    redis.call('HSET', event_key, ...)
    redis.call('EXPIRE', event_key, ttl)
  end
end
"""
# The shipment's state only moves forward in time, whatever order replicas write in.
_ADVANCE_FUNCTION = """
local function advance(shipment_key, status, occurred_at, ttl)
  local newest = redis.call('HGET', shipment_key, 'occurred_at')
  if (not newest) or tonumber(newest) <= tonumber(occurred_at) then
    redis.call('HSET', shipment_key, 'status', status, 'occurred_at', occurred_at)
    redis.call('EXPIRE', shipment_key, ttl)
  end
end
"""
_FUNCTIONS = (
    _CLAIM_FUNCTION + _CLAIMABLE_SET + _CLAIM_ALL_FUNCTION + _RECORD_FUNCTION + _ADVANCE_FUNCTION
)
# KEYS: event hash, claim key. ARGV: channel, owner, lease ms, the claimable outcomes (JSON).
_CLAIM = (
    _CLAIM_FUNCTION
    + _CLAIMABLE_SET
    + "return claim(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3], claimable_set(ARGV[4]))"
)
# KEYS: event hash, shipment hash, one claim key per channel. ARGV: channels JSON, status,
# occurred_at, ttl seconds, owner, lease ms, the claimable outcomes (JSON), the shipment id,
# then the channels in the claim keys' order. Returns the channels claimed.
_ACCEPT = (
    _FUNCTIONS
    + """
record(KEYS[1], ARGV[4], 'channels', ARGV[1], 'shipment', ARGV[8])
advance(KEYS[2], ARGV[2], ARGV[3], ARGV[4])
return claim_all(3, 6, ARGV[5], ARGV[6], claimable_set(ARGV[7]))
"""
)
# The cluster's first step of ``accept``: the same, without the shipment hash, and the state
# kept in the record. KEYS: event hash, one claim key per channel. ARGV as ``_ACCEPT``'s.
_ACCEPT_EVENT = (
    _FUNCTIONS
    + """
record(KEYS[1], ARGV[4], 'channels', ARGV[1], 'shipment', ARGV[8],
  'status', ARGV[2], 'occurred_at', ARGV[3])
return claim_all(2, 7, ARGV[5], ARGV[6], claimable_set(ARGV[7]))
"""
)
# The cluster's second step. KEYS: shipment hash. ARGV: status, occurred_at, ttl seconds.
# Returns the shipment's newest state.
_ADVANCE = (
    _ADVANCE_FUNCTION
    + """
advance(KEYS[1], ARGV[1], ARGV[2], ARGV[3])
return redis.call('HMGET', KEYS[1], 'status', 'occurred_at')
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
            raise StoreError(f"Redis: {describe(exc)}") from exc

    return wrapped


def open_redis_store(
    url: str, ttl_seconds: float, prefix: str, options: RedisOptions
) -> RedisStore:
    """The store on the server or cluster ``url`` and ``options`` describe."""
    client = connect(url, options)
    if options.redis_cluster:
        return RedisClusterStore(client, ttl_seconds, prefix)
    return RedisStore(client, ttl_seconds, prefix)


class RedisStore:
    """The store on one server (or a primary with replicas behind a failover proxy)."""

    def __init__(self, client: Client, ttl_seconds: float, prefix: str) -> None:
        self._redis = client
        self._ttl = max(1, int(ttl_seconds))
        self._prefix = prefix
        self._accept_script = client.register_script(_ACCEPT)
        self._claim_script = client.register_script(_CLAIM)
        self._mark_done_script = client.register_script(_MARK_DONE)

    def _event_key(self, event_id: str) -> str:
        return f"{self._prefix}evt:{event_id}"

    def _shipment_key(self, shipment_id: str) -> str:
        return f"{self._prefix}shp:{shipment_id}"

    def _claim_key(self, event_id: str, channel: str) -> str:
        return f"{self._prefix}claim:{event_id}:{channel}"

    async def check(self) -> None:
        await check(self._redis)

    @_passing_as_store_error
    async def load(self, event_id: str, shipment_id: str) -> Snapshot:
        event, shipment = await self._read(event_id, shipment_id)
        return Snapshot(
            event=_event_record(event) if event else None,
            shipment=_shipment_state(shipment),
        )

    async def _read(self, event_id: str, shipment_id: str) -> tuple[dict[str, str], ...]:
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(self._event_key(event_id))
            pipe.hgetall(self._shipment_key(shipment_id))
            return tuple(await pipe.execute())

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
        args = self._accept_args(channels, shipment_id, state, owner, lease)
        return tuple(await self._accept_script(keys=keys, args=args))

    def _accept_args(
        self,
        channels: tuple[str, ...],
        shipment_id: str,
        state: ShipmentState,
        owner: str,
        lease: float,
    ) -> list[str | int]:
        """``ARGV`` of both accept scripts."""
        return [
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


class RedisClusterStore(RedisStore):
    """The store on a Redis Cluster: keys hash-tagged per event and per shipment, ``accept``
    in two steps (the module docstring says why and what makes it safe)."""

    def __init__(self, client: Client, ttl_seconds: float, prefix: str) -> None:
        super().__init__(client, ttl_seconds, prefix)
        self._accept_event_script = client.register_script(_ACCEPT_EVENT)
        self._advance_script = client.register_script(_ADVANCE)

    def _event_key(self, event_id: str) -> str:
        return f"{self._prefix}{{evt:{event_id}}}"

    def _shipment_key(self, shipment_id: str) -> str:
        return f"{self._prefix}{{shp:{shipment_id}}}"

    def _claim_key(self, event_id: str, channel: str) -> str:
        # begins with the event key, so its hash tag is the event key's whatever the id holds
        return f"{self._event_key(event_id)}:claim:{channel}"

    @_passing_as_store_error
    async def load(self, event_id: str, shipment_id: str) -> Snapshot:
        event, shipment = await self._read(event_id, shipment_id)
        record = _event_record(event) if event else None
        newest = _shipment_state(shipment)
        accepted = _shipment_state(event)
        if (
            record is not None
            and record.shipment_id == shipment_id
            and accepted is not None
            and (newest is None or newest.occurred_at < accepted.occurred_at)
        ):  # the second step of its accept did not happen
            newest = await self._advance(shipment_id, accepted)
        return Snapshot(event=record, shipment=newest)

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
        keys = [self._event_key(event_id), *(self._claim_key(event_id, c) for c in channels)]
        args = self._accept_args(channels, shipment_id, state, owner, lease)
        claimed = tuple(await self._accept_event_script(keys=keys, args=args))
        await self._advance(shipment_id, state)
        return claimed

    async def _advance(self, shipment_id: str, state: ShipmentState) -> ShipmentState | None:
        keys = [self._shipment_key(shipment_id)]
        args: list[str | int] = [state.status, repr(state.occurred_at), self._ttl]
        status, occurred_at = await self._advance_script(keys=keys, args=args)
        return _shipment_state({"status": status, "occurred_at": occurred_at})


def _lease_ms(lease: float) -> int:
    return max(1, int(lease * 1000))  # SET's PX takes a positive integer


def _event_record(fields: dict[str, str]) -> EventRecord:
    done = {k.removeprefix("done:"): v for k, v in fields.items() if k.startswith("done:")}
    return EventRecord(tuple(json.loads(fields["channels"])), done, fields.get("shipment"))


def _shipment_state(fields: Mapping[str, str | None]) -> ShipmentState | None:
    """The state in a shipment hash, or the one an event record was accepted with."""
    status, occurred_at = fields.get("status"), fields.get("occurred_at")
    if status is None or occurred_at is None:
        return None
    return ShipmentState(status, float(occurred_at))
