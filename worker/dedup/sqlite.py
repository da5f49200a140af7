"""The default store: one SQLite file, no other service needed.

Calls run directly on the event loop's thread: with WAL and ``synchronous=NORMAL`` (no fsync
per commit) a statement takes a few microseconds, less than a round trip to a worker thread
(about 90 us measured), and the connection never changes threads. WAL with
``synchronous=NORMAL`` keeps every committed write across a crash of the process, which is the
failure the offset bookkeeping guards against (not across a power cut). One worker process per
file, held in SQLite's exclusive locking mode (a second process fails at start-up); replicas
share Redis instead.

Group commit: a write runs at once inside the connection's open transaction and then waits for
that transaction's commit, which happens ``COMMIT_WINDOW`` after the first write that is not
yet committed, for every write made in between. Committing once per pass of the event loop
instead left 2-3 writes per commit under load: about 35 us a write alone, 17 at two a commit,
8 at eight, 5 at sixteen (``bench/micro.py``); the window costs each write at most 1 ms of
latency. A write method returns only when its change is durable; reads see every earlier
write of this process, committed or about to be. The steps of a claim run without an
``await`` between them, so no other task of this process interleaves.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

from worker.dedup.store import (
    CLAIMABLE,
    ChannelOutcome,
    Claim,
    EventRecord,
    Preference,
    ShipmentState,
    Snapshot,
    StoreError,
    StoreUnavailable,
    may_take_over,
)

PURGE_EVERY = 3600.0
COMMIT_WINDOW = 0.001  # seconds

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    event_id TEXT PRIMARY KEY,
    channels TEXT NOT NULL,
    done TEXT NOT NULL DEFAULT '{}',
    expires_at REAL NOT NULL,  -- 0: no record, a row for a retry's claim alone
    claims TEXT NOT NULL DEFAULT '{}',  -- channel -> [owner, lease end]
    shipment_id TEXT  -- NULL in rows of a version that did not keep it
);
CREATE TABLE IF NOT EXISTS shipments (
    shipment_id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    occurred_at REAL NOT NULL,
    expires_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS preferences (  -- kept without expiry: an opt-out outlives the TTL
    subject TEXT NOT NULL,
    channel TEXT NOT NULL,
    opted_out INTEGER NOT NULL,
    at REAL NOT NULL,
    source TEXT NOT NULL,
    PRIMARY KEY (subject, channel)
);
CREATE INDEX IF NOT EXISTS events_expiry ON events (expires_at);
CREATE INDEX IF NOT EXISTS shipments_expiry ON shipments (expires_at);
"""
# 3: the event's shipment in its row; 2: the claims in the events row (1, unnumbered: a
# claims table)
SCHEMA_VERSION = 3
LOCK_WAIT = 5.0  # seconds a second process waits for the file before start-up fails


