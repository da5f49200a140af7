"""The SMTP transaction (``transaction``) against a real TCP server on loopback that plays a
script: that commands are pipelined only when the server offers it, that replies are read
however the server splits or joins them, and that every broken exchange ends in the error
aiosmtplib's own ``sendmail`` would raise rather than a hang or a message sent anyway."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

import aiosmtplib
import pytest
import trustme

from worker.channels.mime import WireMessage
from worker.channels.smtp import transaction

MAIL = WireMessage(
    "shop@shop.example",
    ("ana@mail.example",),
    b"Subject: hi\r\n\r\nline one\r\n.dot line\r\n",
    "<m1@shop.example>",
)
STUFFED = b"Subject: hi\r\n\r\nline one\r\n..dot line\r\n.\r\n"
EHLO = b"250-script.example\r\n250-8BITMIME\r\n250 SIZE 1000000\r\n"
EHLO_PIPELINING = b"250-script.example\r\n250-PIPELINING\r\n250 8BITMIME\r\n"

Script = Callable[["Session"], Awaitable[None]]


@dataclass
class Session:
    """The server's side of one connection, for a script to read commands and write replies."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    received: list[bytes] = field(default_factory=list)  # every command line, in order

    async def command(self) -> bytes:
        line = await self.reader.readuntil(b"\r\n")
        self.received.append(line)
        return line

    async def commands(self, count: int) -> None:
        """Read ``count`` command lines without looking at them (MAIL, RCPT, DATA)."""
        for _ in range(count):
            await self.command()

    async def body(self) -> bytes:
        return await self.reader.readuntil(b"\r\n.\r\n")

    async def reply(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def nothing_more(self, wait: float = 0.1) -> bool:
        """True when the client sends nothing more within ``wait`` seconds (or hangs up)."""
        try:
            return await asyncio.wait_for(self.reader.read(1), wait) == b""
        except TimeoutError:
            return True


@dataclass
class ScriptedServer:
    """Greets, answers EHLO with ``ehlo``, then runs ``script`` on each connection."""

    ehlo: bytes
    script: Script
    sessions: list[Session] = field(default_factory=list)
    failures: list[BaseException] = field(default_factory=list)
    running: set[asyncio.Task[None]] = field(default_factory=set)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.running.add(task)
        session = Session(reader, writer)
        self.sessions.append(session)
        try:
            await session.reply(b"220 script.example ESMTP\r\n")
            assert (await session.command()).startswith(b"EHLO ")
            await session.reply(self.ehlo)
            await self.script(session)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        except Exception as exc:  # an assertion of the script: reported by the fixture
            self.failures.append(exc)
        finally:
            writer.close()
            self.running.discard(task)


class Serve(Protocol):
    def __call__(
        self, ehlo: bytes, script: Script, tls: bool = False
    ) -> Awaitable[aiosmtplib.SMTP]:
        """A client greeted by a server playing ``script`` (``tls``: over implicit TLS)."""


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """Start a scripted server and return an aiosmtplib client greeted by it (EHLO done);
    at the end, every script must have run to its end without a failed assertion."""
    servers: list[tuple[asyncio.Server, ScriptedServer]] = []
    clients: list[aiosmtplib.SMTP] = []
    ca = trustme.CA()
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_tls)
    client_tls = ssl.create_default_context()
    ca.configure_trust(client_tls)

    async def start(ehlo: bytes, script: Script, tls: bool = False) -> aiosmtplib.SMTP:
        scripted = ScriptedServer(ehlo, script)
        server_ssl = server_tls if tls else None
        server = await asyncio.start_server(scripted.serve, "127.0.0.1", 0, ssl=server_ssl)
        servers.append((server, scripted))
        port = server.sockets[0].getsockname()[1]
        client = aiosmtplib.SMTP(
            hostname="127.0.0.1",
            port=port,
            timeout=0.5,
            use_tls=tls,
            start_tls=False,
            tls_context=client_tls if tls else None,
        )
        await client.connect()
        if client.is_ehlo_or_helo_needed:
            await client.ehlo()
        clients.append(client)
        return client

    yield start
    for client in clients:
        client.close()
    for server, scripted in servers:
        if scripted.running:
            await asyncio.wait(scripted.running, timeout=5)
        server.close()
        assert scripted.failures == []
        assert scripted.sessions, "the client never connected"


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
async def test_with_pipelining_the_commands_go_out_before_any_reply(
    serve: Serve, tls: bool
) -> None:
    """When the server offers PIPELINING, MAIL, RCPT and DATA arrive before it answers any of
    them, the joined replies are each read, and the body follows the 354, dot-stuffed; over
    TLS too."""
    bodies: list[bytes] = []

    async def script(session: Session) -> None:
        for _ in range(2):  # two messages on one session
            assert (await session.command()).startswith(b"MAIL FROM:<shop@shop.example>")
            assert await session.command() == b"RCPT TO:<ana@mail.example>\r\n"
            assert await session.command() == b"DATA\r\n"
            await session.reply(b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n354 go ahead\r\n")
            bodies.append(await session.body())
            await session.reply(b"250 2.0.0 queued\r\n")
        assert await session.command() == b"NOOP\r\n"
        await session.reply(b"250 2.0.0 ok\r\n")

    client = await serve(EHLO_PIPELINING, script, tls)
    await transaction(client, MAIL)
    await transaction(client, MAIL)
    assert bodies == [STUFFED, STUFFED]
    assert (await client.noop()).code == 250  # aiosmtplib has its session back


async def test_without_pipelining_each_command_waits_for_its_reply(
    serve: Serve,
) -> None:
    """Without PIPELINING the next command, or the message after DATA, goes out only after the
    reply to the previous one, and replies split anywhere, multiline or ending in a bare LF,
    are read whole."""
    bodies: list[bytes] = []

    async def trickle(session: Session, reply: bytes) -> None:
        for i in range(len(reply)):
            await session.reply(reply[i : i + 1])

    async def script(session: Session) -> None:
        assert (await session.command()).startswith(b"MAIL FROM:<shop@shop.example> SIZE=")
        assert await session.nothing_more()
        await trickle(session, b"250-sender\r\n250 ok\r\n")
        assert await session.command() == b"RCPT TO:<ana@mail.example>\r\n"
        assert await session.nothing_more()
        await trickle(session, b"250 ok\n")
        assert await session.command() == b"DATA\r\n"
        assert await session.nothing_more()
        await trickle(session, b"354 go ahead\r\n")
        bodies.append(await session.body())
        await trickle(session, b"250 queued\r\n")

    client = await serve(EHLO, script)
    await transaction(client, MAIL)
    assert bodies == [STUFFED]


@pytest.mark.parametrize("data_reply", [b"554 no valid recipients", b"354 go ahead"])
async def test_a_refused_recipient_under_pipelining_sends_no_body(
    serve: Serve, data_reply: bytes
) -> None:
    """A 550 to RCPT raises SMTPRecipientRefused with its code and text, and the body is not
    sent even though DATA was already on its way, also when the server answers it with 354
    (RFC 2920 lets it); the connection is closed."""

    async def script(session: Session) -> None:
        await session.commands(3)
        await session.reply(b"250 ok\r\n550 5.1.1 no such user\r\n" + data_reply + b"\r\n")
        assert await session.reader.read() == b""

    client = await serve(EHLO_PIPELINING, script)
    with pytest.raises(aiosmtplib.SMTPRecipientRefused) as refused:
        await transaction(client, MAIL)
    assert (refused.value.code, refused.value.message) == (550, "5.1.1 no such user")
    assert refused.value.recipient == "ana@mail.example"
    assert not client.is_connected


@pytest.mark.parametrize(
    ("replies", "error", "code"),
    [
        (b"451 4.3.0 try later\r\n", aiosmtplib.SMTPSenderRefused, 451),
        (b"250 ok\r\n250 ok\r\n503 5.5.1 no\r\n", aiosmtplib.SMTPDataError, 503),
        (b"250 ok\r\n250 ok\r\n354 go\r\n", aiosmtplib.SMTPDataError, 552),
        (b"250 ok\r\nhello\r\n", aiosmtplib.SMTPResponseException, -1),
        (b"250 ok\r\nxyz-garbage\r\n250 ok\r\n", aiosmtplib.SMTPResponseException, -1),
        (b"250 ok\r\n" + b"250-\r\n" * 20_000, aiosmtplib.SMTPResponseException, -1),
    ],
    ids=[
        "mail-refused",
        "data-refused",
        "message-refused",
        "malformed",
        "malformed-continuation",
        "endless-reply",
    ],
)
async def test_an_unexpected_reply_raises_what_sendmail_would(
    serve: Serve,
    replies: bytes,
    error: type[aiosmtplib.SMTPResponseException],
    code: int,
) -> None:
    """A refusal at MAIL, at DATA or of the message itself, a reply that is not SMTP and one
    that never ends (65 KB, not the read timeout) each raise the matching aiosmtplib error
    with the server's code, send nothing more and close the connection."""

    async def script(session: Session) -> None:
        await session.commands(3)
        await session.reply(replies)
        if replies.endswith(b"354 go\r\n"):
            await session.body()
            await session.reply(b"552 5.3.4 too big\r\n")
        assert await session.reader.read() == b""

    client = await serve(EHLO_PIPELINING, script)
    with pytest.raises(error) as raised:
        await transaction(client, MAIL)
    assert raised.value.code == code
    assert not client.is_connected


@pytest.mark.parametrize("ending", ["close", "silence"])
async def test_a_server_that_hangs_up_or_goes_quiet_ends_the_exchange(
    serve: Serve, ending: str
) -> None:
    """A connection closed before the final reply is SMTPServerDisconnected, and a reply that
    never comes is SMTPReadTimeoutError after the client's timeout, not a hang."""

    async def script(session: Session) -> None:
        await session.commands(3)
        await session.reply(b"250 ok\r\n250 ok\r\n354 go\r\n")
        await session.body()
        if ending == "silence":
            await session.reader.read()  # until the client hangs up

    client = await serve(EHLO_PIPELINING, script)
    expected = (
        aiosmtplib.SMTPServerDisconnected if ending == "close" else aiosmtplib.SMTPReadTimeoutError
    )
    with pytest.raises(expected):
        await asyncio.wait_for(transaction(client, MAIL), 5)


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
async def test_a_cancelled_exchange_aborts_and_the_client_connects_afresh(
    serve: Serve, tls: bool
) -> None:
    """Cancelled while the server is not reading a large message, the exchange drops the
    connection at once instead of flushing it (the message must not complete after all) or
    waiting for a TLS shutdown, and the client's next connect and message go through on a
    new session."""
    sessions = 0
    bodies: list[bytes] = []

    async def script(session: Session) -> None:
        nonlocal sessions
        sessions += 1
        await session.commands(3)
        await session.reply(b"250 ok\r\n250 ok\r\n354 go\r\n")
        if sessions == 1:  # reads nothing until the client has given up, then all it can
            await asyncio.sleep(0.5)
            received = b""
            with contextlib.suppress(ConnectionError, ssl.SSLError):
                while chunk := await session.reader.read(1 << 20):
                    received += chunk
            assert not received.endswith(b"\r\n.\r\n")  # the message did not go through
            return
        bodies.append(await session.body())
        await session.reply(b"250 queued\r\n")

    client = await serve(EHLO_PIPELINING, script, tls)
    big = WireMessage(MAIL.sender, MAIL.recipients, (b"x" * 998 + b"\r\n") * 16_000, "<b@x>")
    task = asyncio.create_task(transaction(client, big))
    await asyncio.sleep(0.2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not client.is_connected
    await asyncio.wait_for(client.connect(), 1)
    if client.is_ehlo_or_helo_needed:
        await client.ehlo()
    await transaction(client, MAIL)
    assert bodies == [STUFFED]


async def test_a_reply_in_latin1_reads_as_its_words(serve: Serve) -> None:
    """A localized relay's reply that is not UTF-8 is read line by line as Latin-1 (UTF-8
    lines stay UTF-8), so the error carries the server's words and no undecodable bytes."""

    async def script(session: Session) -> None:
        await session.commands(3)
        await session.reply("451-4.2.0 Größe überschritten\r\n".encode())
        await session.reply(b"451 4.2.0 Empf\xe4nger nicht erreichbar\r\n")
        assert await session.reader.read() == b""

    client = await serve(EHLO_PIPELINING, script)
    with pytest.raises(aiosmtplib.SMTPSenderRefused) as refused:
        await transaction(client, MAIL)
    assert refused.value.message == "4.2.0 Größe überschritten\n4.2.0 Empfänger nicht erreichbar"


async def test_a_reply_trickled_line_by_line_times_out_as_a_whole(serve: Serve) -> None:
    """A reply whose continuation lines come one every 0.2 s, each sooner than the timeout but
    all of them later, fails with SMTPReadTimeoutError about the timeout (0.5 s) after it was
    due, not when the server chooses to finish it."""

    async def script(session: Session) -> None:
        await session.commands(3)
        for _ in range(20):
            await session.reply(b"250-still thinking\r\n")
            await asyncio.sleep(0.2)
        await session.reply(b"250 ok\r\n250 ok\r\n354 go\r\n")

    client = await serve(EHLO_PIPELINING, script)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(aiosmtplib.SMTPReadTimeoutError):
        await asyncio.wait_for(transaction(client, MAIL), 10)
    assert 0.45 <= loop.time() - started < 1.0
    assert not client.is_connected


async def test_each_reply_has_the_timeout_from_the_one_before(serve: Serve) -> None:
    """Replies that each come 0.3 s after the one before (the timeout is 0.5 s) complete the
    exchange, though together they take longer than one timeout."""

    async def script(session: Session) -> None:
        await session.commands(3)
        for reply in (b"250 ok\r\n", b"250 ok\r\n", b"354 go\r\n"):
            await asyncio.sleep(0.3)
            await session.reply(reply)
        await session.body()
        await asyncio.sleep(0.3)
        await session.reply(b"250 queued\r\n")

    client = await serve(EHLO_PIPELINING, script)
    await transaction(client, MAIL)
