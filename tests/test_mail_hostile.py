"""The email sender against a hostile or merely odd relay on loopback: a raw TCP server that
answers any step (greeting, EHLO, HELO, MAIL, RCPT, DATA, the message) with bytes of its
choosing, in any encoding, with terminal escapes, at any length, or slowly. Every failure
leaves ``SmtpSender`` as a ``DeliveryError`` classified by what happens next, whose text is
clean printable text of bounded length, and the next message still goes out."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from worker.channels import (
    DeliveryError,
    Outgoing,
    PermanentDeliveryError,
    TransientDeliveryError,
)
from worker.channels.smtp import MAX_ERROR_TEXT, SmtpSender
from worker.settings import EmailSettings, SmtpSecurity, SmtpSettings

MESSAGE = Outgoing(
    channel="email",
    event_id="evt-hostile-1",
    status="shipped",
    locale="de",
    address="ana@mail.example",
    recipient_name="Ana",
    subject="Versandt",
    text="Ihre Bestellung ist unterwegs.",
    html="<p>Ihre Bestellung ist unterwegs.</p>",
)
STEPS = ("greeting", "EHLO", "HELO", "MAIL", "RCPT", "DATA", "message")
FINE = {
    "greeting": b"220 relay.example ESMTP\r\n",
    "EHLO": b"250-relay.example\r\n250 8BITMIME\r\n",
    "HELO": b"250 relay.example\r\n",
    "MAIL": b"250 2.1.0 ok\r\n",
    "RCPT": b"250 2.1.5 ok\r\n",
    "DATA": b"354 go ahead\r\n",
    "message": b"250 2.0.0 queued\r\n",
    "QUIT": b"221 bye\r\n",
}
# a localized relay's words in Latin-1, with what must never reach a terminal: ESC sequences,
# NUL, the C1 CSI, a bidi override and a zero-width space; and far too many of them
HOSTILE_TEXT = (
    b"4.2.0 Empf\xe4nger \x1b[31mrot\x1b[0m \x00\x9b2J \xe2\x80\xaeevil\xe2\x80\x8b" + b"x" * 5000
)
Reply = bytes | Callable[[asyncio.StreamWriter], Awaitable[None]]


@dataclass
class Relay:
    """Answers each step with ``FINE``, except the steps ``odd`` names, on the first
    connection only."""

    odd: dict[str, Reply]
    port: int = 0
    connections: int = 0
    running: set[asyncio.Task[None]] = field(default_factory=set)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.running.add(task)
        self.connections += 1
        replies = {**FINE, **self.odd} if self.connections == 1 else FINE
        try:
            await self._answer(writer, replies["greeting"])
            while line := await reader.readline():
                step = line[:4].decode("ascii", "replace").upper()
                await self._answer(writer, replies.get(step, b"502 what\r\n"))
                if step == "DATA" and replies["DATA"] == FINE["DATA"]:
                    await reader.readuntil(b"\r\n.\r\n")
                    await self._answer(writer, replies["message"])
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            self.running.discard(task)

    @staticmethod
    async def _answer(writer: asyncio.StreamWriter, reply: Reply) -> None:
        if isinstance(reply, bytes):
            writer.write(reply)
            await writer.drain()
        else:
            await reply(writer)


RelayFactory = Callable[[dict[str, Reply]], Awaitable[SmtpSender]]


@pytest.fixture
async def relay() -> AsyncIterator[RelayFactory]:
    """Start a ``Relay`` with the given odd replies; return a sender with one pooled
    connection to it and a timeout of 0.5 s."""
    started: list[tuple[asyncio.Server, Relay, SmtpSender]] = []

    async def start(odd: dict[str, Reply]) -> SmtpSender:
        relay = Relay(odd)
        server = await asyncio.start_server(relay.serve, "127.0.0.1", 0)
        relay.port = server.sockets[0].getsockname()[1]
        smtp = SmtpSettings(
            host="127.0.0.1",
            port=relay.port,
            security=SmtpSecurity.NONE,
            pool_size=1,
            timeout=0.5,
        )
        email = EmailSettings.model_validate({"EMAIL_FROM": "Shop <no-reply@shop.example>"})
        sender = SmtpSender(smtp, email)
        started.append((server, relay, sender))
        return sender

    yield start
    for server, relay, sender in started:
        await sender.close()
        if relay.running:
            await asyncio.wait(relay.running, timeout=5)
        server.close()


def assert_clean(error: DeliveryError) -> str:
    """The error's text: printable (so one line, without escapes or bidi controls), bounded."""
    text = str(error)
    assert text.isprintable(), ascii(text[:200])
    assert len(text) <= MAX_ERROR_TEXT, len(text)
    return text


