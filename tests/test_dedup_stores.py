"""Every dedup store keeps the same contract; SQLite and Redis keep it across a reopen."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from worker.dedup import DedupStore, EventRecord, ShipmentState, Snapshot, open_store

OpenStore = Callable[..., Awaitable[DedupStore]]


@pytest.fixture(params=["memory", "sqlite", "redis"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "memory":
        return "memory://"
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'dedup.sqlite3'}"
    url: str = request.getfixturevalue("redis_url")
    return url


@pytest.fixture
async def open_fresh(store_url: str) -> AsyncIterator[OpenStore]:
    """Factory opening the parametrized store; calling it again reopens the same data."""
    opened: list[DedupStore] = []
    url = store_url
    prefix = uuid.uuid4().hex[:8]

    async def make(ttl: float = 3600) -> DedupStore:
        store = open_store(url, ttl, key_prefix=f"test-{prefix}:")  # tests share one Redis
        opened.append(store)
        return store

    yield make
    for store in opened:
        await store.close()


async def test_unknown_event_and_shipment_load_empty(open_fresh: OpenStore) -> None:
    """Nothing remembered yet: no event record, no shipment state."""
    store = await open_fresh()
    assert await store.load("e1", "s1") == Snapshot(event=None, shipment=None)


async def test_accept_then_mark_done_is_remembered(open_fresh: OpenStore) -> None:
    """Accepting records the planned channels and the shipment's newest state; marking a
    channel done leaves only the other one pending."""
    store = await open_fresh()
    await store.accept("e1", ("email", "sms"), "s1", ShipmentState("shipped", 1000.5))
    await store.mark_done("e1", "email", "sent")
    snapshot = await store.load("e1", "s1")
    assert snapshot.shipment == ShipmentState("shipped", 1000.5)
    assert snapshot.event == EventRecord(("email", "sms"), {"email": "sent"})
    assert snapshot.event.pending == ("sms",)


async def test_a_newer_accept_replaces_the_shipment_state(open_fresh: OpenStore) -> None:
    """The shipment keeps the state of the last accepted event only."""
    store = await open_fresh()
    await store.accept("e1", ("email",), "s1", ShipmentState("shipped", 1000.0))
    await store.accept("e2", (), "s1", ShipmentState("delivered", 2000.0))
    snapshot = await store.load("e2", "s1")
    assert snapshot.shipment == ShipmentState("delivered", 2000.0)
    assert snapshot.event == EventRecord((), {})


async def test_entries_expire_after_the_ttl(open_fresh: OpenStore) -> None:
    """After DEDUP_TTL the event and shipment are forgotten."""
    store = await open_fresh(ttl=1)
    await store.accept("e1", ("email",), "s1", ShipmentState("shipped", 1000.0))
    assert (await store.load("e1", "s1")).event is not None
    await asyncio.sleep(1.6)
    assert await store.load("e1", "s1") == Snapshot(event=None, shipment=None)


@pytest.mark.parametrize("store_url", ["sqlite", "redis"], indirect=True)
async def test_persistent_stores_survive_a_reopen(open_fresh: OpenStore) -> None:
    """What SQLite and Redis remember is still there for a new store on the same data."""
    first = await open_fresh()
    await first.accept("e1", ("email", "sms"), "s1", ShipmentState("shipped", 1.0))
    await first.mark_done("e1", "sms", "dead_lettered")
    await first.close()
    second = await open_fresh()
    snapshot = await second.load("e1", "s1")
    assert snapshot.event == EventRecord(("email", "sms"), {"sms": "dead_lettered"})
    assert snapshot.shipment == ShipmentState("shipped", 1.0)
