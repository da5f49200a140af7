"""The event contract: what ``decode`` accepts, and why it refuses the rest."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.factories import event
from worker.events import MAX_RECORD_BYTES, Event, InvalidEvent, _parsed, decode

SAMPLES = Path(__file__).resolve().parent.parent / "samples" / "events.jsonl"
STATUS_MESSAGE = (
    "status: Input should be 'order_confirmed', 'processing', 'shipped', 'in_transit', "
    "'out_for_delivery', 'delivered', 'delayed', 'delivery_failed', 'available_for_pickup', "
    "'returned', 'cancelled' or 'exception'"
)


def encode(data: Any) -> bytes:
    return json.dumps(data, ensure_ascii=False).encode()


def with_field(path: str, value: Any) -> bytes:
    """A valid event with the dotted ``path`` set to ``value`` (missing parents are added)."""
    data = event("evt-1", "shipped")
    *parents, leaf = path.split(".")
    target = data
    for part in parents:
        target = target.setdefault(part, {})
    target[leaf] = value
    return encode(data)


def without_field(path: str) -> bytes:
    """A valid event with the dotted ``path`` removed."""
    data = event("evt-1", "shipped")
    *parents, leaf = path.split(".")
    target = data
    for part in parents:
        target = target[part]
    del target[leaf]
    return encode(data)


def invalid(value: bytes | None) -> InvalidEvent:
    result = decode(value)
    assert isinstance(result, InvalidEvent), result
    return result


def valid(value: bytes) -> Event:
    result = decode(value)
    assert isinstance(result, Event), result
    return result


def test_a_full_event_decodes_to_its_values() -> None:
    """Every field of a well-formed event arrives typed and unchanged."""
    got = valid(encode(event("evt-1", "shipped")))
    assert got.event_id == "evt-1"
    assert got.occurred_at == datetime(2026, 11, 21, 8, 15, tzinfo=UTC)
    assert got.status == "shipped"
    assert got.shipment.id == "SHP-1"
    assert got.shipment.order_id == "ORD-5521"
    assert got.shipment.carrier == "Giao Hàng Nhanh"
    assert got.shipment.tracking_url == "https://track.example/VN123456789"
    assert got.shipment.estimated_delivery == date(2026, 11, 25)
    assert got.customer.name == "Nguyễn Văn An"
    assert got.customer.phone == "+84 90 123 4567"
    assert got.customer.locale == "vi-VN"
    assert got.customer.channels is None


def test_the_committed_samples_decode_as_intended() -> None:
    """samples/events.jsonl holds 23 valid events, then one schema violation and one non-JSON
    line (the demo's dead-letter cases)."""
    results = [decode(line) for line in SAMPLES.read_bytes().splitlines()]
    assert len(results) == 25
    assert all(isinstance(r, Event) for r in results[:23])
    assert [type(r).__name__ + ":" + getattr(r, "kind", "") for r in results[23:]] == [
        "InvalidEvent:schema",
        "InvalidEvent:not_json",
    ]


_FULL = encode(event("evt-1", "shipped"))
_TRICKY = {
    "escapes": _FULL.replace(b'"evt-1"', b'"evt-\\u00e9\\n\\t1"'),
    "a lone surrogate": _FULL.replace(b'"evt-1"', b'"evt-\\ud800"'),
    "a NUL escape": _FULL.replace(b'"evt-1"', b'"evt-\\u00001"'),
    "a duplicate key": _FULL.replace(b'"status": "shipped"', b'"status": "x", "status": "shipped"'),
    "NaN": _FULL.replace(b'"evt-1"', b"NaN"),
    "a number for a string": _FULL.replace(b'"evt-1"', b"12"),
    "a huge number": _FULL.replace(b'"evt-1"', b"1e400"),
    "a byte-order mark": b"\xef\xbb\xbf" + _FULL,
    "surrounding whitespace": b" \n" + _FULL + b"\r\n ",
    "trailing data": _FULL + b" {}",
    "a raw control character": _FULL.replace(b'"evt-1"', b'"evt-\x011"'),
    "Latin-1": '{"event_id": "caf\u00e9"}'.encode("latin-1"),
    "nesting 500 deep": _FULL[:-1] + b', "x": ' + b"[" * 500 + b"]" * 500 + b"}",
}


@pytest.mark.parametrize(
    "value",
    [*SAMPLES.read_bytes().splitlines(), *_TRICKY.values()],
    ids=[*(f"sample-{i}" for i in range(25)), *_TRICKY],
)
def test_the_fast_path_reads_what_the_step_by_step_path_reads(value: bytes) -> None:
    """``decode`` tries pydantic's JSON parser first; what that accepts, the step-by-step
    path (json, then the model) reads to the very same event, and the rest is its verdict."""
    try:
        fast: Event | None = Event.model_validate_json(value)
    except ValueError:
        fast = None
    slow = _parsed(value)
    if fast is not None:
        assert slow == fast
    assert decode(value) == slow


def test_the_offset_of_occurred_at_is_kept() -> None:
    """08:15+07:00 keeps its offset and is the instant 01:15Z."""
    got = valid(with_field("occurred_at", "2026-11-21T08:15:00+07:00"))
    assert got.occurred_at.utcoffset() == timedelta(hours=7)
    assert got.occurred_at == datetime(2026, 11, 21, 1, 15, tzinfo=UTC)


def test_only_the_required_fields_are_enough() -> None:
    """event_id, occurred_at, status and shipment id/order_id make a valid event."""
    got = valid(
        encode(
            {
                "event_id": "e",
                "occurred_at": "2026-11-21T08:15:00Z",
                "status": "processing",
                "shipment": {"id": "s", "order_id": "o"},
            }
        )
    )
    assert (got.customer.email, got.customer.locale, got.shop.name) == (None, None, None)


def test_unknown_fields_are_ignored() -> None:
    """Fields the contract does not know, at any level, do not make an event invalid."""
    data = event("evt-1", "shipped", schema_version=7)
    data["shipment"]["weight_kg"] = 1.5
    data["customer"]["loyalty"] = {"tier": "gold"}
    got = valid(encode(data))
    assert "schema_version" not in got.model_dump()
    assert "weight_kg" not in got.shipment.model_dump()


@pytest.mark.parametrize(
    "path", ["event_id", "occurred_at", "status", "shipment", "shipment.id", "shipment.order_id"]
)
def test_a_missing_required_field_is_named(path: str) -> None:
    """Each missing required field is a schema error naming the field."""
    assert invalid(without_field(path)) == InvalidEvent("schema", f"{path}: Field required")


def test_every_problem_is_listed() -> None:
    """Several problems are reported together, separated by semicolons."""
    data = event("evt-1", "shipped")
    del data["event_id"], data["status"]
    assert invalid(encode(data)) == InvalidEvent(
        "schema", "event_id: Field required; status: Field required"
    )


def test_more_than_five_problems_are_counted() -> None:
    """The message lists five problems and counts the rest."""
    result = invalid(encode({"shipment": {}, "customer": {"channels": ["fax", "pigeon"]}}))
    assert result == InvalidEvent(
        "schema",
        "event_id: Field required; occurred_at: Field required; status: Field required; "
        "shipment.id: Field required; shipment.order_id: Field required; and 2 more",
    )


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("event_id", 5, "event_id: Input should be a valid string"),
        (
            "shipment",
            "SHP-1",
            "shipment: Input should be a valid dictionary or instance of Shipment",
        ),
        ("shipment.id", "", "shipment.id: String should have at least 1 character"),
        ("shipment.id", "   ", "shipment.id: String should have at least 1 character"),
        ("customer.channels", "email", "customer.channels: Input should be a valid list"),
        ("customer.channels", ["fax"], "customer.channels.0: Input should be 'email' or 'sms'"),
        ("customer", None, "customer: Input should be a valid dictionary or instance of Customer"),
    ],
)
def test_a_wrong_type_is_named(path: str, value: Any, message: str) -> None:
    """A value of the wrong type or shape is a schema error naming the field."""
    assert invalid(with_field(path, value)) == InvalidEvent("schema", message)


