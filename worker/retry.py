"""Retrying: backoff schedules and the retry record's headers. Pure: no Kafka, no clock reads
except where a time is passed in.

A notification that fails for a transient reason is retried a few times in process (short
delays), then handed to the retry topic with a due time; each later attempt that fails again
goes back with a longer delay, until ``max_attempts`` or ``max_age``, then to the dead-letter
topic with its full history.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime

# headers of a retry record (besides original.* and error.message)
CHANNEL = "retry.channel"
ATTEMPT = "retry.attempt"
DUE = "retry.due"
FIRST_FAILED = "retry.first_failed_at"
HISTORY = "retry.history"
MAX_HISTORY = 20


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential delays with jitter: attempt n waits between half and all of
    ``min(max_delay, base * 2**(n-1))``, so retries of a burst spread out."""

    base: float
    max_delay: float
    jitter: random.Random = field(default_factory=random.Random, compare=False)

    def delay(self, attempt: int) -> float:
        ceiling = min(self.max_delay, self.base * 2 ** max(0, attempt - 1))
        return self.jitter.uniform(ceiling / 2, ceiling)


@dataclass(frozen=True, slots=True)
class RetryLimits:
    max_attempts: int  # topic attempts after the in-process ones
    max_age: float  # seconds since the first failure
    backoff: Backoff


@dataclass(frozen=True, slots=True)
class RetryState:
    """Where a notification stands in its retries; travels in the retry record's headers."""

    channel: str
    attempt: int  # the topic attempt this record is for (1 = first)
    due: float  # POSIX time when it may run
    first_failed_at: float
    history: tuple[tuple[float, str], ...]  # (when, error) of every failure so far

    def failed_again(self, now: float, error: str, limits: RetryLimits) -> RetryState | None:
        """The next retry after another failure, or None when the limits are reached."""
        history = (*self.history, (now, error))[-MAX_HISTORY:]
        attempt = self.attempt + 1
        if attempt > limits.max_attempts or now - self.first_failed_at >= limits.max_age:
            return None
        due = now + limits.backoff.delay(attempt)
        return RetryState(self.channel, attempt, due, self.first_failed_at, history)

    def history_text(self) -> str:
        return history_text(self.history)

    def headers(self) -> list[tuple[str, bytes]]:
        return [
            (CHANNEL, self.channel.encode()),
            (ATTEMPT, str(self.attempt).encode()),
            (DUE, repr(self.due).encode()),
            (FIRST_FAILED, repr(self.first_failed_at).encode()),
            (HISTORY, self.history_text().encode()),
        ]


def history_text(history: tuple[tuple[float, str], ...]) -> str:
    """The failures as JSON: ``[{"at": ISO time, "error": ...}, ...]``."""
    return json.dumps(
        [{"at": _iso(at), "error": error[:300]} for at, error in history[-MAX_HISTORY:]],
        ensure_ascii=False,
    )


def first_retry(channel: str, now: float, error: str, limits: RetryLimits) -> RetryState | None:
    """The first topic retry after the in-process attempts failed (None: no topic retries)."""
    if limits.max_attempts < 1:
        return None
    return RetryState(channel, 1, now + limits.backoff.delay(1), now, ((now, error),))


def parse(headers: dict[str, bytes]) -> RetryState:
    """The retry state of a retry record; ValueError when the headers are not ours."""
    try:
        history = json.loads(headers[HISTORY])
        return RetryState(
            channel=headers[CHANNEL].decode(),
            attempt=int(headers[ATTEMPT]),
            due=float(headers[DUE]),
            first_failed_at=float(headers[FIRST_FAILED]),
            history=tuple(
                (datetime.fromisoformat(h["at"]).timestamp(), str(h["error"])) for h in history
            ),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"not a retry record: {exc!r}") from exc


def due_time(headers: dict[str, bytes]) -> float | None:
    raw = headers.get(DUE)
    try:
        return float(raw) if raw is not None else None
    except ValueError:
        return None


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds")
