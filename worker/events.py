"""The event contract and its decoder.

``decode(value)`` turns a Kafka record value into an ``Event`` or an ``InvalidEvent`` that says
why it cannot be one (not UTF-8, not JSON, schema violation). Unknown fields are ignored so
producers can evolve; missing required fields, wrong types and unknown statuses are invalid.
``docs/events.md`` describes the contract and ``docs/event.schema.json`` is generated from
``Event`` (``python -m worker schema``).
"""

from __future__ import annotations

import functools
import json
import re
import time
import unicodedata
import zoneinfo
from dataclasses import dataclass
from datetime import date
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
)

from worker.addresses import usable_email

Status = Literal[
    "order_confirmed",
    "processing",
    "shipped",
    "in_transit",
    "out_for_delivery",
    "delivered",
    "delayed",
    "delivery_failed",
    "available_for_pickup",
    "returned",
    "cancelled",
    "exception",
]
Channel = Literal["email", "sms"]
TERMINAL_STATUSES: frozenset[str] = frozenset({"delivered", "returned", "cancelled"})

MAX_RECORD_BYTES = 256 * 1024
# how far ahead of our clock an occurred_at may lie: generous for skewed producer clocks and
# pre-dated test data, while a year-9999 typo cannot freeze a shipment's notifications
MAX_FUTURE = 7 * 86400.0
# C0 (but tab and line breaks), DEL, C1 (e.g. \x9b, the 8-bit terminal escape), and the
# Unicode line/paragraph separators
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u2028\u2029]")
# Characters that change what a reader sees without being seen: bidi embeddings, overrides and
# isolates, which reorder a run of text ("Trojan Source"), and zero-width spaces, word joiners,
# invisible operators and BOMs, which hide or split it. Removed from free text rather than
# refused (an invalid event would lose the whole notification over a name pasted from a web
# page). Not ZWJ and ZWNJ, which emoji sequences, Indic scripts and Persian need, nor the
# LRM/RLM/ALM marks, which only set the direction of the neutral characters next to them.
_HIDING = re.compile("[\u202a-\u202e\u2066-\u2069\u200b\u2060-\u2064\ufeff]")
_UNUSUAL = re.compile(f"{_CONTROL.pattern}|{_HIDING.pattern}")  # one search for most text


def _no_control_chars(value: str) -> str:
    if _CONTROL.search(value):
        raise ValueError("must not contain control characters")
    return value


def _free_text(value: str) -> str:
    """Free text (names, places, the carrier's detail): no controls, nothing ``_HIDING``."""
    if _UNUSUAL.search(value) is None:
        return value
    return _HIDING.sub("", _no_control_chars(value)).strip()


def _one_line(value: str) -> str:
    """Fields that end up in headers, subjects or SMS: any line break becomes a space."""
    return " ".join(_free_text(value).split())


def _plain_id(value: str) -> str:
    """An id shows in logs and dead letters as it is: no formatting character (category Cf,
    the bidi controls and every zero-width one) may make it look like another id."""
    value = " ".join(_no_control_chars(value).split())
    if not value.isascii() and any(unicodedata.category(c) == "Cf" for c in value):
        raise ValueError("must not contain invisible formatting characters")
    return value


def iana_zone(value: str) -> str:
    """An IANA time-zone name the worker knows (``Asia/Ho_Chi_Minh``), as given."""
    if value not in _zone_names():
        raise ValueError("must be an IANA time zone like Asia/Ho_Chi_Minh")
    return value


@functools.cache
def _zone_names() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())  # reads the zone files once


_URL = re.compile(r"https?://[^\s<>\"']+\Z")


def _http_url(value: str) -> str:
    """A link shows one address and leads to it: printable (no controls, formatting or
    spaces of any kind), without quotes or angle brackets."""
    if not (_URL.match(value) and value.isprintable()):
        raise ValueError("must be an http(s) URL without spaces, quotes or invisible characters")
    return value


def _plain_address(value: str) -> str:
    """An address the worker writes into emails: a plain ``local@domain`` as a customer's."""
    if not usable_email(value):
        raise ValueError("must be a plain address like help@shop.example")
    return value


_RFC3339 = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})\Z"
)


def _rfc3339(value: object) -> object:
    """Only an RFC 3339 string with an offset: no epoch numbers, no bare dates, no naive times."""
    if not isinstance(value, str) or not _RFC3339.match(value):
        raise ValueError(
            "must be an RFC 3339 timestamp with offset, like 2026-11-21T08:15:00+07:00"
        )
    return value


Timestamp = Annotated[AwareDatetime, BeforeValidator(_rfc3339)]
TimestampText = Annotated[str, BeforeValidator(_rfc3339)]  # checked as Timestamp, kept as sent
Text = Annotated[str, StringConstraints(max_length=1000), AfterValidator(_one_line)]
Id = Annotated[str, StringConstraints(min_length=1, max_length=200), AfterValidator(_plain_id)]
LongText = Annotated[str, StringConstraints(max_length=2000), AfterValidator(_free_text)]
Url = Annotated[str, StringConstraints(max_length=2000), AfterValidator(_http_url)]
Address = Annotated[str, StringConstraints(max_length=254), AfterValidator(_plain_address)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, str_strip_whitespace=True)


