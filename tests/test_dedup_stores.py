"""Every dedup store keeps the same contract; SQLite and Redis keep it across a reopen."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from pydantic import SecretStr

from tests.redis_servers import TlsServer
from worker.dedup import DedupStore, EventRecord, ShipmentState, Snapshot, open_store, sqlite
from worker.dedup.redis_client import UrlOnly
from worker.dedup.resilient import Resilient
from worker.dedup.store import ChannelOutcome, Claim, Preference, StoreError, StoreUnavailable

OpenStore = Callable[..., Awaitable[DedupStore]]


@dataclass(frozen=True)
class Target:
    """A store to open: its URL, and how to reach it beyond the URL (Redis only)."""

    url: str
    redis: UrlOnly | None = None


@pytest.fixture(params=["memory", "sqlite", "redis", "redis-cluster", "redis-tls-acl"])
def store_target(request: pytest.FixtureRequest, tmp_path: Path) -> Target:
    if request.param == "memory":
        return Target("memory://")
    if request.param == "sqlite":
        return Target(f"sqlite:///{tmp_path / 'dedup.sqlite3'}")
    if request.param == "redis-cluster":
        return Target(request.getfixturevalue("redis_cluster_url"), UrlOnly(redis_cluster=True))
    if request.param == "redis-tls-acl":
        server: TlsServer = request.getfixturevalue("redis_tls")
        options = UrlOnly(
            redis_username=server.username,
            redis_password=SecretStr(server.password),
            redis_ca_file=server.ca_file,
        )
        return Target(f"rediss://127.0.0.1:{server.port}/0", options)
    return Target(request.getfixturevalue("redis_url"))


@pytest.fixture
async def open_fresh(store_target: Target) -> AsyncIterator[OpenStore]:
    """Factory opening the parametrized store (checked, as at start-up); calling it again
    reopens the same data."""
    opened: list[DedupStore] = []
    prefix = uuid.uuid4().hex[:8]

    async def make(ttl: float = 3600) -> DedupStore:
        # tests share one Redis
        store = open_store(store_target.url, ttl, f"test-{prefix}:", store_target.redis)
        opened.append(store)
        await store.check()
        return store

    yield make
    for store in opened:
        await store.close()
    # preferences never expire: leave nothing in the shared Redis (the cluster and the TLS
    # server are this session's own)
    if store_target.redis is None and store_target.url.startswith("redis"):
        client = redis.Redis.from_url(store_target.url)
        client.delete(*client.scan_iter(match=f"test-{prefix}:*"), "-")
        client.close()


async def test_unknown_event_and_shipment_load_empty(open_fresh: OpenStore) -> None:
    """Nothing remembered yet: no event record, no shipment state."""
    store = await open_fresh()
    assert await store.load("e1", "s1") == Snapshot(event=None, shipment=None)


async def test_accept_then_mark_done_is_remembered(open_fresh: OpenStore) -> None:
    """Accepting records the planned channels and the shipment's newest state and claims every
    channel; marking a channel done leaves only the other one pending."""
    store = await open_fresh()
    state = ShipmentState("shipped", 1000.5)
    assert await store.accept("e1", ("email", "sms"), "s1", state, "worker-a/1", 60) == (
        "email",
        "sms",
    )
    await store.mark_done("e1", "email", "sent")
    snapshot = await store.load("e1", "s1")
    assert snapshot.shipment == ShipmentState("shipped", 1000.5)
    assert snapshot.event == EventRecord(("email", "sms"), {"email": "sent"}, "s1")
    assert snapshot.event.pending == ("sms",)


async def test_a_newer_accept_replaces_the_shipment_state(open_fresh: OpenStore) -> None:
    """The shipment keeps the state of the last accepted event only."""
    store = await open_fresh()
    await store.accept("e1", ("email",), "s1", ShipmentState("shipped", 1000.0), "w/1", 60)
    assert await store.accept("e2", (), "s1", ShipmentState("delivered", 2000.0), "w/1", 60) == ()
    snapshot = await store.load("e2", "s1")
    assert snapshot.shipment == ShipmentState("delivered", 2000.0)
    assert snapshot.event == EventRecord((), {}, "s1")


async def test_entries_expire_after_the_ttl(open_fresh: OpenStore) -> None:
    """After DEDUP_TTL the event and shipment are forgotten, and accepting the event again
    starts a fresh record."""
    store = await open_fresh(ttl=1)
    await store.accept("e1", ("email",), "s1", ShipmentState("shipped", 1000.0), "w/1", 0.5)
    await store.mark_done("e1", "email", "sent")
    assert (await store.load("e1", "s1")).event is not None
    await asyncio.sleep(1.6)
    assert await store.load("e1", "s1") == Snapshot(event=None, shipment=None)
    state = ShipmentState("shipped", 1000.0)
    assert await store.accept("e1", ("email",), "s1", state, "w/1", 60) == ("email",)
    assert (await store.load("e1", "s1")).event == EventRecord(("email",), {}, "s1")


@pytest.mark.parametrize(
    "store_target", ["sqlite", "redis", "redis-cluster", "redis-tls-acl"], indirect=True
)
async def test_persistent_stores_survive_a_reopen(open_fresh: OpenStore) -> None:
    """What SQLite and Redis remember is still there for a new store on the same data."""
    first = await open_fresh()
    await first.accept("e1", ("email", "sms"), "s1", ShipmentState("shipped", 1.0), "w/1", 60)
    await first.mark_done("e1", "sms", "dead_lettered")
    await first.close()
    second = await open_fresh()
    snapshot = await second.load("e1", "s1")
    assert snapshot.event == EventRecord(("email", "sms"), {"sms": "dead_lettered"}, "s1")
    assert snapshot.shipment == ShipmentState("shipped", 1.0)


async def test_an_event_accepted_meanwhile_keeps_its_record(open_fresh: OpenStore) -> None:
    """Two workers raced to accept one event (a rebalance): the second accept keeps the
    first's record and outcomes and claims nothing the first holds or finished."""
    store = await open_fresh()
    state = ShipmentState("shipped", 1.0)
    assert await store.accept("e1", ("email", "sms"), "s1", state, "worker-a/1", 60) == (
        "email",
        "sms",
    )
    await store.mark_done("e1", "email", "sent")
    assert await store.accept("e1", ("email", "sms"), "s1", state, "worker-b/1", 60) == ()
    assert (await store.load("e1", "s1")).event == EventRecord(
        ("email", "sms"), {"email": "sent"}, "s1"
    )
    assert await store.claim("e1", "sms", "worker-b/1", lease=60) == Claim(
        False, holder="worker-a/1"
    )


