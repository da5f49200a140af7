"""Benchmark of the shipment-notification worker on this machine, in one run:

    bench/run [--events 50000] [--memory-events 1000000] [--smoke] ...

It starts a local Kafka broker (``scripts/kafka``), postfix's ``smtp-sink`` and the fast
Python sinks of ``bench/sinks.py``, pre-fills topics with synthetic events
(``bench/events.py``: every event its own shipment, so each planned notification must be sent)
and measures:

1. **end-to-end**: one ``python -m worker run`` subprocess (``SMTP_SECURITY=none``, SMS via the
   webhook provider, a fresh SQLite dedup store) draining the pre-filled topic into smtp-sink
   and the SMS sink. Notifications/s and emails/s are counted by the sinks from the first
   notification accepted to the last (start-up excluded, reported apart).
2. **baselines**, each as a ratio to (1) in its own unit: raw aiokafka consumption of the same
   records (records/s, Kafka-side ceiling); aiosmtplib sending pre-built messages of the same
   size over as many connections as the worker's pool (emails/s, Python SMTP ceiling), on
   uvloop like the worker by default, again on asyncio's own loop, and once more through the
   worker's own transaction (``worker.channels.smtp.transaction``: without sendmail's passes
   over the message or its wait per reply, pipelined when the server offers PIPELINING; the
   ceiling of the path the worker takes);
   ``smtp-source`` against the same smtp-sink (emails/s, the machine's SMTP ceiling); the naive
   worker of ``bench/naive.py`` (notifications/s).
   **paired**: (1) and the aiosmtplib ceiling again, back to back, three rounds of 20k events:
   this machine's speed drifts by a third within a run, so the median of ratios taken a
   minute apart says more than one ratio of runs minutes apart.
3. **latency hiding**: (1) again with an SMTP sink that answers each message after 100 ms and
   an SMS sink that answers after 200 ms.
4. **latency**: events published at a steady rate (default 200/s) while the worker runs; the
   SMTP sink notes when it accepted each Message-ID, which maps back to the event and its
   publish time: p50/p95/p99 of publish -> SMTP accept.
5. **memory**: the worker's RSS sampled from /proc during a long run (``--memory-events``,
   dedup store growth included): peak, and whether the second half of the run still grows.
6. **profile**: py-spy on the worker while it sends: loop-thread time per notification and
   step; **micro**: the same steps timed in isolation with the proposed replacements; and
   **variants**: (1) with a setting changed from its default, each as a ratio to a control
   run with the defaults made just before (the worker under test keeps changing, and so does
   the machine's load), over three rounds, the median ratio read: ``EVENT_LOOP=asyncio``,
   and three that take a part of the work away to show what it costs end to end (the
   in-memory dedup store, ``LOG_LEVEL=WARNING``, and no SMS channel: emails only, with one
   ``notification_skipped`` line for each SMS).

Results: a table on stdout, ``bench/results/latest.json`` and ``bench/results/bench.png``.
Every process it starts is stopped at the end, also on failure or Ctrl-C; exit status 1 when
any part did not complete.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import report
from bench.baselines import Ceiling, run_smtp_source
from bench.events import (
    EventFactory,
    Expected,
    create_topic,
    email_events,
    fill_topic,
    produce_steady,
)
from bench.procs import PYTHON, ROOT, BenchError, Kafka, PostfixSmtpSink, PySinks
from bench.profiling import PySpy, analyse
from bench.worker_run import Counts, Target, Tuning, WorkerRun, run_worker

RESULTS = ROOT / "bench" / "results"
# a variant: the worker with these settings instead of the defaults. Besides the event loop,
# each one takes away a part of the work (durable dedup, INFO lines, SMS): what a part costs
# end to end, kernel and allocator included, which the profile's samples do not show
VARIANTS: dict[str, dict[str, str]] = {
    "asyncio loop": {"EVENT_LOOP": "asyncio"},
    "memory store": {"DEDUP_URL": "memory://"},
    "warning logs": {"LOG_LEVEL": "WARNING"},
    "no SMS": {"SMS_PROVIDER": "disabled"},
}


@dataclass(frozen=True)
class Sizes:
    events: int
    naive_records: int
    latency_events: int
    latency_rate: float
    memory_events: int
    profile_events: int
    variant_events: int
    partitions: int
    paired_rounds: int
    variant_rounds: int


def sizes(args: argparse.Namespace) -> Sizes:
    if args.smoke:
        return Sizes(300, 100, 300, args.latency_rate, 300, 300, 300, args.partitions, 1, 1)
    return Sizes(
        events=args.events,
        naive_records=min(args.events, args.naive_records),
        latency_events=int(args.latency_seconds * args.latency_rate),
        latency_rate=args.latency_rate,
        memory_events=args.memory_events,
        profile_events=min(args.events, args.profile_events),
        variant_events=min(args.events, args.variant_events),
        partitions=args.partitions,
        paired_rounds=args.paired_rounds,
        variant_rounds=args.variant_rounds,
    )


class Bench:
    """The run's broker, sinks and topics, and the parts measured against them."""

    def __init__(self, args: argparse.Namespace, workdir: Path, stack: contextlib.ExitStack):
        self.args = args
        self.sizes = sizes(args)
        self.workdir = workdir
        self.stack = stack
        self.fast = Tuning(args.max_in_flight, args.pool_size)
        self.delayed_tuning = Tuning(
            args.delayed_max_in_flight, args.delayed_pool_size, args.delayed_sms_pool_size
        )
        self.results: dict[str, Any] = {}
        self.failures: dict[str, str] = {}
        self._topics: dict[int, tuple[str, Expected]] = {}
        self._factory = EventFactory(f"b{int(time.time())}")

    def start(self) -> None:
        kafka = Kafka(self.workdir / "kafka")
        self.stack.callback(kafka.stop)
        self.bootstrap = kafka.start()
        self.smtp_sink = PostfixSmtpSink(self.workdir)
        self.stack.callback(self.smtp_sink.stop)
        self.smtp_sink.start()
        self.sms_sink = self._sinks()

    def _sinks(self, smtp_delay: float = 0.0, sms_delay: float = 0.0) -> PySinks:
        sinks = PySinks(smtp_delay, sms_delay)
        self.stack.callback(sinks.stop)
        return sinks.start()

    def topic(self, count: int) -> tuple[str, Expected]:
        """A topic pre-filled with ``count`` events (made once per size)."""
        if count not in self._topics:
            name = f"bench-{count}"
            started = time.perf_counter()
            asyncio.run(create_topic(self.bootstrap, name, self.sizes.partitions))
            expected = asyncio.run(fill_topic(self.bootstrap, name, self._factory, count))
            self.results.setdefault("produce", {})[name] = {
                "events": count,
                "seconds": round(time.perf_counter() - started, 2),
                **expected.__dict__,
            }
            self._topics[count] = (name, expected)
        return self._topics[count]

    def part(self, name: str, measure: Callable[[], Any]) -> None:
        """Run one part; a failure is recorded and the next part still runs."""
        print(f"== {name}", file=sys.stderr, flush=True)
        started = time.monotonic()
        try:
            self.results[name] = measure()
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:  # one part failing must not hide the others
            self.failures[name] = f"{type(exc).__name__}: {exc}"
            traceback.print_exc()
        print(f"   {name} took {time.monotonic() - started:.1f} s", file=sys.stderr, flush=True)

    def timeout(self, notifications: int) -> float:
        return self.args.part_timeout or 90 + notifications / 20

    def _postfix_counts(self) -> Counts:
        return lambda: (self.smtp_sink.count(), self.sms_sink.stats()["sms"])

    def _worker(
        self,
        name: str,
        count: int,
        tuning: Tuning,
        sinks: PySinks | None = None,
        *,
        sms: bool = True,
        **kw: Any,
    ) -> WorkerRun:
        """``sms``: whether the worker sends SMS (False: it has none configured)."""
        topic, expected = self.topic(count)
        if not sms:
            expected = dataclasses.replace(expected, sms=0)
        if sinks is None:  # smtp-sink for email, the shared sink for SMS
            target = Target(self.bootstrap, topic, self.smtp_sink.port, self.sms_sink.sms_url)
            counts = self._postfix_counts()
        else:
            target = Target(self.bootstrap, topic, sinks.smtp_port, sinks.sms_url)
            counts = _py_counts(sinks)
        return run_worker(
            name, target, tuning, expected, counts, self.workdir,
            timeout=self.timeout(expected.notifications), **kw,
        )  # fmt: skip

    # --- the parts ---

    def e2e(self) -> dict[str, Any]:
        return self._worker("e2e", self.sizes.events, self.fast).as_json()

    def delayed(self) -> dict[str, Any]:
        sinks = self._sinks(smtp_delay=0.1, sms_delay=0.2)
        try:
            return self._worker("delayed", self.sizes.events, self.delayed_tuning, sinks).as_json()
        finally:
            sinks.stop()

    def baselines(self) -> dict[str, Any]:
        topic, expected = self.topic(self.sizes.events)
        message = self._message_file().read_bytes()
        pool, emails = self.fast.smtp_pool_size, max(expected.emails, 1)
        found: dict[str, Any] = {"message_bytes": len(message)}
        smtp = self._aiosmtplib_args(emails)
        runs: list[tuple[str, Callable[[], Ceiling]]] = [
            ("kafka", lambda: self._baseline("kafka", "--bootstrap", self.bootstrap, "--topic",
                                             topic, "--partitions", str(self.sizes.partitions),
                                             "--records", str(expected.records))),
            ("aiosmtplib", lambda: self._baseline(*smtp)),
            ("aiosmtplib-asyncio", lambda: self._baseline(
                *smtp, "--loop", "asyncio", log_name="aiosmtplib-asyncio")),
            ("aiosmtplib-worker-path", lambda: self._baseline(
                *smtp, "--path", "worker", log_name="aiosmtplib-worker-path")),
            ("smtp-source", lambda: self._smtp_source(pool, emails, message)),
            ("naive", lambda: self._baseline("naive", "--topic", topic, "--records",
                                             str(self.sizes.naive_records))),
        ]  # fmt: skip
        for name, run in runs:
            try:
                found[name] = run().as_json()
            except (BenchError, subprocess.SubprocessError, ValueError) as exc:
                self.failures[f"baselines.{name}"] = str(exc)
        return found

    def _message_file(self) -> Path:
        """A rendered email's bytes, what the SMTP ceilings send: made once per run."""
        path = self.workdir / "message.eml"
        if not path.exists():
            path.write_bytes(report.representative_email())
        return path

    def _aiosmtplib_args(self, emails: int) -> tuple[str, ...]:
        """The aiosmtplib ceiling's arguments: ``emails`` messages the size of a rendered email
        over as many connections as the worker's pool, to the shared smtp-sink."""
        return ("aiosmtplib", "--port", str(self.smtp_sink.port),
                "--connections", str(self.fast.smtp_pool_size), "--messages", str(emails),
                "--message-file", str(self._message_file()))  # fmt: skip

    def paired(self) -> dict[str, Any]:
        """(1) and (2)'s aiosmtplib ceiling again, back to back, ``paired_rounds`` times on
        the variant size. The machine's speed drifts within a run (by a third here), and (1)
        and (2) run minutes apart: each round here compares two measurements about a minute
        apart, and the median round is the ratio to read."""
        _, expected = self.topic(self.sizes.variant_events)
        rounds = []
        for i in range(1, self.sizes.paired_rounds + 1):
            run = self._worker(f"paired-{i}", self.sizes.variant_events, self.fast)
            ceiling = self._baseline(*self._aiosmtplib_args(max(expected.emails, 1)),
                                     log_name=f"paired-{i}-aiosmtplib")  # fmt: skip
            rounds.append({
                "emails_per_s": run.emails_per_s,
                "aiosmtplib_emails_per_s": round(ceiling.rate, 1),
                "ratio": round(run.emails_per_s / ceiling.rate, 3) if ceiling.rate else 0.0,
                "revision": run.revision,
            })  # fmt: skip
        return {
            "rounds": rounds,
            "median_emails_per_s": statistics.median(r["emails_per_s"] for r in rounds),
            "median_ratio": statistics.median(r["ratio"] for r in rounds),
        }

    def _smtp_source(self, sessions: int, messages: int, message: bytes) -> Ceiling:
        before = self.smtp_sink.count()
        ceiling = run_smtp_source(
            self.smtp_sink.port, sessions, messages, message, self.workdir, self.timeout(messages)
        )
        _wait_until(lambda: self.smtp_sink.count() - before >= messages, 10, "smtp-sink count")
        return ceiling

    def _baseline(self, name: str, *args: str, log_name: str = "") -> Ceiling:
        topic, _ = self.topic(self.sizes.events)
        env = _naive_env(self, topic) if name == "naive" else None
        log = self.workdir / f"baseline-{log_name or name}.log"
        with open(log, "wb") as err:
            done = subprocess.run(
                [PYTHON, "-m", "bench.baselines", name, *args],
                cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=err,
                timeout=self.timeout(self.sizes.events * 2), check=False,
            )  # fmt: skip
        if done.returncode != 0:
            raise BenchError(f"baseline {name} exited {done.returncode}; see {log}")
        data = json.loads(done.stdout.decode().strip().splitlines()[-1])
        return Ceiling(
            data["name"], data["unit"], data["count"], data["seconds"], data["cpu_seconds"]
        )

    def latency(self) -> dict[str, Any]:
        rate, count = self.sizes.latency_rate, self.sizes.latency_events
        found = self._latency("bench-latency", rate, count)
        if low := self.args.latency_low_rate:  # a rate the worker surely keeps up with
            found["low_rate"] = self._latency("bench-latency-low", low, int(count * low / rate))
        return found

    def _latency(self, topic: str, rate: float, count: int) -> dict[str, Any]:
        asyncio.run(create_topic(self.bootstrap, topic, self.sizes.partitions))
        start = 10**8 + len(self._topics) * 10**6 + int(rate)
        warmup, expected = email_events(self._factory, start, 5)
        events, measured = email_events(self._factory, start + 5, count)
        expected.add(measured)
        sinks = self._sinks()
        feeder = _Feeder(self.bootstrap, topic, warmup, events, rate, sinks)
        target = Target(self.bootstrap, topic, sinks.smtp_port, sinks.sms_url)
        try:
            feeder.start()
            timeout = self.timeout(expected.notifications) + count / rate
            run = run_worker(f"latency-{rate:g}", target, self.fast, expected, _py_counts(sinks),
                             self.workdir, timeout=timeout)  # fmt: skip
            feeder.join()
            return {**report.latency(feeder.sent_at, sinks.accepts()), "rate": rate,
                    "worker": run.as_json()}  # fmt: skip
        finally:
            sinks.stop()

    def memory(self) -> dict[str, Any]:
        run = self._worker("memory", self.sizes.memory_events, self.fast, rss_every=1.0)
        return {**report.rss_summary(run), "worker": run.as_json()}

    def profile(self) -> dict[str, Any]:
        spy = PySpy(self.workdir / "profile.txt")
        run = self._worker("profile", self.sizes.profile_events, self.fast, profiler=spy)
        found = analyse(spy.out, spy.rate, spy.seconds, run.emails + run.sms).as_json()
        return {**found, "notifications_per_s_while_profiled": round(run.notifications_per_s, 1)}

    def micro(self) -> dict[str, Any]:
        done = subprocess.run([PYTHON, "-m", "bench.micro"], cwd=ROOT, capture_output=True,
                              timeout=300, check=True)  # fmt: skip
        found: dict[str, Any] = json.loads(done.stdout)
        return found

    def variants(self) -> dict[str, Any]:
        """``variant_rounds`` rounds of a control run with the default settings, then each
        variant, back to back. The machine's speed drifts within a round too, so the figure
        to read is a variant's median over the rounds of its ratio to its round's control.
        Each entry is the variant's first run, plus ``rounds`` (emails/s), ``ratios`` and
        ``median_ratio``."""
        found: dict[str, Any] = {}
        for i in range(1, self.sizes.variant_rounds + 1):
            for name, env in {"control": {}, **VARIANTS}.items():
                label = f"variant-{name.replace(' ', '-')}" + (f"-{i}" if i > 1 else "")
                run = self._worker(label, self.sizes.variant_events, self.fast, extra_env=env,
                                   sms=env.get("SMS_PROVIDER") != "disabled")  # fmt: skip
                entry = found.setdefault(name, {**run.as_json(), "settings": env, "rounds": []})
                entry["rounds"].append(run.emails_per_s)
        controls = found["control"]["rounds"]
        for entry in found.values():
            ratios = [r / c for r, c in zip(entry["rounds"], controls, strict=True) if c]
            entry["ratios"] = [round(r, 3) for r in ratios]
            entry["median_ratio"] = round(statistics.median(ratios), 3) if ratios else None
        return found


