"""Hostile peers on loopback, and the strategies that script them: an SMTP relay and an SMS
provider that answer each notification by a drawn script (random bytes, Latin-1 text, endless,
huge or slow replies, broken HTTP framing, hang-ups) before they accept it or refuse it for
good, and the headers hostile producers put on records. The servers count what they accepted,
so a test can check that each notification was accepted exactly once.

A script is a list of ``Reply``s per notification, used one per attempt in order; once it is
used up the peer accepts. Each reply says what the worker must make of it (``kind``), so the
test knows every notification's fate in advance: accepted once, or dead-lettered once.
"""

from __future__ import annotations

import asyncio
import email.parser
import email.policy
import json
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Literal

from hypothesis import strategies as st

from worker import headers as worker_headers

TRANSIENT: Literal["transient"] = "transient"
PERMANENT: Literal["permanent"] = "permanent"
ACCEPT: Literal["accept"] = "accept"
Kind = Literal["transient", "permanent", "accept"]


@dataclass(frozen=True)
class Reply:
    """Bytes a peer sends in place of its plain answer: each chunk after ``pause`` seconds.
    ``kind`` is what the worker must take it for: a failure worth retrying, a refusal for good,
    or (SMS only) an accepted message."""

    label: str
    chunks: tuple[bytes, ...]
    kind: Kind = TRANSIENT
    pause: float = 0.0

    def __repr__(self) -> str:  # a failing example is reported without megabytes of filler
        size = sum(len(c) for c in self.chunks)
        return f"Reply({self.label!r}, {self.kind}, {size} bytes, pause={self.pause})"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        """Hypothesis prints a failing example with this, not with how it was built."""
        printer.text(repr(self))


def short(value: bytes) -> str:
    """``value`` for a report: its start and its size when it is long."""
    return repr(value) if len(value) <= 60 else f"{value[:40]!r}...({len(value)} bytes)"


