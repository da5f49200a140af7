"""The hand-built email reads back, through the standard library's parser, exactly as the
message we meant: headers, encodings, both parts."""

from __future__ import annotations

import email
import email.policy
from datetime import UTC, datetime, timedelta
from email.header import decode_header, make_header
from email.message import EmailMessage
from email.utils import formataddr
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.channels import Outgoing, idempotency_key, mime
from worker.channels.mime import (
    MAX_DISPLAY_NAME,
    MAX_LINE,
    HeaderInjection,
    MimeBuilder,
    lines_fit,
)

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


def test_the_date_is_the_current_second_when_no_time_is_given(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without ``now`` the Date header (formatted once a second) names the second of the build."""
    clock = [NOW.timestamp() + 0.2]
    monkeypatch.setattr(mime, "time", SimpleNamespace(time=lambda: clock[0]))
    builder = MimeBuilder("shop@shop.example", None)
    dates = []
    for at in (0.2, 0.9, 1.1, 61.5):
        clock[0] = NOW.timestamp() + at
        dates.append(parse(builder.build(outgoing()).data)["Date"].datetime)
    assert dates == [NOW, NOW, NOW + timedelta(seconds=1), NOW + timedelta(seconds=61)]


@pytest.mark.parametrize(
    "fields",
    [
        {"subject": "Hello\r\nBcc: victim@evil.example"},
        {"recipient_name": "Eve\nBcc: victim@evil.example"},
        {"address": "an@example.com\r\nBcc: victim@evil.example"},
        {"address": "a@b.c, victim@evil.example"},
        {"address": "an\x00@example.com"},  # would also go on the RCPT line as it is
        {"address": "än@example.com"},  # SMTPUTF8 is not used
    ],
)
def test_line_breaks_or_extra_recipients_in_header_values_are_refused(
    fields: dict[str, str],
) -> None:
    """A header value with CR/LF, or an address that is not one plain ASCII mailbox, is never
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


def test_with_8bitmime_the_bodies_travel_as_utf8_and_parse_back() -> None:
    """8bit parts carry the UTF-8 text itself (no quoted-printable), and read back the same."""
    message = outgoing()
    wire = MimeBuilder("Shop <no-reply@shop.example>", None).build(message, eight_bit=True)
    assert wire.eight_bit
    assert wire.data.count(b"Content-Transfer-Encoding: 8bit\r\n") == 2
    assert "Đơn <b>ORD-5521</b> = 100% ✓".encode() in wire.data
    text, html = parse(wire.data).iter_parts()
    assert text.get_content().replace("\r\n", "\n") == message.text + "\n"
    assert html.get_content().replace("\r\n", "\n") == message.html
    assert b"\n" not in wire.data.replace(b"\r\n", b"")


def test_a_line_over_998_octets_or_the_boundary_falls_back_to_quoted_printable() -> None:
    """SMTP caps lines at 998 octets, and a body quoting the boundary could forge a part:
    such a part is quoted-printable, the other stays 8bit."""
    builder = MimeBuilder("Shop <no-reply@shop.example>", None)
    long_line = "ở" * 400  # 800 characters, 1,200 octets
    wire = builder.build(outgoing(text=long_line), eight_bit=True)
    assert wire.data.count(b"Content-Transfer-Encoding: quoted-printable\r\n") == 1
    assert wire.data.count(b"Content-Transfer-Encoding: 8bit\r\n") == 1
    assert max(len(line) for line in wire.data.split(b"\r\n")) <= 998
    text, _ = parse(wire.data).iter_parts()
    assert text.get_content().replace("\r\n", "\n") == long_line + "\n"

    boundary = f"=_{idempotency_key('evt-1', 'email')[:32]}"
    forged = f"hi\n--{boundary}\nContent-Type: text/html\n\n<b>forged</b>\n"
    wire = builder.build(outgoing(html=forged), eight_bit=True)
    parts = list(parse(wire.data).iter_parts())
    assert len(parts) == 2
    assert parts[1].get_content().replace("\r\n", "\n") == forged


@given(
    lengths=st.lists(
        st.one_of(st.integers(0, 40), st.integers(990, 1000), st.integers(0, 2100)),
        max_size=12,
    ),
    end=st.booleans(),
)
@settings(max_examples=500, deadline=None)
def test_lines_fit_measures_every_line(lengths: list[int], end: bool) -> None:
    """``lines_fit`` says whether every line is at most 998 octets exactly as measuring each
    line would, whatever the mix of short lines and lines around and over the limit."""
    body = b"\n".join(b"x" * n for n in lengths) + (b"\n" if end else b"")
    assert lines_fit(body) == (max(map(len, body.split(b"\n"))) <= MAX_LINE)


def test_without_8bitmime_every_part_is_quoted_printable() -> None:
    wire = MimeBuilder("Shop <no-reply@shop.example>", None).build(outgoing(), eight_bit=False)
    assert not wire.eight_bit
    assert wire.data.count(b"Content-Transfer-Encoding: quoted-printable\r\n") == 2
    assert wire.data.isascii()


@given(
    text=st.text(alphabet=st.sampled_from("a.ếĐ한 \r\n=-"), max_size=60),
    eight_bit=st.booleans(),
)
@settings(max_examples=300, deadline=None)
def test_every_line_ends_in_crlf_whatever_line_ends_the_text_has(
    text: str, eight_bit: bool
) -> None:
    """Every line end of a body (CRLF, LF or a lone CR, which SMTP forbids) goes out as CRLF,
    since the sender passes the bytes on as they are, and reads back as LF."""
    wire = MimeBuilder("shop@shop.example", None).build(
        outgoing(text=text, html=text), now=NOW, eight_bit=eight_bit
    )
    assert wire.data.count(b"\r") == wire.data.count(b"\r\n") == wire.data.count(b"\n")
    lines = text.replace("\r\n", "\n").replace("\r", "\n")
    for part in parse(wire.data).iter_parts():
        assert part.get_content().replace("\r\n", "\n") == lines + (
            "" if lines.endswith("\n") else "\n"
        )


@given(
    words=st.lists(
        st.text(st.characters(blacklist_categories=("Cc", "Cs", "Zs", "Zl", "Zp")), min_size=1),
        max_size=12,
    ),
    locale=st.sampled_from(["vi", "ko", "de-CH", "en"]),
)
@settings(max_examples=300, deadline=None)
def test_any_subject_reads_back_the_same_and_no_header_line_is_too_long(
    words: list[str], locale: str
) -> None:
    """A subject as the renderer makes it (one line, single spaces), in any script, reads
    back the same, its encoded words cut between characters in lines of at most 76."""
    subject = " ".join(words)
    wire = MimeBuilder("shop@shop.example", None).build(
        outgoing(subject=subject, locale=locale), now=NOW
    )
    parsed = parse(wire.data)
    assert str(parsed["Subject"]) == subject
    assert parsed["Content-Language"] == locale
    head = wire.data.split(b"\r\n\r\n", 1)[0].decode("ascii")
    for line in head.split("\r\n"):
        assert len(line) <= 76 or "=?" not in line, line


def test_a_plain_subject_that_looks_like_an_encoded_word_is_encoded() -> None:
    """A subject quoting ``=?...?=`` reads back literally instead of being decoded by clients."""
    subject = "Code =?utf-8?b?SGk=?= inside"
    wire = MimeBuilder("shop@shop.example", None).build(outgoing(subject=subject), now=NOW)
    assert subject.encode() not in wire.data
    assert str(parse(wire.data)["Subject"]) == subject


def decoded_header(data: bytes, name: str) -> str:
    """The header's value as an RFC 2047 decoder reads it: adjacent encoded words joined
    without the folding space between them (the modern parser's phrases keep that space)."""
    raw = email.message_from_bytes(data, policy=email.policy.compat32)[name]
    return str(make_header(decode_header(raw)))


def header_lines(data: bytes) -> list[str]:
    return data.split(b"\r\n\r\n", 1)[0].decode("ascii").split("\r\n")


NAMES = (
    st.text(st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp")), min_size=1, max_size=120)
    .map(lambda name: " ".join(name.split()))
    .filter(bool)
)


@given(name=NAMES)
@settings(max_examples=300, deadline=None)
def test_any_display_name_reads_back_the_same_in_short_lines(name: str) -> None:
    """A display name in any script, with specials or ``=?``, reads back exactly (the address
    unchanged) and every header line stays within 998 octets, 76 where it holds encoded words."""
    wire = MimeBuilder("shop@shop.example", None).build(outgoing(recipient_name=name), now=NOW)
    assert decoded_header(wire.data, "To") in (
        f"{name} <an@example.com>",
        f"{formataddr((name, 'an@example.com'))}",  # quoted: the decoder keeps the quotes
    )
    assert parse(wire.data)["To"].addresses[0].addr_spec == "an@example.com"
    for line in header_lines(wire.data):
        assert len(line) <= (76 if "=?" in line else MAX_LINE), line


def test_a_long_non_ascii_name_is_folded_into_encoded_words() -> None:
    """A 188-character Vietnamese name becomes several encoded words on lines of at most 76
    characters, and decodes to the name."""
    name = ("Nguyễn Thị Minh Khai " * 9).strip()
    wire = MimeBuilder("shop@shop.example", None).build(outgoing(recipient_name=name), now=NOW)
    to = [line for line in header_lines(wire.data) if "=?" in line]
    assert len(to) >= 4
    assert max(map(len, to)) <= 76
    assert decoded_header(wire.data, "To") == f"{name} <an@example.com>"


@pytest.mark.parametrize("name", ["=?utf-8?b?SGk=?=", "Eve =?utf-8?q?Bank_Support?= x"])
def test_a_plain_name_that_looks_like_an_encoded_word_reads_back_literally(name: str) -> None:
    """An ASCII display name holding ``=?...?=`` in To, From or Reply-To is itself encoded, so
    a client shows it literally instead of decoding it into another name."""
    wire = MimeBuilder(
        formataddr((name, "no-reply@shop.example")), formataddr((name, "help@shop.example"))
    ).build(outgoing(recipient_name=name), now=NOW)
    assert name.encode() not in wire.data
    parsed = parse(wire.data)
    for header in ("To", "From", "Reply-To"):
        assert parsed[header].addresses[0].display_name == name
        assert decoded_header(wire.data, header).startswith(f"{name} <")


def test_long_display_names_in_from_and_reply_to_are_folded_too() -> None:
    """The shop's configured names follow the same rules as the customer's."""
    name = ("Cửa hàng Sen " * 12).strip()
    wire = MimeBuilder(f"{name} <no-reply@shop.example>", f"{name} <help@shop.example>").build(
        outgoing(), now=NOW
    )
    for line in header_lines(wire.data):
        assert len(line) <= 76 or "=?" not in line, line
    assert decoded_header(wire.data, "From") == f"{name} <no-reply@shop.example>"
    assert decoded_header(wire.data, "Reply-To") == f"{name} <help@shop.example>"


@pytest.mark.parametrize("unit", ["a", "ễ", "👩‍👩‍👧", "e\u0301", "🇻🇳", "\u1112\u1161\u11ab"])
def test_a_display_name_is_cut_to_a_bound_between_characters(unit: str) -> None:
    """A name far past ``MAX_DISPLAY_NAME`` characters goes out as its start, cut before a
    combining mark, a joined emoji's rest, a flag's second letter or a Hangul syllable's
    jamo, so the header stays short whatever the name."""
    name = "x" + unit * 5000  # "x": the bound falls inside a unit for every unit here
    wire = MimeBuilder("shop@shop.example", None).build(outgoing(recipient_name=name), now=NOW)
    sent = decoded_header(wire.data, "To").removesuffix(" <an@example.com>")
    assert name.startswith(sent)
    assert MAX_DISPLAY_NAME - len(unit) < len(sent) <= MAX_DISPLAY_NAME
    assert (len(sent) - 1) % len(unit) == 0
    assert len(wire.data.split(b"\r\n\r\n", 1)[0]) < 4 * MAX_DISPLAY_NAME + 1000


def test_a_body_with_a_nul_goes_quoted_printable() -> None:
    """RFC 6152 forbids NUL in an 8bit part: such a part is quoted-printable even when the
    server takes 8BITMIME, and reads back with the character; the other part stays 8bit."""
    text = "Xin chào\x00An\n"
    wire = MimeBuilder("shop@shop.example", None).build(
        outgoing(text=text), now=NOW, eight_bit=True
    )
    assert b"\x00" not in wire.data
    assert wire.data.count(b"Content-Transfer-Encoding: quoted-printable\r\n") == 1
    assert wire.data.count(b"Content-Transfer-Encoding: 8bit\r\n") == 1
    plain, _ = parse(wire.data).iter_parts()
    assert plain.get_content().replace("\r\n", "\n") == text
