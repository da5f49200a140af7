"""Email over SMTP with aiosmtplib: a small pool of reused connections.

Each connection sends one message at a time; ``pool_size`` of them send concurrently. A
connection that fails is closed and reopened on its next use. The message bytes come from
``mime.MimeBuilder`` (RFC 2047 headers, CR/LF refused in header values; event fields reach
headers only after being folded to one line), built once the session's EHLO has said whether
the server takes 8BITMIME bodies. The transaction sends MAIL, RCPT and DATA through
aiosmtplib's ``execute_command``; the message body is framed here (``_data``), which saves the
library's address parsing and regular expression passes over every message.
"""

from __future__ import annotations

import asyncio
import ssl

import aiosmtplib

from worker.channels import Outgoing, PermanentDeliveryError, TransientDeliveryError
from worker.channels.mime import MimeBuilder, WireMessage
from worker.settings import EmailSettings, SmtpSecurity, SmtpSettings


class SmtpSender:
    def __init__(self, smtp: SmtpSettings, email: EmailSettings) -> None:
        self._settings = smtp
        self.mime = MimeBuilder(email.from_, email.reply_to)
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

    async def send(self, message: Outgoing) -> None:
        client = await self._idle.get()
        try:
            await self._send(client, message)
        finally:
            self._idle.put_nowait(client)

    def _build(self, message: Outgoing, eight_bit: bool) -> WireMessage:
        try:
            return self.mime.build(message, eight_bit=eight_bit)
        except ValueError as exc:  # an address or header value we refuse to put on the wire
            raise PermanentDeliveryError(f"message cannot be built: {exc}") from exc

    async def _send(self, client: aiosmtplib.SMTP, message: Outgoing) -> None:
        try:
            await _open_session(client)
            mail = self._build(message, client.supports_extension("8bitmime"))
            await transaction(client, mail)
        except aiosmtplib.SMTPRecipientRefused as exc:
            _close(client)  # a fresh session next time rather than trusting this one's state
            error = f"recipient refused: {exc.code} {exc.message}"
            if 500 <= exc.code < 600:
                raise PermanentDeliveryError(error) from exc
            raise TransientDeliveryError(error) from exc
        except (aiosmtplib.SMTPAuthenticationError, aiosmtplib.SMTPSenderRefused) as exc:
            _close(client)
            if isinstance(exc, aiosmtplib.SMTPSenderRefused) and exc.code == 552:
                # RFC 1870: this message's SIZE exceeds the server's fixed limit, for good
                raise PermanentDeliveryError(f"SMTP {exc.code} {exc.message}") from exc
            # our credentials or sender address: wrong for every message until fixed, so
            # retried (and visible) rather than dead-lettered one by one
            raise TransientDeliveryError(f"SMTP refused us: {exc.code} {exc.message}") from exc
        except aiosmtplib.SMTPDataError as exc:  # the server refused this message's content
            _close(client)
            if 500 <= exc.code < 600:
                raise PermanentDeliveryError(f"SMTP {exc.code} {exc.message}") from exc
            raise TransientDeliveryError(f"SMTP {exc.code} {exc.message}") from exc
        except aiosmtplib.SMTPResponseException as exc:
            _close(client)
            raise TransientDeliveryError(f"SMTP {exc.code} {exc.message}") from exc
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            _close(client)
            raise TransientDeliveryError(f"SMTP connection failed: {exc!r}") from exc

    async def close(self) -> None:
        while not self._idle.empty():
            client = self._idle.get_nowait()
            if client.is_connected:
                try:
                    await client.quit()
                except (aiosmtplib.SMTPException, OSError):
                    client.close()


async def _open_session(client: aiosmtplib.SMTP) -> None:
    """Connected and greeted: the EHLO reply's extensions decide the body encoding."""
    if not client.is_connected:
        await client.connect()
    if client.is_ehlo_or_helo_needed:
        try:
            await client.ehlo()
        except aiosmtplib.SMTPHeloError:
            await client.helo()


_RCPT_ACCEPTED = (aiosmtplib.SMTPStatus.completed, aiosmtplib.SMTPStatus.will_forward)


async def transaction(client: aiosmtplib.SMTP, mail: WireMessage) -> None:
    """MAIL, RCPT, DATA on an open, greeted session (``_open_session``: EHLO or HELO done)
    through aiosmtplib's ``execute_command`` (also the bench's SMTP ceiling for this path).
    What ``SMTP.sendmail`` adds is left out, as our bytes need none of it: measuring the
    message for SIZE with its line ends normalized (they already are CRLF, so its length is
    the size), and parsing each address with ``email.utils.parseaddr`` once more
    (``MimeBuilder`` accepts only a plain printable ASCII ``local@domain``). The DATA body
    goes through ``_data``."""
    options = [b"BODY=8BITMIME"] if mail.eight_bit else []
    if client.supports_extension("size"):
        options.append(b"SIZE=%d" % len(mail.data))
    reply = await client.execute_command(b"MAIL", b"FROM:<%s>" % mail.sender.encode(), *options)
    if reply.code != aiosmtplib.SMTPStatus.completed:
        raise aiosmtplib.SMTPSenderRefused(reply.code, reply.message, mail.sender)
    for recipient in mail.recipients:
        reply = await client.execute_command(b"RCPT", b"TO:<%s>" % recipient.encode())
        if reply.code not in _RCPT_ACCEPTED:
            raise aiosmtplib.SMTPRecipientRefused(reply.code, reply.message, recipient)
    await _data(client, mail.data)


async def _data(client: aiosmtplib.SMTP, data: bytes) -> None:
    """The DATA command and the message, dot-stuffed and ended with ``.``, through aiosmtplib's
    own protocol (its public ``write`` and ``read_response``, one reply per write).

    ``SMTP.data`` runs two regular expressions over the whole message, to turn lone CR or LF
    into CRLF and to double leading dots: 120 us for a 10.9 KB message here, a tenth of the
    worker's time per email. ``MimeBuilder`` guarantees CRLF line ends (a property test checks
    it), so one ``bytes.replace`` does the dot-stuffing (8 us).

    This leans on how aiosmtplib 5.1 pairs replies: ``read_response`` marks a reply as
    expected before it waits, and nothing yields between the write and that call, so the
    reply cannot be dropped as unsolicited. pyproject pins aiosmtplib to 5.1.x for it; a
    release that changed it would lose the 250 after every message, and the tests that send
    through this path would time out rather than pass."""
    protocol = client.protocol
    if protocol is None:
        raise aiosmtplib.SMTPServerDisconnected("Connection lost")
    start = await client.execute_command(b"DATA")
    if start.code != aiosmtplib.SMTPStatus.start_input:
        raise aiosmtplib.SMTPDataError(start.code, start.message)
    stuffed = data.replace(b"\r\n.", b"\r\n..")
    if stuffed.startswith(b"."):  # never for our messages, which start with a header
        stuffed = b"." + stuffed
    protocol.write(stuffed + b".\r\n")
    done = await protocol.read_response(timeout=client.timeout)
    if done.code != aiosmtplib.SMTPStatus.completed:
        raise aiosmtplib.SMTPDataError(done.code, done.message)


def _close(client: aiosmtplib.SMTP) -> None:
    client.close()  # also while the transport is closing: resets the session for a reconnect