class _Peer:
    """A loopback server whose connections are closed with it."""

    def __init__(self) -> None:
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0
        self.errors: list[Exception] = []  # the peer's own bugs: a test asserts there are none
        self.holds: list[tuple[str, float]] = []  # (a slow reply, seconds the worker waited)

    async def __aenter__(self) -> _Peer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, limit=1 << 20)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            await self._converse(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the worker hung up, as it does after any failed exchange
        except Exception as exc:
            self.errors.append(exc)
        finally:
            self._writers.discard(writer)
            writer.close()  # after what was written is sent: a scripted reply arrives whole

    async def _converse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError

    async def _write(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, reply: Reply
    ) -> None:
        """Each chunk after its pause, until the worker hangs up; a slow reply's hold (how long
        the worker waited on it) is kept in ``holds``."""
        start = time.monotonic()
        try:
            for chunk in reply.chunks:
                if reply.pause:
                    await asyncio.sleep(reply.pause)
                    if writer.transport.is_closing() or reader.at_eof():
                        return
                writer.write(chunk)
                await writer.drain()
        finally:
            if reply.pause:
                self.holds.append((reply.label, round(time.monotonic() - start, 2)))

    async def _answer(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        reply: Reply | None,
        plain: bytes,
    ) -> bool:
        """The plain answer (True: the session goes on), or the scripted one, then hang up."""
        if reply is None:
            writer.write(plain)
            await writer.drain()
            return True
        await self._write(reader, writer, reply)
        return False


# --- SMTP ------------------------------------------------------------------------------------

SmtpStage = Literal["greeting", "ehlo", "mail", "rcpt", "data"]
_EHLO = b"250-hostile.local\r\n250-8BITMIME\r\n250-SIZE 10485760\r\n"


class HostileSmtp(_Peer):
    """A relay speaking enough SMTP for the worker. ``sessions``: faults for the next new
    connections, one each, at a stage before the recipient is known (whoever's message is on
    that connection fails once). ``scripts``: per recipient, the replies to its next attempts,
    at RCPT or after the message's final dot. After any scripted reply the relay hangs up."""

    def __init__(
        self,
        sessions: list[tuple[SmtpStage, Reply]],
        scripts: dict[str, list[tuple[SmtpStage, Reply]]],
        pipelining: bool = False,
    ) -> None:
        super().__init__()
        self.sessions = sessions
        self.scripts = scripts
        self.pipelining = pipelining
        self.accepted: Counter[str] = Counter()  # by the Message-ID's local part

    async def _converse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        fault = dict([self.sessions.pop(0)]) if self.sessions else {}
        greeting = b"220 hostile.local ESMTP\r\n"
        if not await self._answer(reader, writer, fault.pop("greeting", None), greeting):
            return
        pending: list[Reply] = []  # replies due after the message, for its recipients
        while line := await reader.readline():
            verb = line[:4].upper()
            if verb == b"EHLO":
                ehlo = _EHLO + (b"250-PIPELINING\r\n" if self.pipelining else b"") + b"250 OK\r\n"
                answered = await self._answer(reader, writer, fault.pop("ehlo", None), ehlo)
            elif verb == b"MAIL":
                pending = []
                answered = await self._answer(
                    reader, writer, fault.pop("mail", None), b"250 2.1.0 Ok\r\n"
                )
            elif verb == b"RCPT":
                answered = await self._rcpt(reader, writer, line, pending)
            elif verb == b"DATA":
                answered = await self._data(reader, writer, pending)
            elif verb == b"QUIT":
                await self._answer(reader, writer, None, b"221 Bye\r\n")
                return
            else:  # HELO, RSET, NOOP
                answered = await self._answer(reader, writer, None, b"250 Ok\r\n")
            if not answered:
                return

    async def _rcpt(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        line: bytes,
        pending: list[Reply],
    ) -> bool:
        address = line.partition(b"<")[2].partition(b">")[0].decode().lower()
        script = self.scripts.get(address, [])
        stage, reply = script.pop(0) if script else ("rcpt", None)
        if stage == "data" and reply is not None:
            pending.append(reply)
            reply = None
        return await self._answer(reader, writer, reply, b"250 2.1.5 Ok\r\n")

    async def _data(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, pending: list[Reply]
    ) -> bool:
        writer.write(b"354 End data with <CR><LF>.<CR><LF>\r\n")
        lines = []
        while (line := await reader.readuntil(b"\n")) != b".\r\n":
            lines.append(line)
        if pending:
            return await self._answer(reader, writer, pending[0], b"")
        head = email.parser.BytesHeaderParser(policy=email.policy.default).parsebytes(
            b"".join(lines)
        )
        self.accepted[str(head["Message-ID"]).strip("<>").split("@", 1)[0]] += 1
        return await self._answer(reader, writer, None, b"250 2.0.0 Ok: queued\r\n")


LATIN1 = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF), max_size=60)
TEMPORARY = st.sampled_from([421, 450, 451, 452])


def _latin1(code: int, text: str) -> bytes:
    return f"{code} 4.2.0 Empfänger {text}\r\n".encode("latin-1")


def _multiline(code: int, lines: int) -> bytes:
    filler = b"-" + b"lorem ipsum dolor sit amet " * 2 + b"\r\n"
    return (b"%d" % code + filler) * lines + b"%d end\r\n" % code


_MALFORMED = [b"4x1 try later\r\n", b"2500 ok\r\n", b"OK\r\n", b"\r\n", b"25 ok\r\n", b"-451\r\n"]

# encodings a relay's locale may answer in; the code's digits stay ASCII in these
_ASCII_BASED = st.sampled_from(["latin-1", "cp1252", "utf-8", "shift_jis", "koi8-r"])
# any code but the ones that accept a recipient or a message
_OTHER_CODES = st.integers(100, 499).filter(lambda c: c not in (250, 251))