@pytest.mark.parametrize("status", ["lost", "Shipped", "", None])
def test_an_unknown_status_is_named(status: str | None) -> None:
    """Only the twelve statuses, spelled exactly, are valid."""
    assert invalid(with_field("status", status)) == InvalidEvent("schema", STATUS_MESSAGE)


@pytest.mark.parametrize(
    "occurred_at",
    [
        1795248900,
        1795248900.5,
        "1795248900",
        "2026-11-21",
        "2026-11-21T08:15:00",
        "2026-11-21T08:15",
        "21/11/2026 08:15 +07:00",
    ],
)
def test_occurred_at_must_be_rfc3339_with_offset(occurred_at: Any) -> None:
    """Epoch numbers, bare dates and naive times are refused, not guessed at."""
    assert invalid(with_field("occurred_at", occurred_at)) == InvalidEvent(
        "schema",
        "occurred_at: must be an RFC 3339 timestamp with offset, like 2026-11-21T08:15:00+07:00",
    )


@pytest.mark.parametrize(
    ("path", "url"),
    [
        ("shipment.tracking_url", "javascript:alert(1)"),
        ("shipment.tracking_url", "ftp://track.example/1"),
        ("shipment.tracking_url", 'https://track.example/"><script>'),
        ("shipment.tracking_url", "https://track.example/a b"),
        ("shop.url", "javascript:alert(1)"),
    ],
)
def test_urls_must_be_plain_http(path: str, url: str) -> None:
    """A link that is not a plain http(s) URL is refused before it can reach an email."""
    assert invalid(with_field(path, url)) == InvalidEvent(
        "schema", f"{path}: must be an http(s) URL without spaces, quotes or invisible characters"
    )


