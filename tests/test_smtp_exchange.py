"""The SMTP transaction (``transaction``) against a real TCP server on loopback that plays a
script: that commands are pipelined only when the server offers it, that replies are read
however the server splits or joins them, and that every broken exchange ends in the error
aiosmtplib's own ``sendmail`` would raise rather than a hang or a message sent anyway."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import aiosmtplib
import pytest

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


Serve = Callable[[bytes, Script], Awaitable[aiosmtplib.SMTP]]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """Start a scripted server and return an aiosmtplib client greeted by it (EHLO done);
    at the end, every script must have run to its end without a failed assertion."""
    servers: list[tuple[asyncio.Server, ScriptedServer]] = []
    clients: list[aiosmtplib.SMTP] = []

    async def start(ehlo: bytes, script: Script) -> aiosmtplib.SMTP:
        scripted = ScriptedServer(ehlo, script)
        server = await asyncio.start_server(scripted.serve, "127.0.0.1", 0)
        servers.append((server, scripted))
        port = server.sockets[0].getsockname()[1]
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=0.5)
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


async def test_with_pipelining_the_commands_go_out_before_any_reply(
    serve: Serve,
) -> None:
    """When the server offers PIPELINING, MAIL, RCPT and DATA arrive before it answers any of
    them, the joined replies are each read, and the body follows the 354, dot-stuffed."""
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

    client = await serve(EHLO_PIPELINING, script)
    await transaction(client, MAIL)
    await transaction(client, MAIL)
    assert bodies == [STUFFED, STUFFED]
    assert (await client.noop()).code == 250  # aiosmtplib has its session back


async def test_without_pipelining_each_command_waits_for_its_reply(
    serve: Serve,
) -> None:
    """Without PIPELINING the next command goes out only after the reply to the previous one,
    and replies split anywhere, multiline ones too, are read whole."""
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
        await trickle(session, b"250 ok\r\n")
        assert await session.command() == b"DATA\r\n"
        await trickle(session, b"354 go ahead\r\n")
        bodies.append(await session.body())
        await trickle(session, b"250 queued\r\n")

    client = await serve(EHLO, script)
    await transaction(client, MAIL)
    assert bodies == [STUFFED]


async def test_a_refused_recipient_under_pipelining_sends_no_body(
    serve: Serve,
) -> None:
    """A 550 to RCPT raises SMTPRecipientRefused with its code and text, and the body is not
    sent even though DATA was already on its way."""

    async def script(session: Session) -> None:
        for _ in range(3):
            await session.command()
        await session.reply(b"250 ok\r\n550 5.1.1 no such user\r\n554 no valid recipients\r\n")
        assert await session.nothing_more()

    client = await serve(EHLO_PIPELINING, script)
    with pytest.raises(aiosmtplib.SMTPRecipientRefused) as refused:
        await transaction(client, MAIL)
    assert (refused.value.code, refused.value.message) == (550, "5.1.1 no such user")
    assert refused.value.recipient == "ana@mail.example"


@pytest.mark.parametrize(
    ("replies", "error", "code"),
    [
        (b"451 4.3.0 try later\r\n", aiosmtplib.SMTPSenderRefused, 451),
        (b"250 ok\r\n250 ok\r\n503 5.5.1 no\r\n", aiosmtplib.SMTPDataError, 503),
        (b"250 ok\r\n250 ok\r\n354 go\r\n", aiosmtplib.SMTPDataError, 552),
        (b"250 ok\r\nhello\r\n", aiosmtplib.SMTPResponseException, -1),
    ],
    ids=["mail-refused", "data-refused", "message-refused", "malformed"],
)
async def test_an_unexpected_reply_raises_what_sendmail_would(
    serve: Serve,
    replies: bytes,
    error: type[aiosmtplib.SMTPResponseException],
    code: int,
) -> None:
    """A refusal at MAIL, at DATA or of the message itself, and a reply that is not SMTP,
    each raise the matching aiosmtplib error with the server's code."""

    async def script(session: Session) -> None:
        for _ in range(3):
            await session.command()
        await session.reply(replies)
        if replies.endswith(b"354 go\r\n"):
            await session.body()
            await session.reply(b"552 5.3.4 too big\r\n")
        await session.nothing_more()

    client = await serve(EHLO_PIPELINING, script)
    with pytest.raises(error) as raised:
        await transaction(client, MAIL)
    assert raised.value.code == code


@pytest.mark.parametrize("ending", ["close", "silence"])
async def test_a_server_that_hangs_up_or_goes_quiet_ends_the_exchange(
    serve: Serve, ending: str
) -> None:
    """A connection closed before the final reply is SMTPServerDisconnected, and a reply that
    never comes is SMTPReadTimeoutError after the client's timeout, not a hang."""

    async def script(session: Session) -> None:
        for _ in range(3):
            await session.command()
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


async def test_a_cancelled_exchange_closes_the_connection(
    serve: Serve,
) -> None:
    """Cancelled while waiting for a reply, the session's state is unknown: the connection is
    closed so that it is not reused mid-transaction."""
    hung_up = asyncio.Event()

    async def script(session: Session) -> None:
        for _ in range(3):
            await session.command()
        await session.reader.read()
        hung_up.set()

    client = await serve(EHLO_PIPELINING, script)
    task = asyncio.create_task(transaction(client, MAIL))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(hung_up.wait(), 2)
    assert not client.is_connected
