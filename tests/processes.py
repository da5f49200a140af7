"""Workers as real processes, and what the customers received, for the fault tests."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from aiokafka import AIOKafkaConsumer, TopicPartition

from tests.conftest import committed_offsets
from tests.sinks import SmsSink, SmtpSink
from worker.channels import idempotency_key
from worker.policy import DEFAULT_POLICY

ROOT = Path(__file__).resolve().parent.parent


class WorkerProcess:
    """``python -m worker run`` with JSON logs appended to ``log``. Every instance is killed
    at the end of its test if still alive (``tests/conftest.py``), also when the test fails."""

    started: ClassVar[list[WorkerProcess]] = []

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env = {**os.environ, **env, "LOG_FORMAT": "json"}
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None
        WorkerProcess.started.append(self)

    @classmethod
    def kill_leftovers(cls) -> None:
        for worker in cls.started:
            if worker.alive():
                worker.kill()
        cls.started.clear()

    def start(self) -> WorkerProcess:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "worker", "run"],
                cwd=ROOT,
                env=self.env,
                stdout=subprocess.DEVNULL,
                stderr=out,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL: no drain, no commit, no goodbye."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(30)

    async def terminate(self, timeout: float = 60) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return await self.exited(timeout)

    async def exited(self, timeout: float = 60) -> int:
        """The exit code, once the process has ended (by itself, or asked to)."""
        assert self.process is not None
        return await asyncio.to_thread(self.process.wait, timeout)

    def events(self) -> list[dict[str, Any]]:
        """Every JSON log line written so far (a line cut by SIGKILL is skipped)."""
        entries = []
        for line in self.log.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                entries.append(json.loads(line))
            except ValueError:
                continue
        return entries

    def named(self, name: str) -> list[dict[str, Any]]:
        return [e for e in self.events() if e.get("event") == name]


@dataclass(frozen=True)
class Expected:
    """The notifications a set of events must produce, by idempotency key."""

    emails: frozenset[str]
    sms: frozenset[str]


def expected_for(events: Iterable[dict[str, Any]]) -> Expected:
    """Per the default policy, for events whose customers have both contacts and that the
    ordering rules let through (the callers make every event of a shipment newer than the
    last)."""
    emails, sms = set(), set()
    for data in events:
        channels = DEFAULT_POLICY[data["status"]]
        if "email" in channels:
            emails.add(idempotency_key(data["event_id"], "email"))
        if "sms" in channels:
            sms.add(idempotency_key(data["event_id"], "sms"))
    return Expected(frozenset(emails), frozenset(sms))


@dataclass(frozen=True)
class Received:
    emails: Counter[str]
    sms: Counter[str]

    @property
    def duplicates(self) -> int:
        return sum(n - 1 for n in (*self.emails.values(), *self.sms.values()) if n > 1)


def received(smtp: SmtpSink, sms: SmsSink) -> Received:
    emails: Counter[str] = Counter()
    for mail in list(smtp.messages):
        emails[str(mail.message["Message-ID"]).strip("<>").split("@", 1)[0]] += 1
    texts: Counter[str] = Counter(r.headers["Idempotency-Key"] for r in list(sms.requests))
    return Received(emails, texts)


async def wait_until_all_committed(
    bootstrap: str, group: str, topic: str, ends: dict[int, int], timeout: float
) -> None:
    async with asyncio.timeout(timeout):
        while True:
            got = await committed_offsets(bootstrap, group, topic)
            if all(got.get(p, -1) >= end for p, end in ends.items()):
                return
            await asyncio.sleep(0.25)


async def wait_until_received(
    smtp: SmtpSink, sms: SmsSink, expected: Expected, timeout: float
) -> None:
    async with asyncio.timeout(timeout):
        while True:
            got = received(smtp, sms)
            if set(got.emails) >= expected.emails and set(got.sms) >= expected.sms:
                return
            await asyncio.sleep(0.1)


async def end_offsets(bootstrap: str, topic: str, partitions: int) -> dict[int, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        await consumer.topics()  # lets aiokafka's start-up task run before stop()
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        ends = await consumer.end_offsets(tps)
    finally:
        await consumer.stop()
    return {tp.partition: offset for tp, offset in ends.items()}