class Shipment(_Model):
    id: Id
    order_id: Id
    tracking_number: Text | None = None
    carrier: Text | None = None
    tracking_url: Url | None = None
    location: Text | None = None
    estimated_delivery: date | None = None
    detail: LongText | None = None


class Customer(_Model):
    id: Id | None = Field(
        None, description="The shop's customer id: for opt-outs and the unsubscribe link."
    )
    name: Text | None = None
    email: Annotated[str, StringConstraints(max_length=254)] | None = None
    phone: Annotated[str, StringConstraints(max_length=40)] | None = None
    locale: (
        Annotated[
            str, StringConstraints(max_length=35, pattern=r"^[A-Za-z]{2,8}([-_][A-Za-z0-9]{1,8})*$")
        ]
        | None
    ) = None
    channels: list[Channel] | None = Field(
        None, description="Opt-in list; absent means every channel with a contact."
    )
    timezone: Annotated[str, StringConstraints(max_length=64), AfterValidator(iana_zone)] | None = (
        Field(
            None,
            description="IANA time zone for quiet hours, e.g. Asia/Ho_Chi_Minh; absent: "
            "from the phone number, else the locale's region, else DEFAULT_TIMEZONE.",
        )
    )


class Shop(_Model):
    name: Text | None = None
    url: Url | None = None
    support_email: Address | None = None


class Event(_Model):
    """One shipment-status event, as producers publish it."""

    model_config = ConfigDict(title="ShipmentStatusEvent")

    event_id: Id = Field(description="Unique per event; a repeat is a redelivery.")
    occurred_at: Timestamp = Field(
        description="RFC 3339 with offset, e.g. 2026-11-21T08:15:00+07:00"
    )
    status: Status
    shipment: Shipment
    customer: Customer = Field(default_factory=Customer)
    shop: Shop = Field(
        default_factory=Shop, description="Defaults to SHOP_NAME, SHOP_URL, SHOP_SUPPORT_EMAIL."
    )


@dataclass(frozen=True, slots=True)
class InvalidEvent:
    """Why a record value is not an Event: ``kind`` is one of ``not_utf8``, ``not_json``,
    ``too_large``, ``schema``."""

    kind: str
    message: str


def decode(value: bytes | None, now: float | None = None) -> Event | InvalidEvent:
    """The event in a record value, or why there is none. ``now`` (default: the clock) bounds
    how far in the future ``occurred_at`` may lie."""
    if value is not None and len(value) <= MAX_RECORD_BYTES:
        try:  # pydantic's own JSON parser: 11 us instead of 16 (json.loads, then validate)
            event = Event.model_validate_json(value)
        except (ValueError, RecursionError):  # ValidationError is one: the steps name the fault
            pass
        else:
            return _in_time(event, now)
    data = read_json(value)
    return data if isinstance(data, InvalidEvent) else validate(data, now)


def validate(data: object, now: float | None = None) -> Event | InvalidEvent:
    """The event in parsed JSON ``data``, or why there is none: what ``decode`` does after
    parsing, for data that came another way than as a record value (a CloudEvent's)."""
    event = _validated(data)
    return event if isinstance(event, InvalidEvent) else _in_time(event, now)


def read_json(value: bytes | None) -> object:
    """``value`` parsed as JSON, or the ``InvalidEvent`` saying why it cannot be (a tombstone,
    ``too_large``, ``not_utf8``, ``not_json``), in words a producer's team can act on."""
    if value is None:
        return InvalidEvent("schema", "record has no value (tombstone)")
    if len(value) > MAX_RECORD_BYTES:
        return InvalidEvent(
            "too_large", f"record value is {len(value)} bytes, over {MAX_RECORD_BYTES}"
        )
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError as exc:
        return InvalidEvent("not_utf8", f"value is not UTF-8: {exc.reason} at byte {exc.start}")
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:  # ValueError: also an int of > 4300 digits
        return InvalidEvent("not_json", f"value is not JSON: {_short(exc)}")


def _in_time(event: Event, now: float | None) -> Event | InvalidEvent:
    if event.occurred_at.timestamp() > (now if now is not None else time.time()) + MAX_FUTURE:
        # it would make every real event of the shipment look stale for the TTL
        return InvalidEvent("schema", "occurred_at: more than 7 days in the future")
    return event


def _parsed(value: bytes) -> Event | InvalidEvent:
    """``value`` decoded step by step (UTF-8, then JSON, then the schema), so that a bad
    record is refused with what is wrong with it. What ``Event.model_validate_json``
    accepts, this reads to the same event (tested)."""
    data = read_json(value)
    return data if isinstance(data, InvalidEvent) else _validated(data)


def _validated(data: object) -> Event | InvalidEvent:
    try:
        return Event.model_validate(data)
    except ValidationError as exc:
        return InvalidEvent("schema", _summarize(exc))


def _summarize(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors(include_url=False, include_input=False)[:5]:
        where = ".".join(str(p) for p in error["loc"]) or "event"
        parts.append(f"{where}: {error['msg'].removeprefix('Value error, ')}")
    more = exc.error_count() - len(parts)
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


def _short(exc: Exception) -> str:
    return str(exc)[:200]
