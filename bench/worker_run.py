"""One run of the real worker (``python -m worker run``, or a variant command) as a subprocess
against the run's broker and sinks, until the sinks accepted every planned notification.

While it runs, the sinks' counters are polled (throughput, progress) and the worker's RSS is
sampled from /proc (memory). Afterwards the worker is stopped with SIGTERM (it drains and
commits) and its JSON log is scanned for the outcome of every record.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from bench.events import Expected
from bench.procs import PYTHON, ROOT, BenchError, cpu_seconds, rss_mb, spawn, stop

Counts = Callable[[], tuple[int, int]]  # (emails, sms) accepted by the sinks so far


@dataclass(frozen=True)
class Tuning:
    """The worker settings a run uses (environment variables of the README)."""

    max_in_flight: int
    smtp_pool_size: int
    sms_pool_size: int = 100
    log_level: str = "INFO"

    def env(self) -> dict[str, str]:
        return {
            "MAX_IN_FLIGHT": str(self.max_in_flight),
            "SMTP_POOL_SIZE": str(self.smtp_pool_size),
            "SMS_POOL_SIZE": str(self.sms_pool_size),
            "LOG_LEVEL": self.log_level,
        }


@dataclass(frozen=True)
class Target:
    """Where a run reads from and sends to."""

    bootstrap: str
    topic: str
    smtp_port: int
    sms_url: str


class Attachable(Protocol):
    """Something that follows the worker process while it sends (a profiler)."""

    def attach(self, pid: int) -> None: ...

    def detach(self) -> None: ...


@dataclass
class Sample:
    t: float  # seconds since the worker was started
    notifications: int
    rss_mb: float


@dataclass
class WorkerRun:
    name: str
    tuning: Tuning
    expected: Expected
    emails: int = 0
    sms: int = 0
    startup_s: float = 0.0  # spawn -> first notification accepted
    sending_s: float = 0.0  # first -> last notification accepted
    peak_rss_mb: float = 0.0
    cpu_busy: float = 0.0  # worker CPU seconds per second while sending (1.0 = one full core)
    outcomes: dict[str, int] = field(default_factory=dict)
    exit_code: int | None = None
    revision: str = ""  # the worker's commit when this run started (it changes under us)
    samples: list[Sample] = field(default_factory=list)

    @property
    def notifications_per_s(self) -> float:
        return _rate(self.emails + self.sms, self.sending_s)

    @property
    def emails_per_s(self) -> float:
        return _rate(self.emails, self.sending_s)

    @property
    def records_per_s(self) -> float:
        return _rate(self.expected.records, self.sending_s)

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["samples"] = [
            [round(s.t, 2), s.notifications, round(s.rss_mb, 1)] for s in self.samples
        ]
        data["notifications_per_s"] = round(self.notifications_per_s, 1)
        data["emails_per_s"] = round(self.emails_per_s, 1)
        data["records_per_s"] = round(self.records_per_s, 1)
        return data


def _rate(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else 0.0


def worker_env(target: Target, tuning: Tuning, data_dir: Path) -> dict[str, str]:
    return {
        "SMS_QUIET_HOURS": "off",  # a run's figures must not depend on the hour it ran at
        **os.environ,
        **tuning.env(),
        "KAFKA_BOOTSTRAP_SERVERS": target.bootstrap,
        "KAFKA_TOPIC": target.topic,
        "KAFKA_GROUP_ID": f"bench-{uuid.uuid4().hex[:12]}",
        "SMTP_HOST": "127.0.0.1",
        "SMTP_PORT": str(target.smtp_port),
        "SMTP_SECURITY": "none",
        "EMAIL_FROM": "Shop <no-reply@shop.example>",
        "SMS_PROVIDER": "webhook",
        "SMS_WEBHOOK_URL": target.sms_url,
        "DATA_DIR": str(data_dir),
        "DEDUP_URL": f"sqlite:///{data_dir / 'dedup.sqlite3'}",
        "LOG_FORMAT": "json",
        "SHUTDOWN_TIMEOUT": "10",
        "METRICS_HOST": "127.0.0.1",
        "METRICS_PORT": "0",  # a free port: never the one a worker beside the bench holds
    }


class Progress:
    """A line on stderr every few seconds, so a long run shows it is alive."""

    def __init__(self, name: str, total: int, every: float = 5.0) -> None:
        self._name, self._total, self._every = name, total, every
        self._last = time.monotonic()

    def __call__(self, done: int, rss: float) -> None:
        now = time.monotonic()
        if now - self._last >= self._every:
            self._last = now
            print(
                f"  {self._name}: {done:,}/{self._total:,} sent, rss {rss:.0f} MB",
                file=sys.stderr,
                flush=True,
            )


def run_worker(
    name: str,
    target: Target,
    tuning: Tuning,
    expected: Expected,
    counts: Counts,
    workdir: Path,
    *,
    timeout: float,
    extra_env: dict[str, str] | None = None,
    profiler: Attachable | None = None,
    rss_every: float = 0.5,
) -> WorkerRun:
    """Run the worker until the sinks have ``expected`` notifications more than at the start."""
    data_dir = workdir / name
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir / "worker.log"
    base_emails, base_sms = counts()
    run = WorkerRun(name, tuning, expected, revision=revision())
    with open(log_path, "wb") as log:
        process = spawn(
            [PYTHON, "-m", "worker", "run"],
            env={**worker_env(target, tuning, data_dir), **(extra_env or {})},
            stdout=log,
            stderr=log,
        )
    try:
        _follow(
            run,
            process.pid,
            lambda: _delta(counts, base_emails, base_sms),
            process.poll,
            timeout,
            profiler,
            rss_every,
        )
    finally:
        if profiler is not None:
            profiler.detach()
        run.exit_code = stop(process)
    run.outcomes = count_outcomes(log_path)
    level = (extra_env or {}).get("LOG_LEVEL", tuning.log_level)
    _check(run, log_path, logs_outcomes=level in ("DEBUG", "INFO"))
    return run


def revision() -> str:
    """The commit ``worker/`` is at, and whether it has uncommitted changes."""

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)
        return done.stdout.strip()

    dirty = "+local-changes" if git("status", "--porcelain", "worker") else ""
    return git("rev-parse", "--short", "HEAD") + dirty


def _delta(counts: Counts, base_emails: int, base_sms: int) -> tuple[int, int]:
    emails, sms = counts()
    return emails - base_emails, sms - base_sms


def _follow(
    run: WorkerRun,
    pid: int,
    counts: Counts,
    exited: Callable[[], int | None],
    timeout: float,
    profiler: Attachable | None,
    rss_every: float,
) -> None:
    """Poll until every notification is accepted; fill the run's timings and samples."""
    started = time.monotonic()
    first: tuple[float, int] | None = None
    cpu_at_first = 0.0
    next_sample = 0.0
    progress = Progress(run.name, run.expected.notifications)
    while True:
        now = time.monotonic() - started
        run.emails, run.sms = counts()
        done = run.emails + run.sms
        rss, peak = rss_mb(pid)
        run.peak_rss_mb = max(run.peak_rss_mb, peak)
        if now >= next_sample:
            run.samples.append(Sample(now, done, rss))
            next_sample = now + rss_every
            progress(done, rss)
        if first is None and done > 0:
            first = (now, done)
            cpu_at_first = cpu_seconds(pid)
            run.startup_s = now
            if profiler is not None:
                profiler.attach(pid)
        if run.emails >= run.expected.emails and run.sms >= run.expected.sms:
            assert first is not None
            run.sending_s = now - first[0]
            run.cpu_busy = (cpu_seconds(pid) - cpu_at_first) / max(run.sending_s, 1e-9)
            if run.sending_s > 0:  # the first sample already saw `first[1]` of them
                run.sending_s *= done / max(done - first[1], 1)
            run.samples.append(Sample(now, done, rss))
            return
        if exited() is not None:
            raise BenchError(f"{run.name}: the worker exited early; see its log")
        if now > timeout:
            raise BenchError(
                f"{run.name}: timed out after {timeout:g} s with {run.emails}/"
                f"{run.expected.emails} emails and {run.sms}/{run.expected.sms} SMS accepted"
            )
        time.sleep(0.05)


