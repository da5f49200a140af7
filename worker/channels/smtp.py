"""Email over SMTP with aiosmtplib: a small pool of reused connections.

Each connection sends one message at a time; ``pool_size`` of them send concurrently. A
connection that fails is closed and reopened on its next use. The message bytes come from
``mime.MimeBuilder`` (RFC 2047 headers, CR/LF refused in header values; event fields reach
headers only after being folded to one line), built once the session's EHLO has said whether
the server takes 8BITMIME bodies. aiosmtplib connects, secures, greets, authenticates and
quits; each message's MAIL, RCPT, DATA and body are exchanged by ``transaction`` on the
session's transport, pipelined when the server offers PIPELINING (why: its docstring).

A failure leaves as a ``DeliveryError`` classified by its reply code (``_classified``), whose
text is clean printable text of bounded length whatever the server sent: replies are read as
UTF-8, or Latin-1 for a line that is not, both here and where aiosmtplib read them.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import replace
from typing import cast

import aiosmtplib

from worker.channels import (
    DeliveryError,
    Outgoing,
    PermanentDeliveryError,
    TransientDeliveryError,
)
from worker.channels.mailheaders import Unsubscribe
from worker.channels.mime import MimeBuilder, WireMessage
from worker.settings import EmailSettings, SmtpSecurity, SmtpSettings
from worker.signing import DkimSigner

MAX_ERROR_TEXT = 300  # characters of a delivery error's text, the server's words included


class SmtpSender:
    def __init__(self, smtp: SmtpSettings, email: EmailSettings) -> None:
        self._settings = smtp
        unsubscribe = Unsubscribe(email.unsubscribe_url, email.unsubscribe_mailto)
        self.mime = MimeBuilder(email.from_, email.reply_to, unsubscribe)
        self._signer = (
            DkimSigner.from_file(
                email.dkim_domain, email.dkim_selector, email.dkim_private_key_file
            )
            if email.dkim_domain and email.dkim_selector and email.dkim_private_key_file
            else None
        )
        self._idle: asyncio.Queue[aiosmtplib.SMTP] = asyncio.Queue()
        for _ in range(smtp.pool_size):
            self._idle.put_nowait(self._client())

    def _client(self) -> aiosmtplib.SMTP:
        s = self._settings
        return aiosmtplib.SMTP(
            hostname=s.host,
            port=s.port,
            timeout=s.timeout,
            use_tls=s.security is SmtpSecurity.TLS,
            start_tls=s.security is SmtpSecurity.STARTTLS,
            tls_context=ssl.create_default_context()
            if s.security is not SmtpSecurity.NONE
            else None,
            username=s.username,
            password=s.password.get_secret_value() if s.password else None,
        )

    async def send(self, message: Outgoing) -> str:
        client = await self._idle.get()
        try:
            return await self._send(client, message)
        finally:
            self._idle.put_nowait(client)

    def _build(self, message: Outgoing, eight_bit: bool) -> WireMessage:
        try:
            if self._signer is None:
                return self.mime.build(message, eight_bit=eight_bit)
            mail = self.mime.build(message, eight_bit=False)  # signing.py: why not 8bit
            return replace(mail, data=self._signer.sign(mail.data))
        except ValueError as exc:  # an address or header value we refuse to put on the wire
            raise PermanentDeliveryError(_printable(f"message cannot be built: {exc}")) from exc

    async def _send(self, client: aiosmtplib.SMTP, message: Outgoing) -> str:
        try:
            await _open_session(client)
            mail = self._build(message, client.supports_extension("8bitmime"))
            await transaction(client, mail)
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            _close(client)  # a fresh session next time rather than trusting this one's state
            raise _classified(exc) from exc
        return mail.message_id

    async def close(self) -> None:
        while not self._idle.empty():
            client = self._idle.get_nowait()
            if client.is_connected:
                try:
                    await client.quit()
                except (aiosmtplib.SMTPException, OSError):
                    client.close()


def _classified(exc: Exception) -> DeliveryError:
    """What happens next after ``exc``, in words fit for logs and terminals (``_printable``)."""
    if not isinstance(exc, aiosmtplib.SMTPResponseException):
        return TransientDeliveryError(_printable(f"SMTP connection failed: {_named(exc)}"))
    code, permanent = exc.code, 500 <= exc.code < 600
    if isinstance(exc, aiosmtplib.SMTPRecipientRefused):
        kind = PermanentDeliveryError if permanent else TransientDeliveryError
        return kind(_printable(f"recipient refused: {code} {exc.message}"))
    if isinstance(exc, aiosmtplib.SMTPSenderRefused) and code == 552:
        # RFC 1870: this message's SIZE exceeds the server's fixed limit, for good
        return PermanentDeliveryError(_printable(f"SMTP {code} {exc.message}"))
    if isinstance(exc, (aiosmtplib.SMTPAuthenticationError, aiosmtplib.SMTPSenderRefused)):
        # our credentials or sender address: wrong for every message until fixed, so
        # retried (and visible) rather than dead-lettered one by one
        return TransientDeliveryError(_printable(f"SMTP refused us: {code} {exc.message}"))
    if isinstance(exc, aiosmtplib.SMTPDataError) and permanent:  # this message's content
        return PermanentDeliveryError(_printable(f"SMTP {code} {exc.message}"))
    return TransientDeliveryError(_printable(f"SMTP {code} {exc.message}"))


def _named(exc: Exception) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _printable(text: str) -> str:
    """``text``, holding a server's words, as clean printable text of at most
    ``MAX_ERROR_TEXT`` characters: server replies reach terminals through ``dlq list`` and
    logs. Bytes aiosmtplib could not decode (it keeps them as surrogate escapes) are read as
    ``_reply_text`` reads a reply; control and formatting characters (ESC, NUL, C1, bidi
    overrides, zero-width) are dropped, and line breaks and other spaces become one space."""
    if not (text.isascii() and text.isprintable()):
        try:
            text = _reply_text(text.encode("utf-8", "surrogateescape"))
        except UnicodeEncodeError:  # a lone surrogate no decoder made: not a server's byte
            text = text.encode("utf-8", "replace").decode("utf-8")
        kept = (c if c.isprintable() else " " for c in text if c.isprintable() or c.isspace())
        text = " ".join("".join(kept).split())
    if len(text) > MAX_ERROR_TEXT:
        text = text[: MAX_ERROR_TEXT - 3] + "..."
    return text


def _reply_text(data: bytes) -> str:
    """A reply's text: UTF-8, or Latin-1 for a line that is not UTF-8, which is what
    localized relays send (``451 4.2.0 Empf\\xe4nger``); every byte is some character, so
    nothing later fails to encode it."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return "\n".join(_line_text(line) for line in data.split(b"\n"))