async def test_a_claim_is_exclusive_until_its_lease_ends(open_fresh: OpenStore) -> None:
    """Another worker's live claim (taken by accept, renewed by claim) is refused with its
    holder; once the lease ends, it is taken over."""
    store = await open_fresh()
    await store.accept("e1", ("email",), "s1", ShipmentState("shipped", 1.0), "worker-a/1", 1)
    assert await store.claim("e1", "email", "worker-b/1", lease=1) == Claim(
        False, holder="worker-a/1"
    )
    assert await store.claim("e1", "email", "worker-a/1", lease=1) == Claim(True)
    assert await store.claim("e1", "email", "worker-b/1", lease=1) == Claim(
        False, holder="worker-a/1"
    )
    await asyncio.sleep(1.2)
    assert await store.claim("e1", "email", "worker-b/1", lease=1) == Claim(True)


async def test_a_restarted_worker_takes_over_its_own_claims_at_once(open_fresh: OpenStore) -> None:
    """A new incarnation of the same worker id takes a claim its crashed predecessor held;
    the holder renews its own claim."""
    store = await open_fresh()
    await store.accept("e1", ("sms",), "s1", ShipmentState("shipped", 1.0), "worker-a/old", 60)
    assert await store.claim("e1", "sms", "worker-a/old", lease=60) == Claim(True)
    assert await store.claim("e1", "sms", "worker-a/new", lease=60) == Claim(True)
    assert await store.claim("e1", "sms", "worker-b/1", lease=60) == Claim(
        False, holder="worker-a/new"
    )


async def test_a_done_channel_answers_its_outcome_and_reopen_forgets_it(
    open_fresh: OpenStore,
) -> None:
    """After mark_done a claim answers the outcome (and the claim is gone); reopen makes the
    channel claimable again."""
    store = await open_fresh()
    await store.accept("e1", ("email", "sms"), "s1", ShipmentState("shipped", 1.0), "w-a/1", 60)
    await store.mark_done("e1", "email", "dead_lettered")
    assert await store.claim("e1", "email", "worker-b/1", lease=60) == Claim(
        False, outcome="dead_lettered"
    )
    await store.reopen("e1", "email")
    assert (await store.load("e1", "s1")).event == EventRecord(("email", "sms"), {}, "s1")
    assert await store.claim("e1", "email", "worker-b/1", lease=60) == Claim(True)


