"""Preferences: how subjects are named and records read (pure), and which provider answers
mean "the recipient opted out" (against a real HTTP server on loopback)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from tests.sinks import SmsSink
from tests.test_sms_channel import MESSAGE
from worker.channels import PermanentDeliveryError, RecipientOptedOut, TransientDeliveryError
from worker.channels.http import HttpClient
from worker.channels.sms import TwilioSender, WebhookSender, http_client
from worker.dlq import DeadLetter, _replayed
from worker.envelope import Envelope
from worker.preferences import InvalidPreference, Update, read, subject_of, subjects
from worker.settings import KafkaSettings


@pytest.fixture
async def session() -> AsyncIterator[HttpClient]:
    client = http_client(timeout=1.0)
    yield client
    await client.close()


def _record(key: bytes | None, value: bytes | None, timestamp: float | None = 50.0) -> Envelope:
    return Envelope("prefs", 0, 7, key, value, timestamp=timestamp)


@pytest.mark.parametrize(
    ("key", "subject"),
    [
        (b"email:An@Example.COM", "email:an@example.com"),
        (b"phone:+84 90 123 4567", "phone:+84901234567"),
        (b" customer:C-77 ", "customer:C-77"),
    ],
)
def test_keys_are_normalised_as_the_worker_names_its_recipients(key: bytes, subject: str) -> None:
    """Email addresses lower-cased, numbers in E.164, customer ids as they are."""
    assert subject_of(key) == subject


@pytest.mark.parametrize(
    "key", [None, b"", b"an@example.com", b"phone:0901234567", b"fax:+1", b"email:", b"\xff:x"]
)
def test_a_key_that_names_no_subject_is_invalid(key: bytes | None) -> None:
    """No kind, an unknown kind, a national number without a country code, no value."""
    with pytest.raises(InvalidPreference):
        subject_of(key)


def test_a_notification_is_stopped_by_its_address_and_its_customer() -> None:
    """An SMS is looked up by its number and the customer id; without an id, the number only."""
    assert subjects("sms", "+84901234567", "C-77") == ("phone:+84901234567", "customer:C-77")
    assert subjects("email", "An@Example.com", None) == ("email:an@example.com",)


def test_a_record_is_the_subjects_whole_choice_at_its_time() -> None:
    """Listed channels are opted out, the others in; ``updated_at`` overrides the record's
    timestamp; a tombstone opts every channel in at the record's timestamp."""
    value = b'{"opted_out": ["sms"], "updated_at": "1970-01-01T00:01:40Z"}'
    assert read(_record(b"customer:C-77", value), now=1.0) == Update(
        "customer:C-77", frozenset({"sms"}), 100.0
    )
    assert read(_record(b"customer:C-77", b'{"opted_out": []}'), now=1.0).at == 50.0
    assert read(_record(b"customer:C-77", None, None), now=1.0) == Update(
        "customer:C-77", frozenset(), 1.0
    )


@pytest.mark.parametrize(
    "value", [b"{", b'{"opted_out": ["fax"]}', b'{"opted_out": "sms"}', b"{}", b"[]"]
)
def test_a_value_that_is_no_choice_is_invalid(value: bytes) -> None:
    """Not JSON, an unknown channel, not a list, nothing said: InvalidPreference."""
    with pytest.raises(InvalidPreference):
        read(_record(b"customer:C-77", value), now=1.0)


@pytest.mark.parametrize(("code", "opted_out"), [(21610, True), (21211, False)])
async def test_twilio_21610_means_opted_out(
    session: HttpClient, sms_sink: SmsSink, code: int, opted_out: bool
) -> None:
    """Twilio's 21610 (the recipient replied STOP) is RecipientOptedOut; any other 400 code
    stays a plain permanent failure."""
    sms_sink.faults.count, sms_sink.faults.reply, sms_sink.faults.code = 1, 400, code
    sender = TwilioSender(session, sms_sink.url, "AC1", "token", "+15005550006")
    with pytest.raises(PermanentDeliveryError) as caught:
        await sender.send(MESSAGE)
    assert isinstance(caught.value, RecipientOptedOut) is opted_out
    assert f"provider code {code}" in str(caught.value)


@pytest.mark.parametrize(("code", "status"), [("opted_out", 403), ("UNSUBSCRIBED", 400)])
async def test_a_gateway_saying_opted_out_means_opted_out(
    session: HttpClient, sms_sink: SmsSink, code: str, status: int
) -> None:
    """A webhook gateway's 4xx with code opted_out or unsubscribed (any case) is one too."""
    sms_sink.faults.count, sms_sink.faults.reply, sms_sink.faults.code = 1, status, code
    with pytest.raises(RecipientOptedOut):
        await WebhookSender(session, f"{sms_sink.url}/sms").send(MESSAGE)


async def test_a_5xx_saying_opted_out_is_still_transient(
    session: HttpClient, sms_sink: SmsSink
) -> None:
    """Only a refusal (4xx) records an opt-out: a failing server's body is not trusted."""
    sms_sink.faults.count, sms_sink.faults.reply, sms_sink.faults.code = 1, 503, "opted_out"
    with pytest.raises(TransientDeliveryError):
        await WebhookSender(session, f"{sms_sink.url}/sms").send(MESSAGE)


def test_a_replayed_preferences_dead_letter_goes_back_to_the_preferences_topic() -> None:
    """``dlq replay`` puts a preferences record back where it came from, not on the events
    topic (where it would be dead-lettered again as an invalid event)."""
    settings = KafkaSettings(topic="events", preferences_topic="prefs")
    origin = [("original.topic", b"prefs"), ("error.type", b"internal_error")]
    letter = DeadLetter(0, 3, datetime.now(UTC), b"customer:C-77", None, tuple(origin))
    assert _replayed(letter, settings) == ("prefs", [])
    event_letter = DeadLetter(
        0, 4, datetime.now(UTC), b"SHP-1", b"{", (("original.topic", b"events"),)
    )
    assert _replayed(event_letter, settings)[0] == "events"
