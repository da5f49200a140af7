"""Channel planning: the default status policy, customer opt-in, contacts and phone numbers."""

from __future__ import annotations

import re
from collections.abc import Callable
from email.errors import HeaderParseError
from email.headerregistry import Address
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from tests.factories import event
from worker.events import Event
from worker.policy import (
    DEFAULT_POLICY,
    Delivery,
    Plan,
    Skip,
    normalize_phone,
    plan,
    usable_email,
)

BOTH = frozenset({"email", "sms"})
EMAIL = Delivery("email", "an@example.com")
SMS = Delivery("sms", "+84901234567")

# written out by hand so a change to the default policy has to change this table too
EXPECTED_DEFAULT = {
    "order_confirmed": ("email",),
    "processing": (),
    "shipped": ("email", "sms"),
    "in_transit": (),
    "out_for_delivery": ("email", "sms"),
    "delivered": ("email", "sms"),
    "delayed": ("email", "sms"),
    "delivery_failed": ("email", "sms"),
    "available_for_pickup": ("email", "sms"),
    "returned": ("email",),
    "cancelled": ("email",),
    "exception": ("email", "sms"),
}

MakeEvent = Callable[..., Event]


@pytest.fixture
def make_event() -> MakeEvent:
    """Factory: a validated event with ``status``; keyword arguments override customer fields
    (``None`` removes a field)."""

    def make(status: str = "shipped", **customer: Any) -> Event:
        fields = event("evt-1", status, customer=customer)
        fields["customer"] = {k: v for k, v in fields["customer"].items() if v is not None}
        return Event.model_validate(fields)

    return make


def test_default_policy_names_every_status_exactly() -> None:
    """Email goes out for every status but processing/in_transit; SMS for the urgent seven."""
    assert DEFAULT_POLICY == EXPECTED_DEFAULT


@pytest.mark.parametrize(("status", "channels"), EXPECTED_DEFAULT.items())
def test_default_policy_plans_each_status(
    make_event: MakeEvent, status: str, channels: tuple[str, ...]
) -> None:
    """With both contacts and both channels configured, the plan follows the default policy."""
    expected = tuple({"email": EMAIL, "sms": SMS}[c] for c in channels)
    assert plan(make_event(status), DEFAULT_POLICY, BOTH) == Plan(expected, ())


def test_customer_channels_is_an_opt_in_list(make_event: MakeEvent) -> None:
    """A channel missing from ``customer.channels`` is skipped as opted_out."""
    result = plan(make_event(channels=["email"]), DEFAULT_POLICY, BOTH)
    assert result == Plan((EMAIL,), (Skip("sms", "opted_out"),))


def test_an_empty_opt_in_list_opts_out_of_everything(make_event: MakeEvent) -> None:
    """``channels: []`` means no channel at all, not every channel."""
    result = plan(make_event(channels=[]), DEFAULT_POLICY, BOTH)
    assert result == Plan((), (Skip("email", "opted_out"), Skip("sms", "opted_out")))


def test_opting_in_cannot_add_a_channel_the_policy_leaves_out(make_event: MakeEvent) -> None:
    """A customer asking for SMS on ``returned`` still gets only what the policy names."""
    result = plan(make_event("returned", channels=["email", "sms"]), DEFAULT_POLICY, BOTH)
    assert result == Plan((EMAIL,), ())


def test_a_status_without_channels_plans_nothing(make_event: MakeEvent) -> None:
    """``in_transit`` has no channels by default: no deliveries and no skips."""
    assert plan(make_event("in_transit"), DEFAULT_POLICY, BOTH) == Plan((), ())


def test_missing_contacts_are_skipped_as_no_contact(make_event: MakeEvent) -> None:
    """No email address and no phone number: each channel is skipped as no_contact."""
    result = plan(make_event(email=None, phone=None), DEFAULT_POLICY, BOTH)
    assert result == Plan((), (Skip("email", "no_contact"), Skip("sms", "no_contact")))


def test_blank_contacts_count_as_missing(make_event: MakeEvent) -> None:
    """Whitespace-only contacts are stripped to nothing and count as no_contact."""
    result = plan(make_event(email="  ", phone=" "), DEFAULT_POLICY, BOTH)
    assert result == Plan((), (Skip("email", "no_contact"), Skip("sms", "no_contact")))


@pytest.mark.parametrize(
    "email", ["an.example.com", "an@", "@example.com", "an@example", "an @example.com"]
)
def test_an_implausible_email_is_skipped(make_event: MakeEvent, email: str) -> None:
    """An address that is not local@domain.tld is skipped as invalid_email; SMS still goes."""
    result = plan(make_event(email=email), DEFAULT_POLICY, BOTH)
    assert result == Plan((SMS,), (Skip("email", "invalid_email"),))