SMTP_TRANSIENT = st.one_of(
    st.builds(
        lambda c, enc, t: Reply(f"{c} in {enc}", (f"{c} {t}\r\n".encode(enc, "replace"),)),
        _OTHER_CODES,
        st.sampled_from(["latin-1", "cp1252", "utf-8", "shift_jis", "koi8-r", "utf-16-le"]),
        st.text(max_size=60),
    ),
    st.builds(lambda c, t: Reply("latin-1", (_latin1(c, t),)), TEMPORARY, LATIN1),
    st.builds(
        lambda c, n: Reply(f"{n} continuation lines", (_multiline(c, n),)),
        TEMPORARY,
        st.integers(2, 3000),
    ),
    st.builds(
        lambda c, n: Reply(f"one {n}-byte line", (b"%d " % c + b"x" * n + b"\r\n",)),
        TEMPORARY,
        st.integers(9_000, 200_000),
    ),
    st.builds(
        lambda c, n, p: Reply(
            f"{n} slow lines",
            (*(b"%d-slow\r\n" % c for _ in range(n)), b"%d ok\r\n" % c),
            pause=p,
        ),
        TEMPORARY,
        st.integers(1, 12),
        st.floats(0.2, 0.7),
    ),
    st.builds(lambda c: Reply("late", (b"%d late\r\n" % c,), pause=1.8), TEMPORARY),
    st.builds(
        lambda b, end: Reply("random bytes", (b"\xff" + b + end,)),
        st.binary(max_size=500),
        st.sampled_from([b"", b"\r\n"]),
    ),
    st.sampled_from(_MALFORMED).map(lambda line: Reply("malformed code", (line,))),
    st.sampled_from([b"", b"4", b"451-Tempor", b"451-one\r\n451-two"]).map(
        lambda part: Reply("hang-up mid-reply", (part,))
    ),
)
SMTP_PERMANENT = st.one_of(
    st.builds(
        lambda c, enc, t: Reply(
            f"{c} in {enc}", (f"{c} {t}\r\n".encode(enc, "replace"),), PERMANENT
        ),
        st.integers(500, 599),
        _ASCII_BASED,
        st.text(max_size=60),
    ),
    st.builds(
        lambda c, t: Reply("5xx latin-1", (_latin1(c, t),), PERMANENT),
        st.sampled_from([550, 551, 552, 553, 554]),
        LATIN1,
    ),
    st.builds(
        lambda c, n: Reply(f"5xx of {n} lines", (_multiline(c, n),), PERMANENT),
        st.sampled_from([550, 554]),
        st.integers(2, 40),
    ),
)
_SESSION_STAGES: list[SmtpStage] = ["greeting", "ehlo", "mail"]
_MESSAGE_STAGES: list[SmtpStage] = ["rcpt", "data"]
SMTP_SESSION_FAULT = st.tuples(st.sampled_from(_SESSION_STAGES), SMTP_TRANSIENT)


@st.composite
def smtp_scripts(draw: st.DrawFn, max_failures: int = 3) -> list[tuple[SmtpStage, Reply]]:
    """Up to ``max_failures`` transient failures, at RCPT or after the message, and perhaps a
    refusal for good to end with."""
    stages = st.sampled_from(_MESSAGE_STAGES)
    script = draw(st.lists(st.tuples(stages, SMTP_TRANSIENT), max_size=max_failures))
    if draw(st.booleans()) and draw(st.booleans()):
        script.append(draw(st.tuples(stages, SMTP_PERMANENT)))
    return script


# --- SMS over HTTP ---------------------------------------------------------------------------


class HostileSms(_Peer):
    """An SMS provider: each POST is answered by the next reply of its ``Idempotency-Key``'s
    script, then (script used up) by ``accepts[key]``, a well-formed 2xx in any framing.
    ``accepted`` counts those 2xx per key; after any other reply the provider hangs up."""

    def __init__(self, scripts: dict[str, list[Reply]], accepts: dict[str, Reply]) -> None:
        super().__init__()
        self.scripts = scripts
        self.accepts = accepts
        self.accepted: Counter[str] = Counter()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _converse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while head := await reader.readuntil(b"\r\n\r\n"):
            fields = _fields(head)
            await reader.readexactly(int(fields.get("content-length", "0")))
            key = fields["idempotency-key"]
            script = self.scripts.get(key, [])
            reply = script.pop(0) if script else self.accepts[key]
            await self._write(reader, writer, reply)
            if reply.kind != ACCEPT:
                return
            self.accepted[key] += 1


def _fields(head: bytes) -> dict[str, str]:
    lines = head.decode("latin-1").split("\r\n")[1:]
    pairs = (line.partition(":") for line in lines if line)
    return {name.strip().lower(): value.strip() for name, _, value in pairs}


