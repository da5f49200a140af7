"""Which channels an event gets, and where each one goes.

The status policy says which channels each status gets: ``DEFAULT_POLICY``, or the default
with the statuses ``NOTIFY_POLICY`` lists replaced (``parse_policy``, at start-up; the one
place here that reads a file). ``plan`` is pure: a channel is planned when the status policy
names it, the worker has it configured, the customer did not leave it out of
``customer.channels``, and the customer has a usable contact for it (a plausible email
address; a phone number that normalises to E.164).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import get_args

import phonenumbers

from worker.addresses import usable_email
from worker.events import Channel, Event, Status

CHANNELS: tuple[str, ...] = get_args(Channel)
STATUSES: tuple[str, ...] = get_args(Status)
SMS_STATUSES = (
    "shipped",
    "out_for_delivery",
    "delivered",
    "delayed",
    "delivery_failed",
    "available_for_pickup",
    "exception",
)
DEFAULT_POLICY: dict[str, tuple[str, ...]] = {
    status: tuple(
        channel
        for channel, wanted in (
            ("email", status not in ("processing", "in_transit")),
            ("sms", status in SMS_STATUSES),
        )
        if wanted
    )
    for status in STATUSES
}

# a number written without a country code is read in the country of the customer's language
_LANGUAGE_REGION = {"vi": "VN", "ko": "KR", "de": "DE", "en": "US"}


def parse_policy(raw: str) -> dict[str, tuple[str, ...]]:
    """NOTIFY_POLICY: empty (defaults), inline JSON, or a path to a JSON file; listed statuses
    override the default, the others keep it. ValueError says what is wrong with it."""
    if not raw.strip():
        return dict(DEFAULT_POLICY)
    text = raw if raw.lstrip().startswith(("{", "[")) else _read_policy_file(raw)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"NOTIFY_POLICY is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError('NOTIFY_POLICY must be an object like {"shipped": ["email", "sms"]}')
    policy = dict(DEFAULT_POLICY)
    for status, channels in data.items():
        if status not in STATUSES:
            raise ValueError(f"NOTIFY_POLICY names unknown status {status!r}")
        if not isinstance(channels, list) or not set(channels) <= set(CHANNELS):
            raise ValueError(f"NOTIFY_POLICY[{status!r}] must be a list of 'email'/'sms'")
        policy[status] = tuple(c for c in CHANNELS if c in channels)
    return policy


def _read_policy_file(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"NOTIFY_POLICY file {path!r} cannot be read: {exc.strerror}") from exc


@dataclass(frozen=True, slots=True)
class Delivery:
    channel: str
    address: str  # an email address or an E.164 number


@dataclass(frozen=True, slots=True)
class Skip:
    channel: str
    reason: str  # opted_out | no_contact | invalid_email | invalid_phone | not_configured


@dataclass(frozen=True, slots=True)
class Plan:
    deliveries: tuple[Delivery, ...]
    skips: tuple[Skip, ...]


def plan(event: Event, policy: Mapping[str, tuple[str, ...]], configured: frozenset[str]) -> Plan:
    deliveries: list[Delivery] = []
    skips: list[Skip] = []
    wanted = event.customer.channels
    for channel in policy.get(event.status, ()):
        if wanted is not None and channel not in wanted:
            skips.append(Skip(channel, "opted_out"))
        elif channel not in configured:
            skips.append(Skip(channel, "not_configured"))
        else:
            outcome = _contact(event, channel)
            if isinstance(outcome, Delivery):
                deliveries.append(outcome)
            else:
                skips.append(outcome)
    return Plan(tuple(deliveries), tuple(skips))


def _contact(event: Event, channel: str) -> Delivery | Skip:
    if channel == "email":
        email = event.customer.email
        if not email:
            return Skip(channel, "no_contact")
        return Delivery(channel, email) if usable_email(email) else Skip(channel, "invalid_email")
    phone = event.customer.phone
    if not phone:
        return Skip(channel, "no_contact")
    number = normalize_phone(phone, event.customer.locale)
    return Delivery(channel, number) if number else Skip(channel, "invalid_phone")


def normalize_phone(raw: str, locale: str | None) -> str | None:
    """E.164 form of ``raw``, or None when it is not a valid number. A number without a
    country code is read in the locale's region (``vi-VN`` -> VN; ``ko`` -> KR)."""
    try:
        parsed = phonenumbers.parse(raw, region_of(locale))
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(parsed):
        return None
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


def region_of(locale: str | None) -> str | None:
    if not locale:
        return None
    parts = re.split(r"[-_]", locale)
    for part in parts[1:]:
        if len(part) == 2 and part.isalpha():
            return part.upper()
    return _LANGUAGE_REGION.get(parts[0].lower())
