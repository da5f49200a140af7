"""``python -m worker run`` as an operator runs it: a real process, real Kafka, real sinks."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import MakeTopic, Produce, committed_offsets
from tests.factories import event, record
from tests.processes import WorkerProcess
from tests.sinks import SmsSink, SmtpSink
from worker.cli import GC_YOUNG_THRESHOLD
from worker.dedup import EventRecord, ShipmentState, open_store

ROOT = Path(__file__).resolve().parent.parent
WATCHED = {"worker_started", "event_notified", "event_dead_lettered"}


async def _outcome_lines(stream: asyncio.StreamReader, count: int) -> list[dict[str, Any]]:
    """Read JSON log lines until ``count`` watched lines arrived; every line must be JSON."""
    outcomes = []
    async with asyncio.timeout(60):
        while len(outcomes) < count:
            line = await stream.readline()
            assert line, "the worker closed its log before the outcomes arrived"
            entry = json.loads(line)
            if entry["event"] in WATCHED:
                outcomes.append(entry)
    return outcomes


@pytest.mark.parametrize("event_loop", ["uvloop", "asyncio"])
async def test_worker_logs_each_record_as_json_and_exits_0_on_sigterm_after_committing(
    event_loop: str,
    kafka_bootstrap: str,
    new_topic: MakeTopic,
    produce: Produce,
    worker_env: Callable[..., dict[str, str]],
    smtp_sink: SmtpSink,
    sms_sink: SmsSink,
) -> None:
    """On either event loop (named in its start-up line), the worker process logs one JSON
    outcome line per record with topic, partition, offset and key, and on SIGTERM commits
    what it finished, closes and exits 0."""
    topic = await new_topic(partitions=2)
    env = worker_env(topic, LOG_FORMAT="json", EVENT_LOOP=event_loop)
    await produce(
        topic,
        [
            record(event("e1", "shipped", shipment_id="A")),
            record(event("e2", "delivered", shipment_id="B")),
            (b"C", b"not json"),
        ],
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "worker",
        "run",
        cwd=ROOT,
        env={**os.environ, **env},
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stderr is not None
    try:
        started, *outcomes = await _outcome_lines(process.stderr, 4)
        await smtp_sink.wait_for(2)
        process.send_signal(signal.SIGTERM)
        rest = await asyncio.wait_for(process.stderr.read(), 30)
        code = await asyncio.wait_for(process.wait(), 30)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()

    assert code == 0
    assert (started["event"], started["event_loop"]) == ("worker_started", event_loop)
    assert started["gc_thresholds"] == [GC_YOUNG_THRESHOLD, 10, 10]
    seen = {(o["key"], o["event"]) for o in outcomes}
    assert seen == {("A", "event_notified"), ("B", "event_notified"), ("C", "event_dead_lettered")}
    for outcome in outcomes:
        assert outcome["topic"] == topic
        assert outcome["partition"] in (0, 1)
        assert isinstance(outcome["offset"], int)
    tail = [json.loads(line)["event"] for line in rest.decode().splitlines()]
    assert tail[0] == "shutdown_requested"
    assert tail[-1] == "worker_stopped"
    committed = await committed_offsets(kafka_bootstrap, env["KAFKA_GROUP_ID"], topic)
    assert sum(committed.values()) == 3


async def _start_and_hold(
    produce: Produce, topic: str, env: dict[str, str], smtp_sink: SmtpSink, log: Path
) -> WorkerProcess:
    """A worker process whose only email is being held by the SMTP server right now."""
    await produce(topic, [record(event("e1", "shipped"))])
    worker = WorkerProcess(env, log).start()
    async with asyncio.timeout(60):
        while smtp_sink.connections == 0:
            await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)  # the message is in DATA, held by the server's delay
    assert smtp_sink.messages == []
    return worker


async def test_sigterm_lets_in_flight_sends_finish_and_commits_them(
    kafka_bootstrap: str,
    new_topic: MakeTopic,
    produce: Produce,
    worker_env: Callable[..., dict[str, str]],
    smtp_sink: SmtpSink,
    tmp_path: Path,
) -> None:
    """SIGTERM while an email is in flight: the worker waits for it, commits its offset and
    exits 0, so nothing is redelivered."""
    topic = await new_topic(partitions=1)
    env = worker_env(topic, SMS_PROVIDER="disabled", SHUTDOWN_TIMEOUT="20")
    smtp_sink.faults.delay = 2.0
    worker = await _start_and_hold(produce, topic, env, smtp_sink, tmp_path / "w.log")
    assert await worker.terminate() == 0
    assert len(smtp_sink.messages) == 1
    assert await committed_offsets(kafka_bootstrap, env["KAFKA_GROUP_ID"], topic) == {0: 1}
    assert worker.named("in_flight_abandoned") == []


async def test_work_still_running_at_shutdown_timeout_is_abandoned_uncommitted(
    kafka_bootstrap: str,
    new_topic: MakeTopic,
    produce: Produce,
    worker_env: Callable[..., dict[str, str]],
    smtp_sink: SmtpSink,
    tmp_path: Path,
) -> None:
    """SIGTERM with SHUTDOWN_TIMEOUT=1 while the SMTP server takes 5 s: the worker gives up on
    the send after a second, hangs up mid-transaction, exits 0 without committing it, and the
    next worker sends it again."""
    topic = await new_topic(partitions=1)
    env = worker_env(topic, SMS_PROVIDER="disabled", SHUTDOWN_TIMEOUT="1")
    smtp_sink.faults.delay = 5.0
    worker = await _start_and_hold(produce, topic, env, smtp_sink, tmp_path / "w.log")
    held_until = time.monotonic() + smtp_sink.faults.delay
    assert await worker.terminate(timeout=15) == 0
    assert await committed_offsets(kafka_bootstrap, env["KAFKA_GROUP_ID"], topic) == {}
    assert [e["records"] for e in worker.named("in_flight_abandoned")] == [1]

    smtp_sink.faults.delay = 0.0
    successor = WorkerProcess(env, tmp_path / "w2.log").start()
    async with asyncio.timeout(60):
        while await committed_offsets(kafka_bootstrap, env["KAFKA_GROUP_ID"], topic) != {0: 1}:
            await asyncio.sleep(0.2)
    assert await successor.terminate() == 0
    # the abandoned send had handed its whole message to the server, but its connection was
    # closed before the reply (the session's state was unknown), and this server drops a
    # message whose client left before the reply: once the first send's delay is over, the
    # successor's is the only copy. A server that kept it (RFC 1047) would hold two under the
    # same Message-ID, which mailbox providers collapse.
    await asyncio.sleep(max(0.0, held_until + 0.5 - time.monotonic()))
    [mail] = smtp_sink.messages
    assert mail.rcpt_tos == ["an@example.com"]


async def test_a_second_worker_on_the_same_sqlite_file_stops_at_start_up(tmp_path: Path) -> None:
    """While a store holds the SQLite file, ``python -m worker run`` on it exits 2 with a
    start-up error naming DEDUP_URL and the file, without touching what is stored."""
    path = tmp_path / "dedup.sqlite3"
    holder = open_store(f"sqlite:///{path}", 3600)
    await holder.accept("e1", ("email",), "s1", ShipmentState("shipped", 1.0), "w/1", 60)
    try:
        worker = WorkerProcess({"DEDUP_URL": f"sqlite:///{path}"}, tmp_path / "worker.log")
        code = await worker.start().exited()
        assert (await holder.load("e1", "s1")).event == EventRecord(("email",), {}, "s1")
    finally:
        await holder.close()
    assert code == 2
    assert worker.log.read_text().splitlines()[-1] == (
        f"start-up error: DEDUP_URL: {path} is in use by another process (one worker per"
        " SQLite file; replicas share a Redis store instead)"
    )