def http_response(
    status: int,
    body: bytes = b"",
    extra: tuple[tuple[str, bytes], ...] = (),
    *,
    chunked: bool = False,
    close: bool = False,
) -> bytes:
    head = [b"HTTP/1.1 %d Whatever" % status, b"Content-Type: application/json"]
    head += [name.encode() + b": " + value for name, value in extra]
    if close:
        head.append(b"Connection: close")
    if chunked:
        head.append(b"Transfer-Encoding: chunked")
        framed = (b"%x\r\n%s\r\n" % (len(body), body) if body else b"") + b"0\r\n\r\n"
    else:
        head.append(b"Content-Length: %d" % len(body))
        framed = body
    return b"\r\n".join(head) + b"\r\n\r\n" + framed


def _pieces(data: bytes, size: int) -> tuple[bytes, ...]:
    return tuple(data[i : i + size] for i in range(0, len(data), size)) or (b"",)


_NAME = st.from_regex(r"X-[A-Za-z0-9-]{1,20}", fullmatch=True)
_VALUE = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=200).map(
    str.encode
)
_INTERIM = st.lists(st.sampled_from([100, 102, 103]), max_size=3).map(
    lambda codes: b"".join(b"HTTP/1.1 %d Wait\r\n\r\n" % c for c in codes)
)


@st.composite
def sms_accepts(draw: st.DrawFn) -> Reply:
    """A 2xx the client must take as accepted: up to three interim responses first, up to 30
    extra headers, either framing, written in pieces of any size."""
    status = draw(st.sampled_from([200, 201, 202]))
    extra = tuple(draw(st.lists(st.tuples(_NAME, _VALUE), max_size=30)))
    body = json.dumps({"sid": "SM" + "0" * 32, "status": "queued"}).encode()
    chunked = draw(st.booleans())
    data = draw(_INTERIM) + http_response(status, body, extra, chunked=chunked)
    return Reply(f"{status} accepted", _pieces(data, draw(st.integers(1, 4096))), ACCEPT)


BODIES = st.one_of(
    st.integers(1_000, 60_000).map(lambda n: b"[" * n),
    st.builds(
        lambda code, text: json.dumps({"code": code, "message": text}).encode(),
        st.one_of(st.integers(), st.text(max_size=40), st.booleans(), st.none()),
        st.text(max_size=80),
    ),
    st.binary(max_size=2_000),
)
ANY_STATUS = st.sampled_from([200, 201, 400, 429, 503])


def _too_many_interim(n: int, status: int) -> Reply:
    return Reply(f"{n} interim", (b"HTTP/1.1 100 Continue\r\n\r\n" * n + http_response(status),))


def _huge_header(n: int, status: int) -> Reply:
    data = http_response(status, b"{}", (("X-Filler", b"a" * n),))
    return Reply(f"one {n}-byte header", _pieces(data, 16_384))


def _many_headers(n: int, status: int) -> Reply:
    extra = tuple((f"X-H{i}", b"v") for i in range(n))
    return Reply(f"{n} headers", (http_response(status, b"{}", extra),))


def _fat_head(status: int) -> Reply:
    extra = tuple((f"X-F{i}", b"f" * 400) for i in range(60))  # under 100, over 16 KiB
    return Reply("a 24 KiB head", (http_response(status, b"{}", extra),))


def _bad_chunks(framing: bytes, status: int) -> Reply:
    head = b"HTTP/1.1 %d Whatever\r\nTransfer-Encoding: chunked\r\n\r\n" % status
    return Reply("bad chunked framing", (head + framing,))


def _short_body(status: int, missing: int) -> Reply:
    body = b'{"sid": "SM1"}'
    head = b"HTTP/1.1 %d Whatever\r\nContent-Length: %d\r\n\r\n" % (status, len(body) + missing)
    return Reply("body shorter than its length", (head + body,))


def _cut(status: int, at: int) -> Reply:
    data = http_response(status, b'{"sid": "SM1"}')
    return Reply(f"closed after {at % len(data)} bytes", (data[: at % len(data)],))