def _py_counts(sinks: PySinks) -> Counts:
    def counts() -> tuple[int, int]:
        stats = sinks.stats()
        return stats["smtp_messages"], stats["sms"]

    return counts


def _naive_env(bench: Bench, topic: str) -> dict[str, str]:
    from bench.worker_run import worker_env

    data_dir = bench.workdir / "naive"
    data_dir.mkdir(exist_ok=True)
    target = Target(bench.bootstrap, topic, bench.smtp_sink.port, bench.sms_sink.sms_url)
    return worker_env(target, bench.fast, data_dir)


def _wait_until(done: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise BenchError(f"timed out waiting for {what}")
        time.sleep(0.05)


class _Feeder(threading.Thread):
    """Publishes a few warm-up events, waits until the worker sent them (it is then
    connected and assigned), then publishes the measured events at a steady rate."""

    def __init__(self, bootstrap: str, topic: str, warmup: list[dict[str, object]],
                 events: list[dict[str, object]], rate: float, sinks: PySinks) -> None:  # fmt: skip
        super().__init__(daemon=True)
        self._args = (bootstrap, topic)
        self._warmup, self._events, self._rate, self._sinks = warmup, events, rate, sinks
        self.sent_at: dict[str, float] = {}
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            asyncio.run(produce_steady(*self._args, self._warmup, 100))
            want = len(self._warmup)
            _wait_until(lambda: self._sinks.stats()["smtp_messages"] >= want, 120, "warm-up")
            self.sent_at = asyncio.run(produce_steady(*self._args, self._events, self._rate))
        except Exception as exc:  # reported by join()
            self.error = exc

    def join(self, timeout: float | None = None) -> None:
        super().join(timeout)
        if self.error is not None:
            raise BenchError(f"latency feeder failed: {self.error!r}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/run", description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="every part, tiny, in about a minute")
    p.add_argument("--events", type=int, default=50_000, help="events for (1), (2), (3)")
    p.add_argument("--memory-events", type=int, default=1_000_000, help="events for (5)")
    p.add_argument("--naive-records", type=int, default=2_000, help="records for the naive one")
    p.add_argument("--profile-events", type=int, default=10_000)
    p.add_argument("--variant-events", type=int, default=20_000, help="per variant run")
    p.add_argument("--latency-rate", type=float, default=200.0, help="events/s for (4)")
    p.add_argument("--latency-seconds", type=float, default=30.0)
    p.add_argument("--latency-low-rate", type=float, default=50.0, help="second rate; 0: none")
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--max-in-flight", type=int, default=512, help="MAX_IN_FLIGHT for (1) (4) (5)")
    p.add_argument("--pool-size", type=int, default=64, help="SMTP_POOL_SIZE for (1) (4) (5)")
    # a connection sends one message per delay: 200 x 100 ms SMTP -> 2,000 emails/s at most,
    # 200 x 200 ms SMS -> 1,000 SMS/s; and a slot is held for the slower of the two
    p.add_argument("--delayed-max-in-flight", type=int, default=1024)
    p.add_argument("--delayed-pool-size", type=int, default=200, help="SMTP_POOL_SIZE for (3)")
    p.add_argument("--delayed-sms-pool-size", type=int, default=200, help="SMS_POOL_SIZE for (3)")
    p.add_argument("--paired-rounds", type=int, default=3, help="rounds of (1) + ceiling")
    p.add_argument("--variant-rounds", type=int, default=3,
                   help="rounds of the control and every variant")  # fmt: skip
    p.add_argument("--parts", default="e2e,baselines,paired,delayed,latency,memory,profile,"
                   "micro,variants", help="comma-separated subset to run")  # fmt: skip
    p.add_argument("--part-timeout", type=float, default=0, help="seconds (default: by size)")
    p.add_argument("--keep-workdir", action="store_true", help="keep logs and stores")
    p.add_argument("--name", help="results: bench/results/NAME.json (default: latest, or smoke)")
    return p.parse_args(argv)


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so every started process is stopped."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.name = args.name or ("smoke" if args.smoke else "latest")  # a smoke run keeps latest.json
    started = time.monotonic()
    load = os.getloadavg()
    if load[0] > 0.5:
        print(
            f"bench: the machine is busy (load {load[0]:.2f}): figures will be low", file=sys.stderr
        )
    workdir = Path(tempfile.mkdtemp(prefix="bench-"))
    with _terminate_as_interrupt(), contextlib.ExitStack() as stack:
        bench = Bench(args, workdir, stack)
        try:
            bench.part("setup", bench.start)
            if "setup" not in bench.failures:
                for name in args.parts.split(","):
                    bench.part(name, getattr(bench, name))
        except KeyboardInterrupt:
            bench.failures["interrupted"] = "stopped by a signal"
            print("\ninterrupted: stopping everything", file=sys.stderr)
    elapsed = time.monotonic() - started
    RESULTS.mkdir(parents=True, exist_ok=True)
    data = report.build(args, bench.sizes, bench.results, bench.failures, elapsed, load)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(data, indent=1, ensure_ascii=False))
    print(report.table(data))
    with contextlib.suppress(Exception):  # a plot must not hide the figures
        report.plot(data, RESULTS / ("bench.png" if args.name == "latest" else f"{args.name}.png"))
    if bench.failures or args.keep_workdir:
        print(f"logs kept in {workdir}", file=sys.stderr)
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if bench.failures else 0


if __name__ == "__main__":
    sys.exit(main())