@pytest.mark.parametrize("step", ["greeting", "EHLO", "MAIL", "RCPT", "DATA", "message"])
@pytest.mark.parametrize("code", [b"451", b"554"])
async def test_a_reply_in_latin1_with_escapes_fails_cleanly_by_its_code(
    relay: RelayFactory, step: str, code: bytes
) -> None:
    """A refusal at any step, worded in Latin-1 with terminal escapes, NUL, C1, a bidi
    override and 5,000 more characters, fails the send with the server's words readable
    ("Empfänger") and everything else dropped or cut; a 5xx to RCPT, DATA or the message
    is permanent, anything else transient; the next send goes out on a fresh session."""
    odd: dict[str, Reply] = {step: code + b" " + HOSTILE_TEXT + b"\r\n"}
    if step == "EHLO":  # a refused EHLO is followed by HELO: refused the same way
        odd["HELO"] = odd["EHLO"]
    sender = await relay(odd)
    with pytest.raises(DeliveryError) as failed:
        await sender.send(MESSAGE)
    permanent = code == b"554" and step in ("RCPT", "DATA", "message")
    assert isinstance(failed.value, PermanentDeliveryError) is permanent
    text = assert_clean(failed.value)
    assert f"{code.decode()} 4.2.0 Empfänger [31mrot[0m" in text
    await sender.send(MESSAGE)


@pytest.mark.parametrize(
    "reply",
    [
        b"\x1b]0;owned\x07 not smtp\r\n",
        b"2\x1b[31m0 garbage\r\n",
        b"250-" + b"\xff" * 2000 + b"\r\n" + b"250-\x1b[2J\r\n" * 5000,
    ],
    ids=["escape-greeting", "escape-in-code", "endless-bytes"],
)
@pytest.mark.parametrize("step", ["greeting", "EHLO", "MAIL", "message"])
async def test_a_malformed_reply_fails_transiently_and_cleanly(
    relay: RelayFactory, step: str, reply: bytes
) -> None:
    """A reply that is not SMTP, or never ends, whether aiosmtplib reads it (greeting, EHLO)
    or the worker's exchange (MAIL, the message), is a transient failure with clean text."""
    sender = await relay({step: reply, "HELO": reply})
    with pytest.raises(TransientDeliveryError) as failed:
        await sender.send(MESSAGE)
    assert "\x1b" not in assert_clean(failed.value)
    await sender.send(MESSAGE)


async def test_a_greeting_and_ehlo_in_latin1_still_deliver(relay: RelayFactory) -> None:
    """Positive replies worded in Latin-1 do not stand in the way of the message."""
    sender = await relay(
        {
            "greeting": b"220 relay.example Gr\xfc\xdf Gott\r\n",
            "EHLO": b"250-relay.example Gr\xfc\xdf\r\n250-8BITMIME\r\n250 SIZE 100000\r\n",
            "message": b"250 2.0.0 in die Warteschlange gestellt \xe4\r\n",
        }
    )
    await sender.send(MESSAGE)


async def trickle(writer: asyncio.StreamWriter) -> None:
    """A reply whose continuation lines come one every 0.2 s, for 4 s."""
    for _ in range(20):
        writer.write(b"250-still thinking\r\n")
        await writer.drain()
        await asyncio.sleep(0.2)
    writer.write(b"250 ok\r\n")


@pytest.mark.parametrize("step", ["MAIL", "RCPT", "message"])
async def test_a_reply_trickled_past_the_timeout_fails_in_about_the_timeout(
    relay: RelayFactory, step: str
) -> None:
    """A relay that sends a reply's lines slowly cannot hold the pool's connection: the send
    fails transiently about the timeout (0.5 s) after the reply was due, not when the relay
    finishes (4 s)."""
    sender = await relay({step: trickle})
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(TransientDeliveryError, match="Timed out"):
        await sender.send(MESSAGE)
    assert loop.time() - started < 1.5
    await sender.send(MESSAGE)


@given(
    step=st.sampled_from(STEPS),
    reply=st.one_of(
        st.binary(max_size=300),
        st.tuples(
            st.sampled_from([b"250", b"354", b"421", b"451", b"550", b"554", b"999", b"2x0"]),
            st.sampled_from([b" ", b"-", b"", b"\r"]),
            st.binary(max_size=300),
        ).map(lambda parts: b"".join(parts) + b"\r\n"),
    ),
)
@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
async def test_any_reply_at_any_step_ends_in_delivery_or_a_clean_error(
    relay: RelayFactory, step: str, reply: bytes
) -> None:
    """Whatever bytes a relay answers a step with, the send either completes or fails with a
    DeliveryError of clean, bounded text, within a few timeouts; it never raises anything
    else or hangs."""
    sender = await relay({step: reply})
    try:
        await asyncio.wait_for(sender.send(MESSAGE), 10)
    except DeliveryError as failed:
        assert_clean(failed)
    finally:
        await sender.close()