async def test_a_deferred_channel_stays_claimable_for_its_retry(open_fresh: OpenStore) -> None:
    """A channel handed to the retry topic is not pending for redeliveries of the event, but
    its retry can still claim it."""
    store = await open_fresh()
    await store.accept("e1", ("sms",), "s1", ShipmentState("shipped", 1.0), "worker-b/1", 60)
    await store.mark_done("e1", "sms", "deferred")
    assert (await store.load("e1", "s1")).event.pending == ()  # type: ignore[union-attr]
    assert await store.claim("e1", "sms", "worker-a/1", lease=60) == Claim(True)


async def test_the_shipment_state_never_moves_back_in_time(open_fresh: OpenStore) -> None:
    """An older event accepted after a newer one (replicas racing) leaves the newer state."""
    store = await open_fresh()
    await store.accept("e2", ("email",), "s1", ShipmentState("delivered", 2000.0), "w/1", 60)
    await store.accept("e1", ("email",), "s1", ShipmentState("in_transit", 1000.0), "w/1", 60)
    assert (await store.load("e1", "s1")).shipment == ShipmentState("delivered", 2000.0)


async def test_a_claim_without_an_event_record_is_exclusive(open_fresh: OpenStore) -> None:
    """A retry whose event record is gone (expired, or another store) still claims its
    channel against other workers; marking it done releases the claim and, with no record
    to keep it in, remembers nothing."""
    store = await open_fresh()
    assert await store.claim("e9", "sms", "worker-a/1", lease=60) == Claim(True)
    assert await store.claim("e9", "sms", "worker-b/1", lease=60) == Claim(
        False, holder="worker-a/1"
    )
    await store.mark_done("e9", "sms", "sent")
    assert await store.claim("e9", "sms", "worker-b/1", lease=60) == Claim(True)
    assert await store.load("e9", "s9") == Snapshot(event=None, shipment=None)


# A child process writes through the store, reporting each write once it returned, until it
# is killed; argv: the file's path.
_WRITER = """
import asyncio, sys
from worker.dedup import ShipmentState, open_store

async def one(store, i):
    state = ShipmentState("shipped", 1.0)
    assert await store.accept(f"e{i}", ("email",), f"s{i}", state, "w/1", 60) == ("email",)
    print("accepted", i, flush=True)
    assert (await store.claim(f"e{i}", "email", "w/2", 60)).granted  # a restarted w takes over
    print("claimed", i, flush=True)
    await store.mark_done(f"e{i}", "email", "sent")
    print("done", i, flush=True)

async def main():
    store = open_store("sqlite:///" + sys.argv[1], 3600)
    for batch in range(10**6):
        await asyncio.gather(*(one(store, batch * 50 + i) for i in range(50)))

asyncio.run(main())
"""


def test_sqlite_writes_survive_a_kill_once_they_return(tmp_path: Path) -> None:
    """Group commit: a write returns only once its change is committed, so every write the
    process reported survives a SIGKILL right after (50 concurrent writers share commits)."""
    import sqlite3
    import subprocess
    import sys

    path = tmp_path / "dedup.sqlite3"
    child = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(path)], stdout=subprocess.PIPE, text=True
    )
    reported: dict[str, set[int]] = {"accepted": set(), "claimed": set(), "done": set()}
    try:
        assert child.stdout is not None
        while len(reported["accepted"]) < 425:
            line = child.stdout.readline()
            assert line, f"the writer stopped, exit code {child.poll()}"
            step, number = line.split()
            reported[step].add(int(number))
    finally:
        child.kill()
        child.wait()
    assert reported["accepted"] - reported["done"], "the kill should land amid writes"
    db = sqlite3.connect(path)
    try:
        rows = {
            int(event_id[1:]): (json.loads(done), json.loads(claims))
            for event_id, done, claims in db.execute("SELECT event_id, done, claims FROM events")
        }
    finally:
        db.close()
    for i in reported["accepted"]:
        assert i in rows, f"e{i} was reported accepted but is not in the file"
        done, claims = rows[i]
        if i in reported["done"]:
            assert (done, claims) == ({"email": "sent"}, {}), i
        elif i in reported["claimed"]:
            assert claims["email"][0] == "w/2", i
        else:
            assert claims["email"][0] in ("w/1", "w/2"), i


