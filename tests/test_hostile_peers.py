"""The property-based hostile-peer suite: the worker as a process, a real broker, and an SMTP
relay and SMS provider on loopback that answer by drawn scripts (``tests/hostile.py``), while
producers put forged and unreadable headers and hostile bodies on the records. Each example is
one whole worker run, checked from what the peers accepted, the dead-letter topic and the
worker's log.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests.conftest import MakeTopic, committed_offsets, read_topic
from tests.factories import RawHeaderName, event, python_batch, record
from tests.hostile import (
    ACCEPT,
    FORGED_HEADERS,
    SMTP_SESSION_FAULT,
    UNDECODABLE_NAMES,
    HostileSms,
    HostileSmtp,
    Reply,
    SmtpStage,
    fate,
    short,
    sms_accepts,
    sms_scripts,
    smtp_scripts,
)
from tests.processes import WorkerProcess, end_offsets
from tests.test_faults import HOSTILE
from worker.channels import idempotency_key

Env = Callable[..., dict[str, str]]
PARTITIONS = 2
# whole worker runs: a few fit CI's budget; set HOSTILE_EXAMPLES for a longer hunt
EXAMPLES = int(os.environ.get("HOSTILE_EXAMPLES", "6"))
SETTLE_TIMEOUT = 100.0
TIMEOUT = 1.0  # SMTP_TIMEOUT and SMS_TIMEOUT
# how long a slow reply may hold the worker: the timeout, plus the pause before the peer sees
# that the worker left, plus scheduling on a busy machine
HOLD_LIMIT = TIMEOUT + 2.0


@dataclass(frozen=True)
class Valid:
    """A valid event, perhaps with forged headers, and how each peer answers its attempts."""

    n: int
    forged: list[tuple[str, bytes]]
    email: list[tuple[SmtpStage, Reply]]
    sms: list[Reply]
    sms_accept: Reply

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        forged = ", ".join(f"({name!r}, {short(value)})" for name, value in self.forged)
        printer.text(
            f"Valid(n={self.n}, forged=[{forged}], email={self.email!r}, sms={self.sms!r},"
            f" sms_accept={self.sms_accept!r})"
        )


@dataclass(frozen=True)
class Unreadable:
    """A valid event under a header name the Kafka client cannot decode."""

    n: int
    name: bytes


@dataclass(frozen=True)
class Hostile:
    """A record whose value is not a valid event."""

    value: bytes

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:  # some are 300 KB
        printer.text(f"Hostile({short(self.value)})")


Item = Valid | Unreadable | Hostile


@dataclass(frozen=True)
class Case:
    items: list[Item]  # in the order they are produced
    sessions: list[tuple[SmtpStage, Reply]]  # faults for the relay's next new connections
    pipelining: bool


@st.composite
def cases(draw: st.DrawFn) -> Case:
    count = draw(st.integers(6, 10))
    items: list[Item] = []
    for n in range(count):
        if draw(st.integers(0, 7)) == 7:
            items.append(Unreadable(n, draw(UNDECODABLE_NAMES)))
            continue
        forged = draw(st.one_of(st.just([]), FORGED_HEADERS))
        items.append(
            Valid(n, forged, draw(smtp_scripts()), draw(sms_scripts()), draw(sms_accepts()))
        )
    items += [Hostile(v) for v in draw(st.lists(HOSTILE, max_size=3))]
    order = draw(st.permutations(range(len(items))))
    sessions = draw(st.lists(SMTP_SESSION_FAULT, max_size=3))
    return Case([items[i] for i in order], sessions, draw(st.booleans()))


@dataclass(frozen=True)
class Run:
    """One example's names: its topic, and the events its items stand for."""

    topic: str
    tag: str

    def event_id(self, n: int) -> str:
        return f"{self.tag}-{n}"

    def event(self, n: int) -> dict[str, Any]:
        return event(
            self.event_id(n),
            "shipped",
            shipment_id=f"{self.tag}-S{n}",
            customer={"email": self.address(n), "phone": f"+1415555{n:04d}"},
        )

    def address(self, n: int) -> str:
        return f"h{n}.{self.tag}@example.com"

    def key(self, n: int, channel: str) -> str:
        return idempotency_key(self.event_id(n), channel)


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    print_blob=True,
    phases=[Phase.explicit, Phase.generate],  # each example is a whole worker run: no shrinking
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
@given(case=cases())
async def test_hostile_peers_and_producers_stop_nothing_and_every_notification_ends_once(
    kafka_bootstrap: str,
    new_topic: MakeTopic,
    worker_env: Env,
    tmp_path: Path,
    case: Case,
) -> None:
    """With a relay and an SMS provider answering by drawn scripts (random bytes, Latin-1,
    endless, huge and slow replies, hang-ups, random statuses, oversized and broken HTTP
    framing) and producers forging the worker's headers, sending unreadable header names and
    hostile bodies, the one worker process never exits, each notification is accepted exactly
    once or dead-lettered exactly once as its script decides, and every record on the main and
    retry topics has exactly one logged outcome."""
    run = Run(await new_topic(partitions=PARTITIONS), uuid.uuid4().hex[:8])
    valid = [item for item in case.items if isinstance(item, Valid)]
    smtp = HostileSmtp(
        list(case.sessions),
        {run.address(v.n): list(v.email) for v in valid},
        case.pipelining,
    )
    sms = HostileSms(
        {run.key(v.n, "sms"): list(v.sms) for v in valid},
        {run.key(v.n, "sms"): v.sms_accept for v in valid},
    )
    work = tmp_path / run.tag
    async with smtp, sms:
        env = worker_env(
            run.topic,
            SMTP_PORT=str(smtp.port),
            SMTP_TIMEOUT=str(TIMEOUT),
            SMS_API_URL=sms.url,
            SMS_TIMEOUT=str(TIMEOUT),
            SEND_RETRIES="1",
            SEND_RETRY_BASE="0.05",
            RETRY_BASE_DELAY="0.2",
            RETRY_MAX_DELAY="1",
            RETRY_MAX_ATTEMPTS="10",
            DEDUP_URL=f"sqlite:///{work / 'dedup.sqlite3'}",
            DATA_DIR=str(work / "data"),
        )
        worker = WorkerProcess(env, work.with_suffix(".log")).start()
        await started(worker)
        placed = await produce(kafka_bootstrap, run, case.items)
        expected = Expectation.of(run, placed)
        await settle(kafka_bootstrap, env, run.topic, worker, smtp, sms, expected)
        assert worker.alive(), worker.log.read_text()[-3000:]
        assert await worker.terminate() == 0

    assert (smtp.errors, sms.errors) == ([], [])
    # a slow reply is given up on within about the timeout, whatever pace its lines come at
    assert [hold for hold in smtp.holds + sms.holds if hold[1] > HOLD_LIMIT] == []
    assert len(worker.named("worker_started")) == 1
    assert len(worker.named("worker_stopped")) == 1
    assert unforeseen(worker) == []
    failed = failures(worker)
    for v in valid:
        assert failed[(run.event_id(v.n), "sms")] == len(v.sms), v
        assert failed[(run.event_id(v.n), "email")] >= len(v.email), v
    session_failures = sum(failed[(run.event_id(v.n), "email")] - len(v.email) for v in valid)
    assert session_failures <= len(case.sessions)
    assert dict(smtp.accepted) == dict.fromkeys(expected.emails, 1)
    assert dict(sms.accepted) == dict.fromkeys(expected.sms, 1)
    letters = await read_topic(kafka_bootstrap, f"{run.topic}.dlq", expected.letters.total())
    assert Counter(map(letter_key, letters)) == expected.letters
    retry_ends = await end_offsets(kafka_bootstrap, f"{run.topic}.retry", PARTITIONS)
    assert outcomes(worker, f"{run.topic}.retry") == Counter(
        (p, o) for p, end in retry_ends.items() for o in range(end)
    )
    assert outcomes(worker, run.topic) == Counter(list(placed))
    for (partition, offset), item in placed.items():
        if not isinstance(item, Valid):
            assert outcome_of(worker, run.topic, partition, offset) == "dead_lettered"