def _line_text(line: bytes) -> str:
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError:
        return line.decode("latin-1")


async def _open_session(client: aiosmtplib.SMTP) -> None:
    """Connected and greeted: the EHLO reply's extensions decide the body encoding."""
    if not client.is_connected:
        await client.connect()
    if client.is_ehlo_or_helo_needed:
        try:
            await client.ehlo()
        except aiosmtplib.SMTPHeloError:
            await client.helo()


_COMPLETED = aiosmtplib.SMTPStatus.completed
_RCPT_ACCEPTED = (_COMPLETED, aiosmtplib.SMTPStatus.will_forward)
_MAX_REPLY = 65536  # octets of an unfinished reply before the server is taken to be broken


async def transaction(client: aiosmtplib.SMTP, mail: WireMessage) -> None:
    """MAIL, RCPT, DATA and the message on an open, greeted session (``_open_session``: EHLO
    or HELO done), driven by the server's replies (``_Exchange``) on the session's transport.

    aiosmtplib opens, secures, authenticates and closes the session; the transaction is ours,
    for three reasons measured on this path:
    - ``SMTP.sendmail`` runs two regular expressions over the whole message (line ends and
      dot-stuffing, 120 us for 10.9 KB) and parses every address once more. ``MimeBuilder``
      guarantees CRLF line ends (a property test checks it) and plain ``local@domain``
      addresses, so one ``bytes.replace`` does the dot-stuffing.
    - aiosmtplib waits for each reply in its own ``await`` under ``asyncio.wait_for``: four
      resumptions of the whole calling chain per message. Here each reply is handled in the
      protocol's callback and the caller resumes once, when the message is accepted or fails.
    - aiosmtplib reads one reply per write, so it cannot use PIPELINING (RFC 2920). When the
      server offers it, MAIL, RCPT and DATA go out in one write: two round trips per message
      instead of four.

    While the exchange runs, the transport's protocol is the exchange; aiosmtplib's comes back
    after it. An exchange that does not end with the message accepted (refused, broken off,
    timed out or cancelled) leaves the session in a state nobody knows: the connection is
    aborted rather than closed gracefully, which would wait for a server that may not be
    reading, and the client is closed, so that its next use connects afresh. A failure raises
    the aiosmtplib exception its ``sendmail`` would have raised."""
    session = client.protocol
    if session is None or client.transport is None or client.transport.is_closing():
        raise aiosmtplib.SMTPServerDisconnected("Connection lost")
    transport = cast(asyncio.Transport, client.transport)  # uvloop's is not a subclass
    options = [b"BODY=8BITMIME"] if mail.eight_bit else []
    if client.supports_extension("size"):
        options.append(b"SIZE=%d" % len(mail.data))
    exchange = _Exchange(
        transport,
        mail,
        options,
        client.supports_extension("pipelining"),
        client.timeout,
    )
    transport.set_protocol(exchange)
    try:
        exchange.start()
        await exchange.done
    finally:
        exchange.disarm()
        transport.set_protocol(session)
        if not exchange.accepted:
            transport.abort()
            client.close()  # also frees its connect lock, which a lost connection would