async def test_a_second_process_on_the_same_sqlite_file_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One worker per SQLite file: a second store on it fails with an error naming the file,
    and once the first is closed the file opens again with what it remembered."""
    from worker.dedup import sqlite

    monkeypatch.setattr(sqlite, "LOCK_WAIT", 0.2)
    path = tmp_path / "dedup.sqlite3"
    first = open_store(f"sqlite:///{path}", 3600)
    await first.accept("e1", ("email",), "s1", ShipmentState("shipped", 1.0), "w/1", 60)
    with pytest.raises(StoreUnavailable, match=f"{path} is in use by another process"):
        open_store(f"sqlite:///{path}", 3600)
    await first.close()
    second = open_store(f"sqlite:///{path}", 3600)
    try:
        assert (await second.load("e1", "s1")).event == EventRecord(("email",), {}, "s1")
    finally:
        await second.close()


# The SQLite schema up to b3704d1: claims in a table of their own, user_version 0.
_SCHEMA_1 = """
CREATE TABLE events (event_id TEXT PRIMARY KEY, channels TEXT NOT NULL,
    done TEXT NOT NULL DEFAULT '{}', expires_at REAL NOT NULL);
CREATE TABLE shipments (shipment_id TEXT PRIMARY KEY, status TEXT NOT NULL,
    occurred_at REAL NOT NULL, expires_at REAL NOT NULL);
CREATE TABLE claims (event_id TEXT NOT NULL, channel TEXT NOT NULL, owner TEXT NOT NULL,
    expires_at REAL NOT NULL, PRIMARY KEY (event_id, channel));
