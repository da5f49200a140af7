"""Provider rate limits: how fast one process may send on a channel.

A ``Throttle`` per channel gives each send its turn:
- at most ``rate`` sends a second (``SMTP_RATE_LIMIT``, ``SMS_RATE_LIMIT``), each at least
  ``1/rate`` after the one before (a token bucket holding one token), so any one-second window
  holds at most ``rate`` of them and a burst leaves at the provider's pace instead of meeting
  429s. Turns are given in the order they were asked for;
- after the provider answers 429 with ``Retry-After`` (``ProviderThrottled``), no send of the
  channel goes out before that time; then they resume at the rate, not all at once.

The limit is per process: with several workers, divide the account's rate among them.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable

from worker.channels import ProviderThrottled, TransientDeliveryError
from worker.logs import get_logger
from worker.settings import PacingSettings

log = get_logger(__name__)

# a 429 without Retry-After still pauses the channel this long: the account is over its rate
DEFAULT_PAUSE = 1.0
TIMER_SLACK = 0.001


class Throttle:
    """The turns of one channel's sends. ``rate`` None: no pacing, only the provider's pauses."""

    def __init__(
        self,
        channel: str,
        rate: float | None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.channel = channel
        self.rate = rate
        self._interval = 1 / rate if rate else 0.0
        self._clock = clock
        self._last = -math.inf  # when the last turn was given
        self._queue = asyncio.Lock()  # FIFO: one waiter at a time waits for the interval
        self._paused_until = 0.0

    async def turn(self) -> None:
        """Return when the next send may go out."""
        while True:
            pause = self._paused_until - self._clock()
            if pause > 0:
                await asyncio.sleep(pause)
                continue
            if self._interval:
                await self._spaced_turn()
            if self._clock() >= self._paused_until:
                return
            # a 429 arrived while this send waited: it takes a new turn after the pause

    async def _spaced_turn(self) -> None:
        """The next turn, at least ``1/rate`` after the last one given. Measured from when that
        one was given, not booked ahead (aiolimiter's way): a waiter woken late then cannot
        bunch up with the next, and at 1/s aiolimiter let sends go 0.999 s apart, which a
        provider counting per second refuses now and then."""
        async with self._queue:
            wait = self._last + self._interval - self._clock()
            if wait > 0:  # uvloop rounds timers to the millisecond: a little more, never early
                await asyncio.sleep(wait + TIMER_SLACK)
            self._last = self._clock()

    def refused(self, error: TransientDeliveryError) -> None:
        """Learn from a failed send: a 429 pauses every send of the channel."""
        if not isinstance(error, ProviderThrottled):
            return
        pause = DEFAULT_PAUSE if error.retry_after is None else error.retry_after
        until = self._clock() + pause
        if until > self._paused_until:
            self._paused_until = until
            log.warning("channel_throttled", channel=self.channel, pause=round(pause, 3))


def throttles(settings: PacingSettings) -> dict[str, Throttle]:
    """A throttle per channel: every channel honours a 429's pause, paced when a rate is set."""
    return {
        "email": Throttle("email", settings.smtp_rate_limit),
        "sms": Throttle("sms", settings.sms_rate_limit),
    }