async def produce(bootstrap: str, run: Run, items: list[Item]) -> dict[tuple[int, int], Item]:
    """Publish every item in order; where each landed."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    placed: dict[tuple[int, int], Item] = {}
    try:
        for item in items:
            if isinstance(item, Unreadable):
                key, value = record(run.event(item.n))
                batch = python_batch(producer)
                batch.append(
                    timestamp=None, key=key, value=value, headers=[(RawHeaderName(item.name), b"x")]
                )
                meta = await (await producer.send_batch(batch, run.topic, partition=item.n % 2))
            elif isinstance(item, Valid):
                key, value = record(run.event(item.n))
                meta = await (await producer.send(run.topic, value, key=key, headers=item.forged))
            else:
                meta = await (await producer.send(run.topic, item.value, key=b"hostile"))
            placed[(meta.partition, meta.offset)] = item
    finally:
        await producer.stop()
    return placed


@dataclass(frozen=True)
class Expectation:
    """What the peers must have accepted (by idempotency key), and the dead letters by
    (original partition, original offset, channel or None for the record itself)."""

    emails: frozenset[str]
    sms: frozenset[str]
    letters: Counter[tuple[int, int, str | None]]

    @classmethod
    def of(cls, run: Run, placed: dict[tuple[int, int], Item]) -> Expectation:
        emails: set[str] = set()
        texts: set[str] = set()
        letters: Counter[tuple[int, int, str | None]] = Counter()
        for (partition, offset), item in placed.items():
            if not isinstance(item, Valid):
                letters[(partition, offset, None)] += 1
                continue
            for channel, script, keys in (("email", item.email, emails), ("sms", item.sms, texts)):
                if fate(script) == ACCEPT:
                    keys.add(run.key(item.n, channel))
                else:
                    letters[(partition, offset, channel)] += 1
        return cls(frozenset(emails), frozenset(texts), letters)


def letter_key(letter: Any) -> tuple[int, int, str | None]:
    found = dict(letter.headers)
    channel = found.get("error.channel")
    return (
        int(found["original.partition"]),
        int(found["original.offset"]),
        None if channel is None else channel.decode(),
    )


async def started(worker: WorkerProcess) -> None:
    """Until the worker says it runs: by then its side topics exist."""
    async with asyncio.timeout(60):
        while not worker.named("worker_started"):
            assert worker.alive(), f"the worker exited: {worker.log.read_text()[-3000:]}"
            await asyncio.sleep(0.2)


async def settle(
    bootstrap: str,
    env: dict[str, str],
    topic: str,
    worker: WorkerProcess,
    smtp: HostileSmtp,
    sms: HostileSms,
    expected: Expectation,
) -> None:
    """Until everything expected arrived and both topics are committed to their ends (nothing
    in flight, nothing waiting for a retry); fails at once if the worker exits."""
    state: dict[str, Any] = {}
    try:
        async with asyncio.timeout(SETTLE_TIMEOUT):
            while not await _settled(bootstrap, env, topic, smtp, sms, expected, state):
                assert worker.alive(), f"the worker exited: {worker.log.read_text()[-3000:]}"
                await asyncio.sleep(0.5)
    except TimeoutError:
        failed = [
            {k: e.get(k) for k in ("event", "event_id", "channel", "error_type", "error")}
            for e in worker.events()
            if e["event"] in ("notification_failed", "event_dead_lettered", "record_crashed")
        ]
        raise AssertionError(
            f"not settled in {SETTLE_TIMEOUT}s: {state}; dead letters and crashes: {failed}"
        ) from None


async def _settled(
    bootstrap: str,
    env: dict[str, str],
    topic: str,
    smtp: HostileSmtp,
    sms: HostileSms,
    expected: Expectation,
    state: dict[str, Any],
) -> bool:
    group = env["KAFKA_GROUP_ID"]
    state["missing emails"] = sorted(expected.emails - set(smtp.accepted))
    state["missing sms"] = sorted(expected.sms - set(sms.accepted))
    for name in (topic, f"{topic}.retry", f"{topic}.dlq"):
        ends = await end_offsets(bootstrap, name, PARTITIONS)
        state[name] = (ends, await committed_offsets(bootstrap, group, name))
    dead = sum(state[f"{topic}.dlq"][0].values())
    if state["missing emails"] or state["missing sms"] or dead < expected.letters.total():
        return False
    return all(
        committed.get(p, 0) >= end
        for name in (topic, f"{topic}.retry")
        for ends, committed in [state[name]]
        for p, end in ends.items()
    )


def unforeseen(worker: WorkerProcess) -> list[dict[str, Any]]:
    """Log lines of what the worker met without foreseeing it: a crash while handling a record
    or sending, or a record ended as ``internal_error``."""
    return [
        e
        for e in worker.events()
        if e.get("event") in ("record_crashed", "notification_crashed")
        or e.get("reason") == "internal_error"
        or e.get("error_type") == "internal_error"
    ]


def failures(worker: WorkerProcess) -> Counter[tuple[str, str]]:
    """Failed tries per (event_id, channel): each ends in one line, retried in process, handed
    to the retry topic, or dead-lettered."""
    ends = ("notification_retrying", "notification_retry_scheduled", "notification_failed")
    return Counter(
        (str(e.get("event_id")), str(e.get("channel")))
        for e in worker.events()
        if e["event"] in ends
    )


def summaries(worker: WorkerProcess) -> list[dict[str, Any]]:
    """A record's one summary line: ``event_notified``, ``event_retrying``,
    ``event_dead_lettered`` or ``event_<rule>_skipped`` (a channel's lines may name an
    ``outcome`` too, as ``notification_already_done`` does)."""
    return [e for e in worker.events() if "outcome" in e and e["event"].startswith("event_")]


def outcomes(worker: WorkerProcess, topic: str) -> Counter[tuple[int, int]]:
    """How many summary lines each record of ``topic`` has."""
    return Counter((e["partition"], e["offset"]) for e in summaries(worker) if e["topic"] == topic)


def outcome_of(worker: WorkerProcess, topic: str, partition: int, offset: int) -> str:
    where = (topic, partition, offset)
    (line,) = [e for e in summaries(worker) if (e["topic"], e["partition"], e["offset"]) == where]
    return str(line["outcome"])