def test_line_breaks_in_a_name_fold_to_one_space() -> None:
    """CR/LF (a header-injection attempt) in customer.name become a single space."""
    got = valid(with_field("customer.name", " Nguyễn\r\n  Văn\nAn\r\nBcc: x@evil.example "))
    assert got.customer.name == "Nguyễn Văn An Bcc: x@evil.example"


@pytest.mark.parametrize(
    "char", ["\x00", "\x07", "\x08", "\x0b", "\x0c", "\x1b", "\x7f", "\u2028", "\u2029"]
)
def test_control_characters_are_refused(char: str) -> None:
    """C0 controls other than tab/CR/LF, DEL and Unicode line separators inside a name are
    invalid."""
    assert invalid(with_field("customer.name", f"A{char}n")) == InvalidEvent(
        "schema", "customer.name: must not contain control characters"
    )


@pytest.mark.parametrize("char", ["\x80", "\x9b", "\x9f"])
def test_c1_control_characters_are_refused(char: str) -> None:
    """C1 controls (U+0080-U+009F, e.g. the 8-bit escape CSI) are control characters too."""
    assert invalid(with_field("customer.name", f"An{char}[31m")) == InvalidEvent(
        "schema", "customer.name: must not contain control characters"
    )


def test_control_characters_in_the_detail_are_refused() -> None:
    """The multi-line detail keeps line breaks but refuses an escape character."""
    assert valid(with_field("shipment.detail", "Line 1\nLine 2")).shipment.detail == (
        "Line 1\nLine 2"
    )
    assert invalid(with_field("shipment.detail", "\x1b[2J")) == InvalidEvent(
        "schema", "shipment.detail: must not contain control characters"
    )


def test_a_tombstone_is_a_schema_error() -> None:
    """A record without a value (a compaction tombstone) is invalid, not a crash."""
    assert invalid(None) == InvalidEvent("schema", "record has no value (tombstone)")


@pytest.mark.parametrize("value", [b"null", b"[]", b'"shipped"', b"42"])
def test_json_that_is_not_an_object(value: bytes) -> None:
    """JSON that is not an object is a schema error about the whole event."""
    assert invalid(value) == InvalidEvent(
        "schema", "event: Input should be a valid dictionary or instance of Event"
    )


def test_bytes_that_are_not_utf8() -> None:
    """Latin-1 bytes are reported as not_utf8 with the offending position."""
    value = '{"event_id": "caf\u00e9"}'.encode("latin-1")
    assert invalid(value) == InvalidEvent(
        "not_utf8", "value is not UTF-8: invalid continuation byte at byte 17"
    )


@pytest.mark.parametrize("value", [b"", b"not json", b"{'event_id': 'x'}", b'{"a": 1'])
def test_text_that_is_not_json(value: bytes) -> None:
    """UTF-8 text that does not parse is not_json."""
    result = invalid(value)
    assert result.kind == "not_json"
    assert result.message.startswith("value is not JSON: ")


def test_deep_nesting_is_refused_not_raised() -> None:
    """100000 nested arrays give an InvalidEvent instead of a RecursionError."""
    result = invalid(b"[" * 100_000)
    assert result.kind == "not_json"
    assert result.message.startswith("value is not JSON: maximum recursion depth exceeded")


def test_deep_nesting_inside_a_field_is_refused_not_raised() -> None:
    """Deeply nested JSON in an ignored field of a valid event is still refused, not raised."""
    nested = "[" * 100_000 + "]" * 100_000
    value = encode(event("evt-1", "shipped"))[:-1] + b', "extra": ' + nested.encode() + b"}"
    assert invalid(value).kind == "not_json"


