"""The hand-built email reads back, through the standard library's parser, exactly as the
message we meant: headers, encodings, both parts."""

from __future__ import annotations

import email
import email.policy
from datetime import UTC, datetime
from email.message import EmailMessage

import pytest

from worker.channels import Outgoing, idempotency_key
from worker.channels.mime import HeaderInjection, MimeBuilder

NOW = datetime(2026, 11, 22, 10, 30, tzinfo=UTC)


def outgoing(**fields: str) -> Outgoing:
    base = {
        "channel": "email",
        "event_id": "evt-1",
        "status": "shipped",
        "locale": "vi",
        "address": "an@example.com",
        "recipient_name": "Nguyễn Văn An",
        "subject": "Đơn hàng ORD-5521 đã được gửi đi: Cửa hàng Sen",
        "text": "Xin chào Nguyễn Văn An,\n\nĐơn hàng đã được gửi.\n" + "dòng dài " * 40,
        "html": '<!DOCTYPE html>\n<p style="margin:0">Đơn <b>ORD-5521</b> = 100% ✓</p>\n.\n',
    }
    return Outgoing(**{**base, **fields})  # type: ignore[arg-type]


def parse(data: bytes) -> EmailMessage:
    parsed = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


def test_the_message_parses_back_to_every_field() -> None:
    """Subject, addresses with display names, Date, Message-ID, language and both bodies come
    back exactly, and every header line is ASCII with CRLF endings."""
    builder = MimeBuilder("Cửa hàng Sen <no-reply@shop.example>", "Hỗ trợ <help@shop.example>")
    message = outgoing()
    wire = builder.build(message, now=NOW)
    parsed = parse(wire.data)
    assert (wire.sender, wire.recipients) == ("no-reply@shop.example", ("an@example.com",))
    assert str(parsed["Subject"]) == message.subject
    assert parsed["From"].addresses[0].display_name == "Cửa hàng Sen"
    assert parsed["To"].addresses[0].display_name == "Nguyễn Văn An"
    assert parsed["To"].addresses[0].addr_spec == "an@example.com"
    assert parsed["Reply-To"].addresses[0].addr_spec == "help@shop.example"
    assert parsed["Date"].datetime == NOW
    assert parsed["Message-ID"] == f"<{idempotency_key('evt-1', 'email')}@shop.example>"
    assert wire.message_id == parsed["Message-ID"]
    assert parsed["Content-Language"] == "vi"
    assert parsed.get_content_type() == "multipart/alternative"
    text, html = parsed.iter_parts()
    # bodies travel with CRLF line ends, as SMTP requires
    assert text.get_content().replace("\r\n", "\n") == message.text + "\n"
    assert html.get_content().replace("\r\n", "\n") == message.html
    head = wire.data.split(b"\r\n\r\n", 1)[0]
    assert head.isascii()
    assert b"\n" not in wire.data.replace(b"\r\n", b"")


@pytest.mark.parametrize(
    "fields",
    [
        {"subject": "Hello\r\nBcc: victim@evil.example"},
        {"recipient_name": "Eve\nBcc: victim@evil.example"},
        {"address": "an@example.com\r\nBcc: victim@evil.example"},
        {"address": "a@b.c, victim@evil.example"},
    ],
)
def test_line_breaks_or_extra_recipients_in_header_values_are_refused(
    fields: dict[str, str],
) -> None:
    """A header value with CR/LF, or an address field naming a second recipient, is never
    written; the builder refuses it."""
    with pytest.raises(ValueError) as refused:
        MimeBuilder("Shop <no-reply@shop.example>", None).build(outgoing(**fields))
    assert isinstance(refused.value, HeaderInjection) or "single plain address" in str(
        refused.value
    )


def test_specials_in_a_display_name_are_quoted_not_interpreted() -> None:
    """A name like 'Eve Bcc: victim@evil.example' stays a display name of one recipient."""
    wire = MimeBuilder("Shop <no-reply@shop.example>", None).build(
        outgoing(recipient_name="Eve Bcc: victim@evil.example, x")
    )
    parsed = parse(wire.data)
    (address,) = parsed["To"].addresses
    assert (address.display_name, address.addr_spec) == (
        "Eve Bcc: victim@evil.example, x",
        "an@example.com",
    )
    assert parsed["Bcc"] is None
