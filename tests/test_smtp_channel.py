"""The email sender against a real SMTP server on loopback: the envelope, the body encoding it
picks from the server's extensions, and what the recipient's client decodes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace

import pytest

from tests.sinks import SmtpSink
from worker.channels import Outgoing, PermanentDeliveryError, TransientDeliveryError
from worker.channels.smtp import SmtpSender
from worker.settings import EmailSettings, SmtpSecurity, SmtpSettings

MESSAGE = Outgoing(
    channel="email",
    event_id="evt-smtp-1",
    status="delivered",
    locale="ko",
    address="minji@example.com",
    recipient_name="김민지",
    subject="주문 ORD-77이 배송되었습니다",
    text="김민지님, 주문 ORD-77이 배송되었습니다.\n.\n감사합니다.",
    html="<p>주문 <b>ORD-77</b> &amp; 배송 완료</p>\n.starts with a dot\n",
)


def sender_to(sink: SmtpSink) -> SmtpSender:
    """A sender with one pooled connection to ``sink``, no TLS."""
    smtp = SmtpSettings(host="127.0.0.1", port=sink.port, security=SmtpSecurity.NONE, pool_size=1)
    email = EmailSettings.model_validate({"EMAIL_FROM": "Shop <no-reply@shop.example>"})
    return SmtpSender(smtp, email)


@pytest.fixture(params=[False, True], ids=["one-by-one", "pipelining"])
async def sender(smtp_sink: SmtpSink, request: pytest.FixtureRequest) -> AsyncIterator[SmtpSender]:
    """A sender to ``smtp_sink``, once with the server offering PIPELINING and once without."""
    smtp_sink.pipelining = request.param
    client = sender_to(smtp_sink)
    yield client
    await client.close()


@pytest.mark.parametrize("eight_bit_mime", [True, False])
async def test_the_body_arrives_intact_in_the_encoding_the_server_takes(
    sender: SmtpSender, smtp_sink: SmtpSink, eight_bit_mime: bool
) -> None:
    """The parts travel as UTF-8 under BODY=8BITMIME when the server takes it, else as
    quoted-printable ASCII, and lines starting with a dot survive the DATA framing."""
    smtp_sink.eight_bit_mime = eight_bit_mime
    await sender.send(MESSAGE)
    [mail] = await smtp_sink.wait_for(1)
    assert (mail.mail_from, mail.rcpt_tos) == ("no-reply@shop.example", ["minji@example.com"])
    encoding = b"8bit" if eight_bit_mime else b"quoted-printable"
    assert mail.raw.count(b"Content-Transfer-Encoding: " + encoding) == 2
    assert ("BODY=8BITMIME" in mail.mail_options) is eight_bit_mime
    assert f"SIZE={len(mail.raw)}" in mail.mail_options  # RFC 1870: the octets, dots unstuffed
    assert mail.raw.isascii() is not eight_bit_mime
    received = mail.message
    assert str(received["Subject"]) == MESSAGE.subject
    text, html = received.iter_parts()
    assert text.get_content().replace("\r\n", "\n") == MESSAGE.text + "\n"
    assert html.get_content().replace("\r\n", "\n") == MESSAGE.html


@pytest.mark.parametrize(
    ("step", "reply", "error", "says"),
    [
        ("RCPT", "550 5.1.1 no such user", PermanentDeliveryError, "recipient refused: 550"),
        ("RCPT", "451 4.3.0 later", TransientDeliveryError, "recipient refused: 451"),
        ("DATA", "554 5.6.0 content rejected", PermanentDeliveryError, "SMTP 554"),
        ("DATA", "452 4.3.1 full", TransientDeliveryError, "SMTP 452"),
    ],
)
async def test_a_refusal_fails_the_message_by_its_code_and_the_next_one_goes_out_fresh(
    sender: SmtpSender,
    smtp_sink: SmtpSink,
    step: str,
    reply: str,
    error: type[Exception],
    says: str,
) -> None:
    """A 5xx to RCPT or to the message's final dot fails it for good and a 4xx for a retry,
    and the next message goes out on a fresh session (the pool holds one connection)."""
    faults = smtp_sink.faults if step == "RCPT" else smtp_sink.data_faults
    faults.count, faults.reply = 1, reply
    with pytest.raises(error, match=says):
        await sender.send(MESSAGE)
    assert smtp_sink.messages == []
    await sender.send(MESSAGE)
    [mail] = await smtp_sink.wait_for(1)
    assert mail.rcpt_tos == ["minji@example.com"]
    assert mail.message["Message-ID"] is not None
    assert smtp_sink.connections == 2


async def test_a_message_over_the_servers_size_limit_fails_for_good() -> None:
    """A server whose SIZE limit the message exceeds answers MAIL with 552: dead-lettered."""
    sink = SmtpSink(size_limit=2000).start()
    sender = sender_to(sink)
    big = replace(MESSAGE, html="<p>주문</p>\n" * 300)
    try:
        with pytest.raises(PermanentDeliveryError, match="SMTP 552"):
            await sender.send(big)
        await sender.send(MESSAGE)  # a small one still goes out
        [mail] = await sink.wait_for(1)
        assert mail.message["Subject"] == MESSAGE.subject
    finally:
        await sender.close()
        sink.stop()
