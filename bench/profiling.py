"""Where the worker's time goes: py-spy samples the worker subprocess while it sends (attached
after the first notification, detached at the last, so start-up is not counted), and each
sample of the event-loop thread is charged to one hot-path step.

A sample is charged to the first step that matches walking from the innermost frame outwards,
so e.g. JSON encoding inside a log call counts as logging, the ``email`` package called by
``SmtpSender.build`` counts as building, and a socket write counts for the client that wrote.
``us_per_notification`` is the step's sampled time divided by the notifications sent while
sampling. py-spy skips idle samples (a thread
waiting in epoll), so the event-loop figures add up to its busy time.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.procs import PYTHON, spawn, stop

# (step, substrings of a frame "function (file:line)"); the first match, innermost first, wins
STEPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "build message (EmailMessage or MimeBuilder)",
        (
            "SmtpSender.build ",
            "build (worker/channels/smtp",
            "MimeBuilder.",
            "worker/channels/mime",
        ),
    ),
    ("message flatten (aiosmtplib send_message)", ("flatten_message ",)),
    ("logging (structlog + stdlib logging)", ("structlog/", "logging/__init__", "worker/logs")),
    (
        "SMTP client (aiosmtplib + the worker's exchange)",
        ("aiosmtplib/", "_Exchange.", "transaction (worker/channels/smtp", "_stuffed "),
    ),
    ("SMS client (worker/channels/http)", ("worker/channels/http", "httptools/")),
    ("render (jinja2 + babel)", ("worker/render", "jinja2/", "babel/")),
    ("decode (json + pydantic)", ("worker/events",)),
    ("plan (policy, phonenumbers)", ("worker/policy", "phonenumbers/")),
    ("dedup store (loop side)", ("worker/dedup",)),
    ("Kafka client (aiokafka)", ("aiokafka/",)),
    ("consumer: tasks, slots, commits", ("worker/consumer", "worker/offsets")),
    ("pipeline / delivery glue", ("worker/",)),
)
EVENT_LOOP = ("asyncio/", "uvloop/", "selectors", "socket.py")
# the frames that drive the loop: a sample whose innermost frames reach one of these before a
# step's frame is the loop's own work (uvloop's C code runs under Runner.run), not that of the
# worker frames outside it (``main``, ``_run``)
LOOP_DRIVERS = (
    "asyncio/runners.py",
    "run_until_complete (asyncio/",
    "run_forever (asyncio/",
    "_run_once (asyncio/",
    "Handle._run (asyncio/",
)
LOOP_THREAD = "MainThread"


@dataclass
class Profile:
    rate: int
    seconds: float = 0.0
    notifications: int = 0
    threads: dict[str, int] = field(default_factory=dict)  # thread -> busy samples
    steps: dict[str, int] = field(default_factory=dict)  # loop-thread samples per step

    def us_per_notification(self, samples: int) -> float:
        return samples / self.rate / max(self.notifications, 1) * 1e6

    def as_json(self) -> dict[str, Any]:
        return {
            "sampling_rate_hz": self.rate,
            "seconds": round(self.seconds, 2),
            "notifications": self.notifications,
            "loop_thread_us_per_notification": {
                step: round(self.us_per_notification(n), 1)
                for step, n in sorted(self.steps.items(), key=lambda kv: -kv[1])
            },
            "loop_thread_share": {
                step: round(n / max(sum(self.steps.values()), 1), 3)
                for step, n in sorted(self.steps.items(), key=lambda kv: -kv[1])
            },
            "threads_busy_us_per_notification": {
                name: round(self.us_per_notification(n), 1) for name, n in self.threads.items()
            },
        }


MIN_ATTACHED = 2.0  # seconds


class PySpy:
    """``py-spy record`` attached to a pid; raw (collapsed) stacks with thread names."""

    def __init__(self, out: Path, rate: int = 250) -> None:
        self.out = out
        self.rate = rate
        self._process: subprocess.Popen[bytes] | None = None
        self._started = 0.0
        self.seconds = 0.0

    def attach(self, pid: int) -> None:
        py_spy = str(Path(PYTHON).parent / "py-spy")
        command = [
            py_spy,
            "record",
            "--pid",
            str(pid),
            "--format",
            "raw",
            "--rate",
            str(self.rate),
            "--nonblocking",
            "--threads",
            "-o",
            str(self.out),
        ]
        with open(self.out.with_suffix(".log"), "wb") as log:
            self._process = spawn(command, stdout=log, stderr=log)
        self._started = time.monotonic()

    def detach(self) -> None:
        if self._process is not None:
            self.seconds = time.monotonic() - self._started
            # py-spy needs a moment to attach and takes no sample of an idle worker: a run
            # shorter than that (a smoke run, about 0.2 s) would otherwise leave no file
            time.sleep(max(0.0, MIN_ATTACHED - self.seconds))
            stop(self._process, signal.SIGINT, grace=20)  # py-spy writes its file on SIGINT
            self._process = None


def analyse(raw: Path, rate: int, seconds: float, notifications: int) -> Profile:
    """Charge every sample of py-spy's raw output to a thread and a loop-thread step."""
    profile = Profile(rate, seconds, notifications)
    threads: Counter[str] = Counter()
    steps: Counter[str] = Counter()
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        frames = stack.split(";")
        thread = frames[0].partition(": ")[2] or frames[0]
        threads[thread] += int(count)
        if thread == LOOP_THREAD:
            steps[step_of(frames[1:])] += int(count)
    profile.threads, profile.steps = dict(threads), dict(steps)
    return profile


def step_of(frames: list[str]) -> str:
    """The step of the innermost frame that names one; the event loop's own frames (socket
    writes, executor hand-offs) are charged to the library that called them, and a sample
    that reaches the loop's driving frames first is the loop's."""
    for frame in reversed(frames):
        if any(driver in frame for driver in LOOP_DRIVERS):
            return "asyncio event loop"
        for step, needles in STEPS:
            if any(needle in frame for needle in needles):
                return step
    if any(needle in frame for frame in frames for needle in EVENT_LOOP):
        return "asyncio event loop"
    return "other"
