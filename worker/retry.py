"""Retrying: backoff schedules and the retry record's headers. Pure: no Kafka, no clock reads
except where a time is passed in.

A notification that fails for a transient reason is retried a few times in process (short
delays), then handed to the retry topic with a due time; each later attempt that fails again
goes back with a longer delay, until ``max_attempts`` or ``max_age``, then to the dead-letter
topic with its full history.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from worker import headers
from worker.policy import CHANNELS

MAX_HISTORY = 20
MAX_ERROR = 300  # characters of each failure kept in the history


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
            (headers.RETRY_CHANNEL, self.channel.encode()),
            (headers.RETRY_ATTEMPT, str(self.attempt).encode()),
            (headers.RETRY_DUE, repr(self.due).encode()),
            (headers.RETRY_FIRST_FAILED, repr(self.first_failed_at).encode()),
            (headers.RETRY_HISTORY, self.history_text().encode()),
        ]


@dataclass(frozen=True, slots=True)
class Held:
    """A notification held for the recipient's quiet hours, on the retry topic until ``due``
    (the window's opening ``release``, or an earlier check). ``retry``: its retry state when a
    retry fell in quiet hours; holding it counts no attempt."""

    channel: str
    due: float
    release: float
    retry: RetryState | None = None

    def headers(self) -> list[tuple[str, bytes]]:
        if self.retry is None:
            state = [(headers.RETRY_CHANNEL, self.channel.encode())]
        else:
            state = [(k, v) for k, v in self.retry.headers() if k != headers.RETRY_DUE]
        return [
            *state,
            (headers.RETRY_DUE, repr(self.due).encode()),
            (headers.RETRY_HELD, repr(self.release).encode()),
        ]


def history_text(history: tuple[tuple[float, str], ...]) -> str:
    """The failures as JSON: ``[{"at": ISO time, "error": ...}, ...]``, in ASCII: any error
    text (a server's reply in Latin-1, decoded with lone surrogates) is escaped, never
    refused."""
    return json.dumps(
        [{"at": _iso(at), "error": error[:MAX_ERROR]} for at, error in history[-MAX_HISTORY:]]
    )


def first_retry(channel: str, now: float, error: str, limits: RetryLimits) -> RetryState | None:
    """The first topic retry after the in-process attempts failed (None: no topic retries)."""
    if limits.max_attempts < 1:
        return None
    return RetryState(channel, 1, now + limits.backoff.delay(1), now, ((now, error),))


def parse(found: Mapping[str, bytes]) -> RetryState:
    """The retry state of a retry record; ValueError when the headers are not ours: a channel
    the worker does not have, an attempt that is not a small positive number, a time that is
    not a finite number, a history that is not the list ``history_text`` writes."""
    try:
        channel = found[headers.RETRY_CHANNEL].decode()
        if channel not in CHANNELS:
            raise ValueError(f"unknown channel {channel[:40]!r}")
        raw_attempt = found[headers.RETRY_ATTEMPT]
        attempt = int(raw_attempt) if len(raw_attempt) <= 4 else 0
        if not 0 < attempt <= 1000:
            raise ValueError(f"attempt {raw_attempt[:40]!r} out of range")
        history = json.loads(found[headers.RETRY_HISTORY])
        return RetryState(
            channel=channel,
            attempt=attempt,
            due=_finite(found[headers.RETRY_DUE]),
            first_failed_at=_finite(found[headers.RETRY_FIRST_FAILED]),
            history=tuple(
                (datetime.fromisoformat(h["at"]).timestamp(), str(h["error"]))
                for h in history[-MAX_HISTORY:]
            ),
        )
    except (KeyError, TypeError, ValueError, RecursionError) as exc:
        raise ValueError(f"not a retry record: {_short(exc)}") from exc


def parse_waiting(found: Mapping[str, bytes]) -> tuple[str, RetryState | None]:
    """The channel of a retry record and its retry state: none for a notification held for
    quiet hours before its first attempt. ValueError as ``parse``."""
    if headers.RETRY_HELD in found and headers.RETRY_ATTEMPT not in found:
        try:
            channel = found[headers.RETRY_CHANNEL].decode()
            _finite(found[headers.RETRY_HELD])
        except (KeyError, ValueError) as exc:
            raise ValueError(f"not a held record: {_short(exc)}") from exc
        if channel not in CHANNELS:
            raise ValueError(f"not a held record: unknown channel {channel[:40]!r}")
        return channel, None
    state = parse(found)
    return state.channel, state


def due_time(found: Mapping[str, bytes]) -> float | None:
    """When a retry record may run; None when it has no (usable) due time: it runs now."""
    raw = found.get(headers.RETRY_DUE)
    try:
        return _finite(raw) if raw is not None else None
    except ValueError:
        return None


def _finite(raw: bytes) -> float:
    value = float(raw) if len(raw) <= 40 else math.nan
    if not math.isfinite(value):
        raise ValueError(f"{raw[:40]!r} is not a finite time")
    return value


def _short(exc: BaseException) -> str:
    return repr(exc)[:200]


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds")
