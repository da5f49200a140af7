"""Quiet hours: when a channel may not reach a recipient, in the recipient's own time. Pure: the
time is passed in.

The recipient's time zone, from the first of these that gives one:
1. ``customer.timezone`` (an IANA name, checked when the event is decoded);
2. the phone number's region (phonenumbers' time-zone data, which often narrows a country to
   one zone by area code: +1 212 is New York);
3. the locale's region (``vi-VN`` -> VN, a bare ``ko`` -> KR, read as ``policy.region_of``
   reads it; Babel's CLDR data lists each region's zones);
4. ``DEFAULT_TIMEZONE``.
When a number or region spans several zones (a Russian mobile, ``en-US``), the middle one by
UTC offset at that moment is taken: it is wrong by at most half the country's spread.

A window ``21:00-08:00`` is quiet from 21:00 up to, not including, 08:00 local wall-clock time;
it may wrap midnight. Its end is a wall-clock time on the local day, so across a DST change a
night is an hour shorter or longer; an end that falls in the skipped hour is read with the
offset before the change (02:30 on a spring-forward night is 03:30 daylight time).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

import phonenumbers
from babel.core import get_global
from phonenumbers.timezone import time_zones_for_number

from worker.events import Customer, Event
from worker.policy import region_of

if TYPE_CHECKING:
    from worker.settings import PacingSettings

OFF = frozenset({"", "off", "none"})
_WINDOW = re.compile(r"(\d\d:\d\d(?::\d\d)?)\s*-\s*(\d\d:\d\d(?::\d\d)?)")


@dataclass(frozen=True, slots=True)
class Window:
    """Quiet from ``start`` (included) to ``end`` (excluded), local wall-clock time."""

    start: time
    end: time

    @classmethod
    def parse(cls, text: str) -> Window | None:
        """``HH:MM-HH:MM`` (seconds allowed: ``HH:MM:SS``); None for ``off``. ValueError when
        it is neither."""
        if text.strip().lower() in OFF:
            return None
        match = _WINDOW.fullmatch(text.strip())
        if match is None:
            raise ValueError(f"{text[:40]!r} is not a window like 21:00-08:00 (or off)")
        try:
            window = cls(time.fromisoformat(match[1]), time.fromisoformat(match[2]))
        except ValueError as exc:  # 25:00
            raise ValueError(f"{text!r}: {exc}") from exc
        if window.start == window.end:
            raise ValueError(f"{text!r}: start and end are the same time")
        return window

    def contains(self, clock: time) -> bool:
        if self.start < self.end:
            return self.start <= clock < self.end
        return clock >= self.start or clock < self.end

    def release(self, now: float, zone: ZoneInfo) -> float | None:
        """When the quiet period that holds ``now`` ends in ``zone``; None when ``now`` is not
        in one."""
        local = datetime.fromtimestamp(now, zone)
        if not self.contains(local.time().replace(tzinfo=None)):
            return None
        day = local.date()
        if local.time() >= self.end:  # before midnight of a window that wraps it
            day += timedelta(days=1)
        return datetime.combine(day, self.end, tzinfo=zone).timestamp()


@dataclass(frozen=True, slots=True)
class Quiet:
    """A notification that may not go out now: held until ``release``, or dropped when its
    status's news would be outdated by then (``expires``)."""

    release: float
    due: float  # when to look again: the release, or sooner (QuietHours' ``recheck``)
    zone: str
    source: str  # which rule gave the zone: customer, phone, locale or default
    expires: bool


class QuietHours:
    """The quiet windows per channel (a channel without one is never quiet).

    ``recheck``: the longest a held notification waits before it is looked at again (and held
    anew while still quiet). The retry topic releases its records in order, each partition
    waiting for its head, so a notification held all night would hold up every retry behind
    it; a held one sits at the head at most this long."""

    def __init__(
        self,
        windows: Mapping[str, Window | None],
        default_zone: ZoneInfo,
        expiring: Iterable[str] = (),
        recheck: float = 900.0,
    ) -> None:
        self._windows = {c: w for c, w in windows.items() if w is not None}
        self._default = default_zone
        self._expiring = frozenset(expiring)
        self._recheck = recheck

    def __bool__(self) -> bool:
        return bool(self._windows)

    def check(self, event: Event, channel: str, now: float) -> Quiet | None:
        """Whether ``channel`` of ``event`` falls in quiet hours at ``now``."""
        window = self._windows.get(channel)
        if window is None:
            return None
        zone, source = recipient_zone(event.customer, self._default, now)
        release = window.release(now, zone)
        if release is None:
            return None
        due = min(release, now + self._recheck)
        return Quiet(release, due, zone.key, source, event.status in self._expiring)


def recipient_zone(customer: Customer, default: ZoneInfo, now: float) -> tuple[ZoneInfo, str]:
    """The recipient's time zone and the rule that gave it (the order in the docstring)."""
    if customer.timezone:
        return ZoneInfo(customer.timezone), "customer"
    region = region_of(customer.locale)
    if customer.phone:
        zones = _phone_zones(customer.phone, region)
        if zones:
            return _middle(zones, now), "phone"
    if region:
        zones = _region_zones(region)
        if zones:
            return _middle(zones, now), "locale"
    return default, "default"


@functools.lru_cache(maxsize=4096)
def _phone_zones(phone: str, region: str | None) -> tuple[str, ...]:
    try:
        parsed = phonenumbers.parse(phone, region)
    except phonenumbers.NumberParseException:
        return ()
    return tuple(z for z in time_zones_for_number(parsed) if z != "Etc/Unknown")


@functools.lru_cache(maxsize=512)
def _region_zones(region: str) -> tuple[str, ...]:
    zones = get_global("territory_zones")
    return tuple(zones.get(region.upper(), ()))


def _middle(zones: tuple[str, ...], now: float) -> ZoneInfo:
    """The zone in the middle by UTC offset at ``now`` (ties by name, so the choice is stable)."""
    if len(zones) == 1:
        return ZoneInfo(zones[0])
    at = datetime.fromtimestamp(now, UTC)
    ranked = sorted(
        (ZoneInfo(z) for z in zones), key=lambda z: (at.astimezone(z).utcoffset(), z.key)
    )
    return ranked[(len(ranked) - 1) // 2]


def quiet_hours(settings: PacingSettings) -> QuietHours:
    return QuietHours(
        settings.quiet_windows,
        ZoneInfo(settings.default_timezone),
        settings.expiring,
        settings.quiet_hours_recheck,
    )