# the worker's lines are compact JSON (orjson); its fallback writes ``"outcome": "..."``
_OUTCOME = re.compile(rb'"outcome": ?"(notified|skipped|dead_lettered)"')
_SEND_RETRY = b'"notification_retrying"'


def count_outcomes(log_path: Path) -> dict[str, int]:
    """How many records ended notified / skipped / dead-lettered, per the worker's log, and
    how many sends were retried in process."""
    outcomes = dict.fromkeys(("notified", "skipped", "dead_lettered", "send_retries"), 0)
    with open(log_path, "rb") as log:
        for line in log:
            found = _OUTCOME.search(line)
            if found:
                outcomes[found[1].decode()] += 1
            elif _SEND_RETRY in line:
                outcomes["send_retries"] += 1
    return outcomes


def _check(run: WorkerRun, log_path: Path, *, logs_outcomes: bool) -> None:
    """``logs_outcomes``: the worker logs at INFO, so a notified record leaves a line."""
    if logs_outcomes and run.emails + run.sms and not run.outcomes["notified"]:
        # the log format moved on
        raise BenchError(f"{run.name}: notifications sent, but no notified line in {log_path}")
    if run.outcomes["dead_lettered"]:
        raise BenchError(f"{run.name}: {run.outcomes['dead_lettered']} records dead-lettered")
    if run.exit_code not in (0, None):
        raise BenchError(f"{run.name}: the worker exited with {run.exit_code}; see {log_path}")