def test_a_record_at_the_size_limit_is_accepted() -> None:
    """A valid event padded to exactly 256 KiB is still decoded."""
    body = encode(event("evt-1", "shipped"))
    value = body + b" " * (MAX_RECORD_BYTES - len(body))
    assert len(value) == MAX_RECORD_BYTES
    assert valid(value).event_id == "evt-1"


def test_a_record_over_the_size_limit_is_too_large() -> None:
    """One byte over 256 KiB is too_large, before any decoding."""
    value = b"\xff" * (MAX_RECORD_BYTES + 1)
    assert invalid(value) == InvalidEvent("too_large", "record value is 262145 bytes, over 262144")


@pytest.mark.parametrize(
    "address",
    [
        "help@shop.example\nBcc: victim@evil.example",
        "help\x00@shop.example",
        "Help <help@shop.example>",
        "help@shop.example, victim@evil.example",
        "not an address",
        "hëlp@shop.example",
    ],
)
def test_the_support_email_must_be_one_plain_address(address: str) -> None:
    """shop.support_email, which reaches every email's text, is refused unless it is a plain
    address as a customer's email must be: no line breaks, NUL, display name or second one."""
    assert invalid(with_field("shop.support_email", address)) == InvalidEvent(
        "schema", "shop.support_email: must be a plain address like help@shop.example"
    )
    assert valid(with_field("shop.support_email", " help@shop.example ")).shop.support_email == (
        "help@shop.example"
    )


@pytest.mark.parametrize(
    "char",
    [
        "\x00",
        "\x1b",
        "\x9b",
        "\u202e",
        "\u2066",
        "\u200b",
        "\u200d",
        "\ufeff",
        "\u00a0",
        "\u3000",
        "\t",
        "\u2028",
    ],
)
@pytest.mark.parametrize("path", ["shipment.tracking_url", "shop.url"])
def test_urls_refuse_controls_invisible_characters_and_spaces(path: str, char: str) -> None:
    """A link holding a control, bidi or zero-width character or any space is refused, since
    it would show one address and lead to another (or break the email's 8bit part)."""
    assert invalid(with_field(path, f"https://track.example/{char}VN1")) == InvalidEvent(
        "schema", f"{path}: must be an http(s) URL without spaces, quotes or invisible characters"
    )


@pytest.mark.parametrize(
    "path",
    [
        "customer.name",
        "shop.name",
        "shipment.carrier",
        "shipment.location",
        "shipment.tracking_number",
        "shipment.detail",
    ],
)
def test_bidi_overrides_and_zero_width_spaces_are_removed_from_text(path: str) -> None:
    """Bidi embeddings, overrides and isolates (which reorder what a reader sees) and
    zero-width spaces, word joiners and BOMs (which hide text) are removed from free text."""
    value = "\u202eAn\u202c \u2067Sen\u2069 \u200bK\u2060i\ufeffm\u202a\u202b\u202d\u2066\u2068"
    got = valid(with_field(path, value)).model_dump(mode="json")
    section, field = path.split(".")
    assert got[section][field] == "An Sen Kim"


@pytest.mark.parametrize(
    "text",
    [
        "Gia đình 👩\u200d👩\u200d👧",  # ZWJ: one emoji of three people
        "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645",  # ZWNJ: Persian, "I want"
        "\u05e9\u05dc\u05d5\u05dd\u200f 123",  # RLM: a mark, it reorders nothing but neutrals
    ],
)
def test_joiners_and_direction_marks_that_scripts_need_are_kept(text: str) -> None:
    """ZWJ (emoji sequences, Indic scripts), ZWNJ (Persian) and the LRM/RLM/ALM marks stay in
    names and details, where they are part of how the text is written."""
    assert valid(with_field("customer.name", text)).customer.name == text
    assert valid(with_field("shipment.detail", text)).shipment.detail == text


@pytest.mark.parametrize("char", ["\u202e", "\u2066", "\u200b", "\u200d", "\ufeff", "\u00ad"])
@pytest.mark.parametrize("path", ["event_id", "shipment.id", "shipment.order_id"])
def test_ids_refuse_invisible_characters(path: str, char: str) -> None:
    """An id holding an invisible formatting character is refused: it would look like another
    id (in logs, in the dead-letter topic) while being a different key."""
    assert invalid(with_field(path, f"ORD{char}-1")) == InvalidEvent(
        "schema", f"{path}: must not contain invisible formatting characters"
    )