class _Exchange(asyncio.Protocol):
    """One message's commands and replies, as a protocol: each reply is checked as it arrives
    and answered with what comes next; ``done`` ends the exchange."""

    def __init__(
        self,
        transport: asyncio.Transport,
        mail: WireMessage,
        options: list[bytes],
        pipelining: bool,
        timeout: float | None,
    ) -> None:
        self._transport = transport
        self._mail = mail
        self._pipelining = pipelining
        self._timeout = timeout
        self._loop = asyncio.get_running_loop()
        self.done: asyncio.Future[None] = self._loop.create_future()
        mail_from = b"MAIL FROM:<%s>" % mail.sender.encode()
        self._commands = [
            b" ".join([mail_from, *options]) + b"\r\n",
            *(b"RCPT TO:<%s>\r\n" % r.encode() for r in mail.recipients),
            b"DATA\r\n",
        ]
        self._replies = 0  # replies received so far; the next one answers command number this
        self._buffer = b""
        self._lines: list[bytes] = []  # the text of a multiline reply read so far
        self._size = 0  # octets of the reply read so far
        self._timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        if self._pipelining:
            self._transport.write(b"".join(self._commands))
        else:
            self._transport.write(self._commands[0])
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self.done.done():
            return  # after the final reply: unsolicited, like aiosmtplib drops it
        buffer = self._buffer + data if self._buffer else data
        start, replied = 0, False
        while (end := buffer.find(b"\n", start)) >= 0:
            line, start = buffer[start : end + 1], end + 1
            self._size += len(line)
            if not line[:3].isdigit() or line[3:4] not in (b" ", b"-", b"\r", b"\n"):
                self._fail(aiosmtplib.SMTPResponseException(-1, f"malformed reply: {line!r}"))
                return
            self._lines.append(line[4:].strip(b" \t\r\n"))
            if line[3:4] == b"-":
                continue
            text = _reply_text(b"\n".join(self._lines))
            self._lines, self._size, replied = [], 0, True
            self._reply(int(line[:3]), text)
            if self.done.done():
                return
        self._buffer = buffer[start:]
        if self._size + len(self._buffer) > _MAX_REPLY:
            self._fail(aiosmtplib.SMTPResponseException(-1, "reply too long"))
        elif replied:  # the next reply is due, all its lines, within the timeout from now
            self._arm()

    def _reply(self, code: int, text: str) -> None:
        """The reply to command number ``self._replies`` (to the message itself after DATA)."""
        index = self._replies
        self._replies += 1
        refusal = self._refusal(index, code, text)
        if refusal is not None:
            self._fail(refusal)
        elif index == len(self._commands):
            self._finish()
        elif index == len(self._commands) - 1:  # 354: go ahead with the message
            self._transport.write(_stuffed(self._mail.data))
        elif not self._pipelining:
            self._transport.write(self._commands[index + 1])

    def _refusal(self, index: int, code: int, text: str) -> Exception | None:
        """The error ``sendmail`` raises for this reply, or None when it is the expected one."""
        data = len(self._commands) - 1
        if index == 0:
            ok = code == _COMPLETED
            return None if ok else aiosmtplib.SMTPSenderRefused(code, text, self._mail.sender)
        if index < data:
            recipient = self._mail.recipients[index - 1]
            ok = code in _RCPT_ACCEPTED
            return None if ok else aiosmtplib.SMTPRecipientRefused(code, text, recipient)
        expected = aiosmtplib.SMTPStatus.start_input if index == data else _COMPLETED
        return None if code == expected else aiosmtplib.SMTPDataError(code, text)

    def _arm(self) -> None:
        """Each reply, all its lines, within ``timeout`` of when it became due: of the start
        for the first, of the reply before it for the others. Not re-armed by a line that
        leaves the reply unfinished, so a relay trickling continuation lines cannot hold the
        connection; one message's exchange thus ends within one timeout per reply."""
        if self._timer is not None:
            self._timer.cancel()
        if self._timeout is not None:
            self._timer = self._loop.call_later(self._timeout, self._timed_out)

    def _timed_out(self) -> None:
        self._fail(aiosmtplib.SMTPReadTimeoutError("Timed out waiting for server response"))

    @property
    def accepted(self) -> bool:
        """The server accepted the message: the session is ready for the next one."""
        done = self.done
        return done.done() and not done.cancelled() and done.exception() is None

    def disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _finish(self) -> None:
        self.disarm()
        if not self.done.done():
            self.done.set_result(None)

    def _fail(self, exc: Exception) -> None:
        self.disarm()
        if not self.done.done():
            self.done.set_exception(exc)

    def eof_received(self) -> bool:
        self._fail(aiosmtplib.SMTPServerDisconnected("Unexpected EOF received"))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        error = aiosmtplib.SMTPServerDisconnected("Connection lost")
        error.__cause__ = exc
        self._fail(error)


def _stuffed(data: bytes) -> bytes:
    """The message as DATA carries it: a leading dot doubled on every line, then ``.``."""
    stuffed = data.replace(b"\r\n.", b"\r\n..")
    if stuffed.startswith(b"."):  # never for our messages, which start with a header
        stuffed = b"." + stuffed
    return stuffed + b".\r\n"


def _close(client: aiosmtplib.SMTP) -> None:
    client.close()  # also while the transport is closing: resets the session for a reconnect