def test_an_unusable_phone_is_skipped(make_event: MakeEvent) -> None:
    """A phone number that does not normalise is skipped as invalid_phone; email still goes."""
    result = plan(make_event(phone="call me maybe"), DEFAULT_POLICY, BOTH)
    assert result == Plan((EMAIL,), (Skip("sms", "invalid_phone"),))


def test_sms_is_not_configured(make_event: MakeEvent) -> None:
    """Without an SMS provider the SMS channel is skipped as not_configured."""
    result = plan(make_event(), DEFAULT_POLICY, frozenset({"email"}))
    assert result == Plan((EMAIL,), (Skip("sms", "not_configured"),))


def test_opting_out_is_reported_before_not_configured(make_event: MakeEvent) -> None:
    """A channel both opted out of and not configured is reported as opted_out."""
    result = plan(make_event(channels=["email"]), DEFAULT_POLICY, frozenset({"email"}))
    assert result == Plan((EMAIL,), (Skip("sms", "opted_out"),))


def test_the_phone_is_read_in_the_customers_region(make_event: MakeEvent) -> None:
    """A national number in a vi-VN event is planned as its E.164 form."""
    result = plan(make_event(phone="090 123 4567", locale="vi-VN"), DEFAULT_POLICY, BOTH)
    assert result == Plan((EMAIL, SMS), ())


@pytest.mark.parametrize(
    ("raw", "locale", "expected"),
    [
        ("090 123 4567", "vi-VN", "+84901234567"),
        ("090 123 4567", "vi", "+84901234567"),
        ("010-1234-5678", "ko", "+821012345678"),
        ("010-1234-5678", "ko_KR", "+821012345678"),
        ("0151 23456789", "de-DE", "+4915123456789"),
        ("0151 23456789", "en-DE", "+4915123456789"),
        ("(202) 555-0143", "en", "+12025550143"),
        ("+84 90 123 4567", "de-DE", "+84901234567"),
        ("+49 151 23456789", "vi-VN", "+4915123456789"),
    ],
)
def test_phone_numbers_normalise_to_e164(raw: str, locale: str, expected: str) -> None:
    """A national number takes the locale's region; a number with + keeps its own country."""
    assert normalize_phone(raw, locale) == expected


@pytest.mark.parametrize(
    ("raw", "locale"),
    [
        ("garbage", "vi-VN"),
        ("", "vi-VN"),
        ("12", "en"),
        ("090 123 4567", None),
        ("090 123 4567", "fr"),
        ("+84 12", None),
    ],
)
def test_unusable_phone_numbers_normalise_to_none(raw: str, locale: str | None) -> None:
    """Garbage, too-short numbers and national numbers without a known region give None."""
    assert normalize_phone(raw, locale) is None


_OLD_EMAIL = re.compile(
    r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+$"
)


def _parsed_by_the_email_package(address: str) -> bool:
    """The check ``usable_email`` replaced: the old pattern, then ``Address`` as the judge."""
    if not _OLD_EMAIL.match(address):
        return False
    try:
        Address(addr_spec=address)
    except (ValueError, IndexError, HeaderParseError):
        return False
    return True


_ATEXT = "aZ09!#$%&'*+/=?^_`{|}~-"
_ADDRESS_PARTS = st.text(alphabet=_ATEXT + '."() <>,;:\\[]é\n', max_size=6)


@given(
    local=st.one_of(
        _ADDRESS_PARTS,
        st.text(alphabet="ab.", max_size=6),
        st.integers(60, 70).map(lambda n: "a." * (n // 2) + "b"),
    ),
    domain=st.one_of(
        _ADDRESS_PARTS, st.sampled_from(["example.com", "a.b", "-a.com", "a-.b", "example.com\n"])
    ),
    at=st.sampled_from(["@", "@@", ""]),
)
@example(local="a..b", domain="example.com", at="@")
@example(local="a" * 64, domain="example.com", at="@")
@example(local="a" * 65, domain="example.com", at="@")
@example(local="a.", domain="example.com", at="@")
@settings(max_examples=3000, deadline=None)
def test_usable_email_agrees_with_the_email_package(local: str, domain: str, at: str) -> None:
    """The dot-atom pattern accepts exactly what the old pattern plus the email package did."""
    address = f"{local}{at}{domain}"
    assert usable_email(address) is _parsed_by_the_email_package(address)