SMS_TRANSIENT = st.one_of(
    st.builds(
        lambda s, b: Reply(f"{s}", (http_response(s, b, close=True),)),
        st.integers(500, 999) | st.just(429),
        BODIES,
    ),
    st.builds(
        lambda s, b: Reply(f"{s}", (http_response(s, b, close=True),)),
        st.sampled_from([429, 500, 502, 503, 504, 599]),
        BODIES,
    ),
    st.builds(_too_many_interim, st.integers(6, 60), st.sampled_from([201, 503])),
    st.builds(_huge_header, st.integers(9_000, 300_000), ANY_STATUS),
    st.builds(_many_headers, st.integers(101, 3_000), ANY_STATUS),
    st.builds(_fat_head, ANY_STATUS),
    st.builds(
        _bad_chunks,
        st.sampled_from(
            [b"zz\r\nhello\r\n0\r\n\r\n", b"5\r\nhello world\r\n0\r\n\r\n", b"f" * 40 + b"\r\n"]
        ),
        ANY_STATUS,
    ),
    st.builds(_short_body, ANY_STATUS, st.integers(1, 1000)),
    st.builds(_cut, ANY_STATUS, st.integers(0, 10_000)),
    st.binary(max_size=500).map(lambda b: Reply("random bytes", (b"\x00" + b,))),
    st.builds(lambda s: Reply("late", (http_response(s, b"{}"),), pause=2.0), ANY_STATUS),
    st.builds(  # some 5 seconds in all, each piece well within the timeout
        lambda s: Reply("trickled", _pieces(http_response(s, b"{}" * 20), 8), pause=0.3),
        ANY_STATUS,
    ),
)
SMS_PERMANENT = st.one_of(
    st.builds(
        lambda s, b: Reply(f"{s}", (http_response(s, b, close=True),), PERMANENT),
        st.integers(300, 499).filter(lambda s: s != 429),
        BODIES,
    ),
    st.builds(
        lambda s, b: Reply(f"{s}", (http_response(s, b, close=True),), PERMANENT),
        st.sampled_from([400, 401, 403, 404, 409, 410, 413, 422]),
        BODIES,
    ),
    st.builds(
        lambda s: Reply(
            f"{s} redirect",
            (http_response(s, b"", (("Location", b"http://127.0.0.1:1/x"),), close=True),),
            PERMANENT,
        ),
        st.sampled_from([301, 302, 303, 307, 308]),
    ),
)


@st.composite
def sms_scripts(draw: st.DrawFn, max_failures: int = 3) -> list[Reply]:
    """Up to ``max_failures`` transient failures, and perhaps a refusal for good to end with."""
    script = draw(st.lists(SMS_TRANSIENT, max_size=max_failures))
    if draw(st.booleans()) and draw(st.booleans()):
        script.append(draw(SMS_PERMANENT))
    return script


def fate(script: list[Reply] | list[tuple[SmtpStage, Reply]]) -> Kind:
    """What becomes of a notification with this script: dead-lettered at its first refusal
    for good, otherwise accepted once its transient failures are retried."""
    replies = [r if isinstance(r, Reply) else r[1] for r in script]
    return PERMANENT if any(r.kind == PERMANENT for r in replies) else ACCEPT


# --- records ---------------------------------------------------------------------------------

WORKER_HEADER_NAMES = sorted(
    value
    for name, value in vars(worker_headers).items()
    if name.isupper() and isinstance(value, str) and worker_headers.is_ours(value)
)
HEADER_NAMES = st.one_of(
    st.sampled_from(WORKER_HEADER_NAMES),
    st.from_regex(r"(original|retry|replay|error)\.[a-z_.]{0,16}", fullmatch=True),
    st.text(max_size=40),
)
HEADER_VALUES = st.one_of(
    st.binary(max_size=300),
    st.sampled_from(
        [
            b"x",
            b"9" * 5000,
            b"-1",
            b"sms[",
            b"email",
            b"nan",
            b"inf",
            b"1e308",
            b"0:0",
            b'[{"at": 1}]',
            b"[" * 50_000,
            "Empf\xe4nger".encode("latin-1"),
            "\u202e\x1b[31m".encode(),
        ]
    ),
    st.text(max_size=100).map(str.encode),
)
FORGED_HEADERS = st.lists(st.tuples(HEADER_NAMES, HEADER_VALUES), max_size=8)
# names the Kafka client cannot decode: the record cannot be read as sent
UNDECODABLE_NAMES = st.binary(max_size=20).map(lambda b: b"\xff" + b)