class SqliteStore:
    def __init__(self, path: str, ttl_seconds: float) -> None:
        self._ttl = ttl_seconds
        self._db = _connect(path)
        self._purged_at = 0.0
        self._closed = False
        self._waiting: list[asyncio.Future[None]] = []
        self._commit_scheduled = False

    async def load(self, event_id: str, shipment_id: str) -> Snapshot:
        with _operational():
            return self._load(event_id, shipment_id)

    def _load(self, event_id: str, shipment_id: str) -> Snapshot:
        now = time.time()
        if now - self._purged_at > PURGE_EVERY:
            self._purge(now)
        channels, done, owner, status, occurred_at = self._db.execute(
            "SELECT e.channels, e.done, e.shipment_id, s.status, s.occurred_at FROM (SELECT 1)"
            " LEFT JOIN events AS e ON e.event_id = ? AND e.expires_at > ?"
            " LEFT JOIN shipments AS s ON s.shipment_id = ? AND s.expires_at > ?",
            (event_id, now, shipment_id, now),
        ).fetchone()
        return Snapshot(
            event=EventRecord(tuple(json.loads(channels)), json.loads(done), owner)
            if channels
            else None,
            shipment=ShipmentState(status, occurred_at) if status is not None else None,
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
        with _operational():
            claimed = self._accept(event_id, channels, shipment_id, state, owner, lease)
        await self._committed()
        return claimed

    def _accept(
        self,
        event_id: str,
        channels: tuple[str, ...],
        shipment_id: str,
        state: ShipmentState,
        owner: str,
        lease: float,
    ) -> tuple[str, ...]:
        """The channels claimed. A new event's row is written with every claim in it, in one
        statement; a stored row (another worker accepted the event meanwhile, or it expired,
        or a retry claimed a channel of it) takes the step by step path."""
        now = time.time()
        expires = now + self._ttl
        planned = json.dumps(channels)
        claims = {channel: [owner, now + lease] for channel in channels}
        inserted = self._db.execute(
            "INSERT INTO events (event_id, channels, done, expires_at, claims, shipment_id)"
            " VALUES (?, ?, '{}', ?, ?, ?) ON CONFLICT (event_id) DO NOTHING",
            (event_id, planned, expires, json.dumps(claims), shipment_id),
        ).rowcount
        self._db.execute(  # the state only moves forward in time
            "INSERT INTO shipments (shipment_id, status, occurred_at, expires_at)"
            " VALUES (?, ?, ?, ?) ON CONFLICT (shipment_id) DO UPDATE SET"
            " status = excluded.status, occurred_at = excluded.occurred_at,"
            " expires_at = excluded.expires_at"
            " WHERE excluded.occurred_at >= shipments.occurred_at"
            " OR shipments.expires_at <= ?",
            (shipment_id, state.status, state.occurred_at, expires, now),
        )
        if inserted == 1:
            return channels
        self._db.execute(  # a stored record stays, unless it has expired
            "UPDATE events SET channels = ?, done = '{}', expires_at = ?, shipment_id = ?"
            " WHERE event_id = ? AND expires_at <= ?",
            (planned, expires, shipment_id, event_id, now),
        )
        return tuple(c for c in channels if self._claim(event_id, c, owner, lease).granted)

    async def mark_done(self, event_id: str, channel: str, outcome: ChannelOutcome) -> None:
        with _operational():
            self._mark_done(event_id, channel, outcome)
        await self._committed()

    def _mark_done(self, event_id: str, channel: str, outcome: ChannelOutcome) -> None:
        """A row without a record (a retry's claim alone) keeps no outcome, as no store does."""
        self._db.execute(
            "UPDATE events SET claims = json_remove(claims, '$.' || ?),"
            " done = iif(expires_at = 0, done, json_set(done, '$.' || ?, ?)) WHERE event_id = ?",
            (channel, channel, outcome, event_id),
        )

    async def claim(self, event_id: str, channel: str, owner: str, lease: float) -> Claim:
        with _operational():
            claim = self._claim(event_id, channel, owner, lease)
        if claim.granted:
            await self._committed()
        return claim

    def _claim(self, event_id: str, channel: str, owner: str, lease: float) -> Claim:
        now = time.time()
        row = self._db.execute(
            "SELECT json_extract(done, '$.' || ?), json_extract(claims, '$.' || ?)"
            " FROM events WHERE event_id = ?",
            (channel, channel, event_id),
        ).fetchone()
        if row is None:  # a retry of an event whose record is gone: a row for the claim alone
            self._db.execute(
                "INSERT INTO events (event_id, channels, done, expires_at, claims)"
                " VALUES (?, '[]', '{}', 0, json_object(?, json_array(?, ?)))",
                (event_id, channel, owner, now + lease),
            )
            return Claim(True)
        done, held = row
        if done and done not in CLAIMABLE:
            return Claim(False, outcome=done)
        if held is not None:
            holder, until = json.loads(held)
            if until > now and not may_take_over(holder, owner):
                return Claim(False, holder=holder)
        self._db.execute(
            "UPDATE events SET claims = json_set(claims, '$.' || ?, json_array(?, ?))"
            " WHERE event_id = ?",
            (channel, owner, now + lease, event_id),
        )
        return Claim(True)

    async def reopen(self, event_id: str, channel: str) -> None:
        with _operational():
            self._reopen(event_id, channel)
        await self._committed()

    def _reopen(self, event_id: str, channel: str) -> None:
        self._db.execute(
            "UPDATE events SET done = json_remove(done, '$.' || ?) WHERE event_id = ?",
            (channel, event_id),
        )

    async def set_preference(self, subject: str, channel: str, preference: Preference) -> bool:
        with _operational():
            kept = self._db.execute(  # the newest choice wins
                "INSERT INTO preferences (subject, channel, opted_out, at, source)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (subject, channel) DO UPDATE SET"
                " opted_out = excluded.opted_out, at = excluded.at, source = excluded.source"
                " WHERE excluded.at >= preferences.at",
                (subject, channel, preference.opted_out, preference.at, preference.source),
            ).rowcount
        await self._committed()
        return kept == 1

    async def opted_out(self, subjects: tuple[str, ...], channel: str) -> Preference | None:
        marks = ", ".join("?" * len(subjects))
        with _operational():
            row = self._db.execute(
                f"SELECT at, source FROM preferences WHERE channel = ? AND opted_out"
                f" AND subject IN ({marks}) LIMIT 1",
                (channel, *subjects),
            ).fetchone()
        return Preference(True, row[0], row[1]) if row else None

    def _purge(self, now: float) -> None:
        self._db.execute(  # a row whose record expired stays while a claim in it is live
            "DELETE FROM events WHERE expires_at <= ? AND NOT EXISTS"
            " (SELECT 1 FROM json_each(events.claims) WHERE json_extract(value, '$[1]') > ?)",
            (now, now),
        )
        self._db.execute("DELETE FROM shipments WHERE expires_at <= ?", (now,))
        self._schedule_commit()
        self._purged_at = now

    async def _committed(self) -> None:
        """Return once the open transaction, with this task's write in it, is committed."""
        waiter = asyncio.get_running_loop().create_future()
        self._waiting.append(waiter)
        self._schedule_commit()
        await waiter

    def _schedule_commit(self) -> None:
        if not self._commit_scheduled:
            self._commit_scheduled = True
            asyncio.get_running_loop().call_later(COMMIT_WINDOW, self._commit)

    def _commit(self) -> None:
        self._commit_scheduled = False
        waiting, self._waiting = self._waiting, []
        if self._closed:
            return
        try:
            self._db.commit()
        except sqlite3.Error as exc:
            self._db.rollback()  # every write since the last commit is undone: each is retried
            for waiter in waiting:
                if not waiter.done():
                    waiter.set_exception(StoreError(f"SQLite commit: {exc}"))
            return
        for waiter in waiting:
            if not waiter.done():  # a cancelled waiter's write is committed all the same
                waiter.set_result(None)

    async def check(self) -> None:
        """The file was opened (or refused) when the store was built: it answers a query."""
        with _operational():
            self._db.execute("SELECT 1").fetchone()

    async def close(self) -> None:
        if self._closed:
            return
        self._commit()
        self._closed = True
        self._db.close()


@contextlib.contextmanager
def _operational() -> Iterator[None]:
    """SQLite's failures of the moment (a full disk, an I/O error, a commit rolled back) as
    ``StoreError``: the write did not take effect and may be made again."""
    try:
        yield
    except sqlite3.OperationalError as exc:
        raise StoreError(f"SQLite: {exc}") from exc


def _connect(path: str) -> sqlite3.Connection:
    """The store's connection, holding the file for this process alone (one worker per file:
    without other processes, no file locks are taken and released per transaction, and a
    second worker on the same file fails at start-up instead of sharing it)."""
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(path, isolation_level=None)
    except (OSError, sqlite3.Error) as exc:
        raise StoreUnavailable(f"cannot open {path}: {exc}") from exc
    try:
        db.execute(f"PRAGMA busy_timeout={int(LOCK_WAIT * 1000)}")
        db.execute("PRAGMA locking_mode=EXCLUSIVE")  # before WAL: no shared-memory index
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("BEGIN IMMEDIATE")  # takes the file's lock now, and keeps it
        db.executescript(_SCHEMA)  # commits
        _migrate(db)
    except sqlite3.DatabaseError as exc:  # locked, not a database, a failed migration
        db.close()
        if "locked" in str(exc):
            raise StoreUnavailable(
                f"{path} is in use by another process (one worker per SQLite file;"
                " replicas share a Redis store instead)"
            ) from exc
        raise StoreUnavailable(f"cannot open {path}: {exc}") from exc
    db.isolation_level = "DEFERRED"
    return db


def _migrate(db: sqlite3.Connection) -> None:
    """Bring a file of an older worker to ``SCHEMA_VERSION``, in one transaction. A claims
    table is moved into the rows whatever the version says: an older worker run on the file
    after a migration (a rolled back deploy) makes it again."""
    (version,) = db.execute("PRAGMA user_version").fetchone()
    tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if version >= SCHEMA_VERSION and "claims" not in tables:
        return
    db.execute("BEGIN IMMEDIATE")
    columns = {row[1] for row in db.execute("PRAGMA table_info(events)")}
    if "claims" not in columns:
        db.execute("ALTER TABLE events ADD COLUMN claims TEXT NOT NULL DEFAULT '{}'")
    if "shipment_id" not in columns:
        db.execute("ALTER TABLE events ADD COLUMN shipment_id TEXT")
    if "claims" in tables:
        # a claim of an event without a record (a retry's) gets a row of its own, as _claim does
        db.execute(
            "INSERT INTO events (event_id, channels, done, expires_at)"
            " SELECT DISTINCT event_id, '[]', '{}', 0 FROM claims"
            " WHERE event_id NOT IN (SELECT event_id FROM events)"
        )
        db.execute(
            "UPDATE events SET claims = (SELECT json_group_object(channel,"
            " json_array(owner, expires_at)) FROM claims WHERE claims.event_id = events.event_id)"
            " WHERE event_id IN (SELECT event_id FROM claims)"
        )
        db.execute("DROP TABLE claims")
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    db.execute("COMMIT")