CREATE INDEX events_expiry ON events (expires_at);
CREATE INDEX shipments_expiry ON shipments (expires_at);
"""


async def test_a_file_of_the_older_schema_keeps_its_records_and_claims(tmp_path: Path) -> None:
    """A store file written before the claims moved into the events row opens with every
    record, outcome and live claim, a claim of an event without a record included."""
    import sqlite3

    path = tmp_path / "dedup.sqlite3"
    old = sqlite3.connect(path)
    old.executescript(_SCHEMA_1)
    later = time.time() + 600
    old.executemany(
        "INSERT INTO events VALUES (?, ?, ?, ?)",
        [("e1", '["email", "sms"]', '{"email":"sent"}', later), ("e2", '["email"]', "{}", later)],
    )
    old.execute("INSERT INTO shipments VALUES ('s1', 'shipped', 1.0, ?)", (later,))
    old.executemany(
        "INSERT INTO claims VALUES (?, ?, ?, ?)",
        [("e1", "sms", "worker-a/1", later), ("e3", "sms", "worker-a/1", later)],
    )
    old.commit()
    old.close()
    store = open_store(f"sqlite:///{path}", 3600)
    try:
        snapshot = await store.load("e1", "s1")
        assert snapshot.event == EventRecord(("email", "sms"), {"email": "sent"})
        assert snapshot.shipment == ShipmentState("shipped", 1.0)
        assert await store.claim("e1", "email", "worker-b/1", 60) == Claim(False, outcome="sent")
        for event_id in ("e1", "e3"):
            assert await store.claim(event_id, "sms", "worker-b/1", 60) == Claim(
                False, holder="worker-a/1"
            )
        assert await store.claim("e2", "email", "worker-b/1", 60) == Claim(True)
        assert (await store.load("e3", "s3")).event is None
    finally:
        await store.close()
    db = sqlite3.connect(path)
    try:
        tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master")}
        assert "claims" not in tables
        assert db.execute("PRAGMA user_version").fetchone() == (sqlite.SCHEMA_VERSION,)
    finally:
        db.close()


async def test_claims_an_older_worker_wrote_after_the_migration_are_kept(tmp_path: Path) -> None:
    """A deploy rolled back after the migration: the older worker made its claims table
    again; the next start moves those claims into the rows as well."""
    import sqlite3

    path = tmp_path / "dedup.sqlite3"
    store = open_store(f"sqlite:///{path}", 3600)
    await store.accept("e1", ("sms",), "s1", ShipmentState("shipped", 1.0), "worker-a/1", 60)
    await store.mark_done("e1", "sms", "deferred")
    await store.close()
    old = sqlite3.connect(path)
    old.execute(_SCHEMA_1.split(";")[2])  # the claims table, as the older worker makes it
    old.execute("INSERT INTO claims VALUES ('e1', 'sms', 'worker-a/2', ?)", (time.time() + 600,))
    old.commit()
    old.close()
    store = open_store(f"sqlite:///{path}", 3600)
    try:
        assert await store.claim("e1", "sms", "worker-b/1", 60) == Claim(False, holder="worker-a/2")
    finally:
        await store.close()


def test_a_file_that_is_not_a_database_stops_start_up_naming_it(tmp_path: Path) -> None:
    """DEDUP_URL pointing at some other file is a clear start-up error, not a traceback."""
    path = tmp_path / "dedup.sqlite3"
    path.write_bytes(b"not a database, " * 512)
    with pytest.raises(StoreUnavailable, match=f"cannot open {path}: file is not a database"):
        open_store(f"sqlite:///{path}", 3600)


async def test_an_event_record_names_its_shipment(open_fresh: OpenStore) -> None:
    """The record keeps the shipment it was accepted for (the pipeline compares it with a
    redelivery's to find an event_id reused for another shipment), and an accept for another
    shipment does not overwrite it."""
    store = await open_fresh()
    await store.accept("e1", ("email",), "s1", ShipmentState("shipped", 1.0), "w/1", 60)
    await store.accept("e1", ("email",), "s2", ShipmentState("shipped", 2.0), "w/1", 60)
    assert (await store.load("e1", "s2")).event == EventRecord(("email",), {}, "s1")


async def test_outcomes_are_the_enums_words(open_fresh: OpenStore) -> None:
    """Each ChannelOutcome is stored as its word; only the claimable ones (deferred, held) let a
    claim through."""
    store = await open_fresh()
    channels = ("email", "sms")
    await store.accept("e1", channels, "s1", ShipmentState("shipped", 1.0), "w/1", 60)
    for outcome in ChannelOutcome:
        await store.mark_done("e1", "email", outcome)
        assert (await store.load("e1", "s1")).event == EventRecord(
            channels, {"email": outcome.value}, "s1"
        )
        claim = await store.claim("e1", "email", "other/1", 60)
        if outcome in (ChannelOutcome.DEFERRED, ChannelOutcome.HELD):
            assert claim == Claim(True)
            await store.mark_done("e1", "email", outcome)  # drop the claim again
        else:
            assert claim == Claim(False, outcome=outcome.value)


_SCHEMA_2 = """
CREATE TABLE events (event_id TEXT PRIMARY KEY, channels TEXT NOT NULL,
    done TEXT NOT NULL DEFAULT '{}', expires_at REAL NOT NULL,
    claims TEXT NOT NULL DEFAULT '{}');
CREATE TABLE shipments (shipment_id TEXT PRIMARY KEY, status TEXT NOT NULL,
    occurred_at REAL NOT NULL, expires_at REAL NOT NULL);
PRAGMA user_version = 2;
"""


async def test_a_file_without_shipments_in_its_records_is_migrated(tmp_path: Path) -> None:
    """A store file of the schema before records named their shipment opens with its records
    (their shipment unknown, so never taken for a conflict) and its claims."""
    import sqlite3 as sqlite3_module

    path = tmp_path / "dedup.sqlite3"
    old = sqlite3_module.connect(path)
    old.executescript(_SCHEMA_2)
    later = time.time() + 600
    old.execute(
        'INSERT INTO events VALUES (\'e1\', \'["email", "sms"]\', \'{"email":"sent"}\', ?,'
        " json_object('sms', json_array('worker-a/1', ?)))",
        (later, later),
    )
    old.commit()
    old.close()
    store = open_store(f"sqlite:///{path}", 3600)
    try:
        assert (await store.load("e1", "s1")).event == EventRecord(
            ("email", "sms"), {"email": "sent"}, None
        )
        assert await store.claim("e1", "sms", "worker-b/1", 60) == Claim(False, holder="worker-a/1")
        await store.accept("e2", ("email",), "s2", ShipmentState("shipped", 1.0), "w/1", 60)
        assert (await store.load("e2", "s2")).event == EventRecord(("email",), {}, "s2")
    finally:
        await store.close()


async def test_redis_out_of_reach_raises_store_error() -> None:
    """A Redis that does not answer makes every call raise StoreError (a passing failure the
    worker waits out), not the client library's own exception."""
    from tests.conftest import _free_port

    store = open_store(f"redis://127.0.0.1:{_free_port()}/0", 3600)
    try:
        with pytest.raises(StoreError, match="Redis"):
            await store.load("e1", "s1")
        with pytest.raises(StoreError):
            await store.mark_done("e1", "email", ChannelOutcome.SENT)
        with pytest.raises(StoreError):
            await store.check()
    finally:
        await store.close()


async def test_a_store_in_working_order_passes_its_check(open_fresh: OpenStore) -> None:
    """``check`` (start-up's, and through ``Resilient.ping`` the readiness check's) returns for
    a store in working order, and leaves its records alone."""
    store = await open_fresh()
    await store.accept("e1", ("email",), "s1", ShipmentState("shipped", 1.0), "w/1", 60)
    await store.check()
    assert (await store.load("e1", "s1")).event == EventRecord(("email",), {}, "s1")


async def test_the_readiness_ping_of_a_store_out_of_reach_fails_at_once() -> None:
    """``Resilient`` waits out an outage for every call but ``ping``: /readyz asks how the
    store is now, and a Redis out of reach answers StoreError at once."""
    from tests.conftest import _free_port

    store = Resilient(open_store(f"redis://127.0.0.1:{_free_port()}/0", 3600))
    try:
        async with asyncio.timeout(10):
            with pytest.raises(StoreError):
                await store.ping()
    finally:
        await store.close()


async def test_an_opt_out_is_found_by_any_of_its_subjects_and_channel(
    open_fresh: OpenStore,
) -> None:
    """An opt-out answers for its own subject and channel only; a subject without one, or
    opted in, answers None."""
    store = await open_fresh()
    out = Preference(True, 1000.0, "provider")
    assert await store.set_preference("phone:+84901234567", "sms", out)
    assert await store.set_preference("customer:C-1", "email", Preference(False, 1000.0, "topic"))
    assert await store.opted_out(("customer:C-1", "phone:+84901234567"), "sms") == out
    assert await store.opted_out(("phone:+84901234567",), "email") is None
    assert await store.opted_out(("customer:C-1", "email:an@example.com"), "email") is None
    assert await store.opted_out(("phone:+15005550006",), "sms") is None


async def test_the_newest_preference_wins_whatever_order_it_arrives_in(
    open_fresh: OpenStore,
) -> None:
    """An opt-in newer than the opt-out lifts it; an older write (a replayed preferences
    record, a late STOP) changes nothing and says so."""
    store = await open_fresh()
    subject = ("phone:+84901234567",)
    assert await store.set_preference(subject[0], "sms", Preference(True, 2000.0, "provider"))
    assert not await store.set_preference(subject[0], "sms", Preference(False, 1000.0, "topic"))
    assert await store.opted_out(subject, "sms") == Preference(True, 2000.0, "provider")
    assert await store.set_preference(subject[0], "sms", Preference(False, 3000.0, "topic"))
    assert await store.opted_out(subject, "sms") is None
    assert not await store.set_preference(subject[0], "sms", Preference(True, 2500.0, "provider"))
    assert await store.opted_out(subject, "sms") is None


async def test_preferences_outlive_the_ttl(open_fresh: OpenStore) -> None:
    """An opt-out is not forgotten with the events: DEDUP_TTL does not apply to it."""
    store = await open_fresh(ttl=1)
    await store.set_preference("email:an@example.com", "email", Preference(True, 1.0, "topic"))
    await asyncio.sleep(1.6)
    await store.load("e1", "s1")  # gives SQLite its chance to purge
    found = await store.opted_out(("email:an@example.com",), "email")
    assert found == Preference(True, 1.0, "topic")


@pytest.mark.parametrize("store_target", ["sqlite", "redis", "redis-cluster"], indirect=True)
async def test_persistent_stores_keep_preferences_across_a_reopen(open_fresh: OpenStore) -> None:
    """SQLite and Redis remember an opt-out for a new store on the same data."""
    first = await open_fresh()
    await first.set_preference("phone:+84901234567", "sms", Preference(True, 5.0, "provider"))
    await first.close()
    second = await open_fresh()
    found = await second.opted_out(("phone:+84901234567",), "sms")
    assert found == Preference(True, 5.0, "provider")
