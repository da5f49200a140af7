"""Fast loopback sinks for the benchmark, run as their own process (``python -m bench.sinks``).

- an SMTP server (asyncio, no aiosmtpd) that accepts every message, can delay each reply to
  the end of DATA (the "slow provider" of the latency-hiding figure), and can remember when it
  accepted each Message-ID (for the produce-to-accept latency figure);
- an HTTP server that answers every POST with 201 after an optional delay (the SMS provider),
  keeps connections alive, and answers ``GET /stats`` (counts) and ``GET /accepts``
  (``[[message_id, accepted_at], ...]``) for the orchestrator.

Both are deliberately minimal (no validation beyond framing) so that the sink, not the worker,
is never the bottleneck: postfix's ``smtp-sink`` is used wherever no delay or Message-ID is
needed. The process prints ``ready smtp=PORT http=PORT`` once both listen on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import signal
import time
from dataclasses import dataclass, field
from typing import cast

_MESSAGE_ID = re.compile(rb"^message-id:[ \t]*<([^>\r\n]+)>", re.IGNORECASE | re.MULTILINE)
_END_OF_DATA = b"\r\n.\r\n"
_EHLO_REPLY = b"250-bench-sink\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250 SIZE 52428800\r\n"


@dataclass
class Stats:
    """What the sinks accepted; shared by every connection of the process."""

    smtp_messages: int = 0
    smtp_sessions: int = 0
    sms: int = 0
    record_accepts: bool = False
    accepts: list[tuple[str, float]] = field(default_factory=list)

    def as_json(self) -> bytes:
        counts = {
            "smtp_messages": self.smtp_messages,
            "smtp_sessions": self.smtp_sessions,
            "sms": self.sms,
        }
        return json.dumps(counts).encode()


class SmtpSinkProtocol(asyncio.Protocol):
    """One SMTP session: commands answered at once, the end of DATA after ``delay`` seconds.

    PIPELINING is not announced, so a client waits for each reply and replies stay in order
    even when the DATA reply is delayed."""

    def __init__(self, stats: Stats, delay: float) -> None:
        self._stats = stats
        self._delay = delay
        self._buffer = b""
        self._in_data = False
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self._stats.smtp_sessions += 1
        self._transport.write(b"220 bench-sink ESMTP\r\n")

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while self._buffer:
            consumed = self._take_data() if self._in_data else self._take_command()
            if not consumed:
                return

    def _take_data(self) -> bool:
        end = (b"\r\n" + self._buffer).find(_END_OF_DATA)
        if end < 0:
            return False
        message = self._buffer[: max(end - 2, 0)]
        self._buffer = self._buffer[end + len(_END_OF_DATA) - 2 :]
        self._in_data = False
        self._accept(message)
        return True

    def _accept(self, message: bytes) -> None:
        accepted_at = time.time()
        self._stats.smtp_messages += 1
        if self._stats.record_accepts:
            found = _MESSAGE_ID.search(message, 0, _header_end(message))
            if found:
                self._stats.accepts.append((found.group(1).decode("ascii", "replace"), accepted_at))
        self._reply(b"250 2.0.0 Ok: queued\r\n", self._delay)

    def _take_command(self) -> bool:
        end = self._buffer.find(b"\r\n")
        if end < 0:
            return False
        line, self._buffer = self._buffer[:end], self._buffer[end + 2 :]
        verb = line[:4].upper()
        if verb in (b"EHLO", b"LHLO"):
            self._reply(_EHLO_REPLY)
        elif verb == b"DATA":
            self._in_data = True
            self._reply(b"354 End data with <CR><LF>.<CR><LF>\r\n")
        elif verb == b"QUIT":
            self._reply(b"221 2.0.0 Bye\r\n")
            if self._transport is not None:
                self._transport.close()
        else:  # HELO, MAIL, RCPT, RSET, NOOP: all fine
            self._reply(b"250 2.0.0 Ok\r\n")
        return True

    def _reply(self, reply: bytes, delay: float = 0.0) -> None:
        _write(self._transport, reply, delay)


class HttpSinkProtocol(asyncio.Protocol):
    """HTTP/1.1 keep-alive: POST -> 201 after ``delay``; GET /stats and GET /accepts."""

    def __init__(self, stats: Stats, delay: float) -> None:
        self._stats = stats
        self._delay = delay
        self._buffer = b""
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while self._take_request():
            pass

    def _take_request(self) -> bool:
        head_end = self._buffer.find(b"\r\n\r\n")
        if head_end < 0:
            return False
        head = self._buffer[:head_end]
        length = _content_length(head)
        total = head_end + 4 + length
        if len(self._buffer) < total:
            return False
        self._buffer = self._buffer[total:]
        method, _, rest = head.partition(b" ")
        path = rest.partition(b" ")[0]
        if method == b"POST":
            self._stats.sms += 1
            self._respond(b"201 Created", b'{"sid":"SMbench","status":"queued"}', self._delay)
        elif path == b"/stats":
            self._respond(b"200 OK", self._stats.as_json())
        elif path == b"/accepts":
            self._respond(b"200 OK", json.dumps(self._stats.accepts).encode())
        else:
            self._respond(b"404 Not Found", b"{}")
        return True

    def _respond(self, status: bytes, body: bytes, delay: float = 0.0) -> None:
        response = (
            b"HTTP/1.1 " + status + b"\r\nContent-Type: application/json\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )
        _write(self._transport, response, delay)


def _write(transport: asyncio.Transport | None, data: bytes, delay: float) -> None:
    """Send ``data`` now, or after ``delay`` seconds if the connection is still open then."""
    if transport is None or transport.is_closing():
        return
    if delay > 0:
        asyncio.get_running_loop().call_later(delay, _write_if_open, transport, data)
    else:
        transport.write(data)


def _write_if_open(transport: asyncio.Transport, data: bytes) -> None:
    if not transport.is_closing():
        transport.write(data)


def _header_end(message: bytes) -> int:
    end = message.find(b"\r\n\r\n")
    return len(message) if end < 0 else end


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value.strip())
    return 0


async def serve(smtp_port: int, http_port: int, smtp_delay: float, sms_delay: float) -> None:
    """Listen until SIGTERM/SIGINT; print the ports once ready."""
    stats = Stats(record_accepts=True)
    loop = asyncio.get_running_loop()
    smtp = await loop.create_server(
        lambda: SmtpSinkProtocol(stats, smtp_delay), "127.0.0.1", smtp_port, backlog=1024
    )
    http = await loop.create_server(
        lambda: HttpSinkProtocol(stats, sms_delay), "127.0.0.1", http_port, backlog=1024
    )
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    ports = [s.sockets[0].getsockname()[1] for s in (smtp, http)]
    print(f"ready smtp={ports[0]} http={ports[1]}", flush=True)
    async with smtp, http:
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description="fast SMTP and SMS sinks on 127.0.0.1")
    parser.add_argument("--smtp-port", type=int, default=0)
    parser.add_argument("--http-port", type=int, default=0)
    parser.add_argument("--smtp-delay", type=float, default=0.0, help="seconds, end of DATA")
    parser.add_argument("--sms-delay", type=float, default=0.0, help="seconds per POST")
    args = parser.parse_args()
    try:
        import uvloop  # the sink should cost the 2-core machine as little as possible
    except ImportError:
        runner = asyncio.run
    else:
        runner = uvloop.run
    runner(serve(args.smtp_port, args.http_port, args.smtp_delay, args.sms_delay))


if __name__ == "__main__":
    main()
