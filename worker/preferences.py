"""Opt-outs: who asked not to be notified on a channel, and how the worker learns it.

A preference belongs to a subject, written as the preferences topic keys it::

    email:<address>      the address, lower-cased
    phone:<E.164>        e.g. phone:+84901234567
    customer:<id>        the event's ``customer.id``

A notification is skipped as ``opted_out`` (``delivery.Courier``, before every send, retries
included) when any of its subjects (its address, and the customer's id when the event has
one) is opted out of its channel. Two sources write preferences, and for each subject and
channel the newest choice wins (the store keeps the time), so an old record read again cannot
undo a later STOP, and a later opt-in lifts an earlier STOP:

- the SMS provider: a refusal meaning "the recipient replied STOP" (``RecipientOptedOut``)
  opts the number out of SMS at the time of the answer (source ``provider``);
- the preferences topic (``KAFKA_PREFERENCES_TOPIC``, compacted, source ``topic``): each
  record is the subject's whole choice, ``{"opted_out": ["sms"], "updated_at": "..."}``; a
  channel it does not list is opted in, and a tombstone (no value) opts every channel back in,
  as the compacted topic forgets the key. ``updated_at`` defaults to the record's timestamp.

Here: the subjects and the reading of a record (pure); ``preference_feed`` keeps the topic's
records in the store. ``docs/preferences.md`` is the contract for the shop.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, ValidationError

from worker.envelope import Envelope
from worker.events import Channel, Timestamp
from worker.logs import mask_email, mask_phone
from worker.policy import normalize_phone

PROVIDER = "provider"  # the sources a Preference names
TOPIC = "topic"
MAX_ID = 200  # characters of a customer id, as events allow


def address_subject(channel: str, address: str) -> str:
    """The subject of a notification's address: an email address or an E.164 number."""
    return f"email:{address.lower()}" if channel == "email" else f"phone:{address}"


def subjects(channel: str, address: str, customer_id: str | None) -> tuple[str, ...]:
    """Every subject whose opt-out stops a notification on ``channel`` to ``address``."""
    own = address_subject(channel, address)
    return (own, f"customer:{customer_id}") if customer_id else (own,)


def masked(subject: str) -> str:
    """A subject fit for logs: addresses and numbers masked, customer ids as they are."""
    kind, _, value = subject.partition(":")
    if kind == "email":
        return f"email:{mask_email(value)}"
    if kind == "phone":
        return f"phone:{mask_phone(value)}"
    return subject


class InvalidPreference(ValueError):
    """A preferences record that says nothing the worker can keep."""


class _Choice(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    opted_out: list[Channel]
    updated_at: Timestamp | None = None


@dataclass(frozen=True, slots=True)
class Update:
    """One record of the preferences topic, read: the subject's choice for every channel."""

    subject: str
    opted_out: frozenset[str]
    at: float


def subject_of(key: bytes | None) -> str:
    """The record key as a subject, normalised (InvalidPreference says why it is none)."""
    try:
        text = (key or b"").decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidPreference("key is not UTF-8") from exc
    kind, sep, value = text.strip().partition(":")
    value = value.strip()
    if not sep or not value:
        raise InvalidPreference("key must be email:<address>, phone:<E.164> or customer:<id>")
    if kind == "email" and "@" in value and value.isprintable() and " " not in value:
        return f"email:{value.lower()}"
    if kind == "phone" and value.startswith("+") and (number := normalize_phone(value, None)):
        return f"phone:{number}"
    if kind == "customer" and len(value) <= MAX_ID and value.isprintable():
        return f"customer:{value}"
    raise InvalidPreference(f"key {masked(text)!r} is not email:, phone:+<E.164> or customer:")


def read(envelope: Envelope, now: float) -> Update:
    """The record's update; a tombstone opts every channel in, at the record's time."""
    subject = subject_of(envelope.key)
    at = envelope.timestamp if envelope.timestamp is not None else now
    if envelope.value is None:
        return Update(subject, frozenset(), at)
    try:
        choice = _Choice.model_validate_json(envelope.value)
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or "value"
        raise InvalidPreference(f"{where}: {first['msg']}") from exc
    if choice.updated_at is not None:
        at = choice.updated_at.timestamp()
    return Update(subject, frozenset(choice.opted_out), at)
