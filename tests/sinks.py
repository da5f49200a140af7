"""Real servers on loopback that catch what the worker sends: an SMTP server (aiosmtpd) and an
HTTP SMS endpoint (the standard library's HTTP server). Tests read what they received; the demo
(``python -m tests.sinks --out DIR``) runs both and writes every message into a folder.

Both can be told to misbehave: answer with an error code for the next N requests, or delay.
"""

from __future__ import annotations

import argparse
import asyncio
import email
import email.policy
import json
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session


@dataclass
class ReceivedMail:
    mail_from: str
    rcpt_tos: list[str]
    raw: bytes
    mail_options: list[str] = field(default_factory=list)

    @property
    def message(self) -> EmailMessage:
        parsed = email.message_from_bytes(self.raw, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        return parsed


@dataclass
class Faults:
    """Answer the next ``count`` requests with ``reply`` instead of accepting them."""

    count: int = 0
    reply: Any = None
    code: Any = 20003  # the error code in the SMS sink's refusal body
    delay: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def take(self) -> Any:
        with self.lock:
            if self.count > 0:
                self.count -= 1
                return self.reply
        return None


class _SmtpHandler:
    def __init__(self, sink: SmtpSink) -> None:
        self._sink = sink

    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        # counted here, not per TCP connection: aiosmtpd's start-up probe connects without EHLO
        self._sink.connections += 1
        session.host_name = hostname  # aiosmtpd leaves this to a handler that takes over EHLO
        if not self._sink.eight_bit_mime:
            responses = [r for r in responses if r[4:].upper() != "8BITMIME"]
        if self._sink.pipelining:  # aiosmtpd reads line by line, so pipelined commands work
            responses.insert(-1, "250-PIPELINING")
        return responses

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        fault = self._sink.faults.take()
        if fault is not None:
            return str(fault)
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self._sink.faults.delay:
            await asyncio.sleep(self._sink.faults.delay)
        fault = self._sink.data_faults.take()
        if fault is not None:  # the reply to the message's final dot
            return str(fault)
        content = envelope.original_content or b""
        mail = ReceivedMail(
            str(envelope.mail_from),
            list(envelope.rcpt_tos),
            content,
            list(envelope.mail_options),
        )
        self._sink.record(mail)
        return "250 Message accepted"


class SmtpSink:
    """An SMTP server on 127.0.0.1 that keeps every message it accepts."""

    def __init__(
        self,
        port: int = 0,
        on_mail: Callable[[ReceivedMail], None] | None = None,
        size_limit: int = 33_554_432,  # octets announced with SIZE; MAIL ... SIZE= above: 552
    ):
        self.faults = Faults()  # replies to RCPT
        self.data_faults = Faults()  # replies to the message itself
        self.messages: list[ReceivedMail] = []
        self.connections = 0  # SMTP sessions that said EHLO
        self.eight_bit_mime = True  # announce 8BITMIME (False: a 7-bit-only server)
        self.pipelining = False  # announce PIPELINING (RFC 2920), as postfix does
        self._running = False
        self._on_mail = on_mail
        self._lock = threading.Lock()
        self._controller = Controller(
            _SmtpHandler(self),
            hostname="127.0.0.1",
            port=port or _free_port(),
            server_hostname="sink.local",
            data_size_limit=size_limit,
        )

    @property
    def port(self) -> int:
        return int(self._controller.port)

    def record(self, mail: ReceivedMail) -> None:
        with self._lock:
            self.messages.append(mail)
        if self._on_mail:
            self._on_mail(mail)

    def start(self) -> SmtpSink:
        self._controller.start()
        self._running = True
        return self

    def stop(self) -> None:
        if self._running:  # a test may stop it early to refuse connections
            self._controller.stop()
            self._running = False

    async def wait_for(self, count: int, timeout: float = 30.0) -> list[ReceivedMail]:
        """Until ``count`` messages arrived (the worker runs in the same loop: never block)."""
        await _wait_until(
            lambda: len(self.messages) >= count, timeout, f"{count} emails", self.messages
        )
        return list(self.messages)


@dataclass
class ReceivedSms:
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


class SmsSink:
    """An HTTP server on 127.0.0.1 that keeps every POST it accepts (201) and can be told to
    answer errors (``faults.reply = 503``)."""

    def __init__(
        self,
        port: int = 0,
        on_sms: Callable[[ReceivedSms], None] | None = None,
        tls: ssl.SSLContext | None = None,
    ):
        """``tls``: serve https with this server-side context."""
        self.faults = Faults()
        self.requests: list[ReceivedSms] = []
        self.rejected = 0
        # a provider's account rate: at most this many accepted per wall-clock second, above it
        # 429 with ``Retry-After: <retry_after>``; ``arrivals`` keeps (time, status) of each POST
        self.per_second: int | None = None
        self.retry_after = "1"
        self.arrivals: list[tuple[float, int]] = []
        self.connections = 0
        self._on_sms = on_sms
        self._server = _Server(("127.0.0.1", port), _sms_handler(self))
        if tls is not None:
            self._server.socket = tls.wrap_socket(self._server.socket, server_side=True)
        self._scheme = "https" if tls else "http"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"{self._scheme}://127.0.0.1:{self.port}"

    def over_rate(self) -> bool:
        """Note a POST's arrival; True when it is over ``per_second`` (and then refused)."""
        if self.per_second is None:
            return False
        with self.faults.lock:
            now = time.time()
            second = int(now)
            accepted = sum(1 for at, status in self.arrivals if int(at) == second and status < 400)
            over = accepted >= self.per_second
            self.arrivals.append((now, 429 if over else 201))
            if over:
                self.rejected += 1
            return over

    def start(self) -> SmsSink:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    async def wait_for(self, count: int, timeout: float = 30.0) -> list[ReceivedSms]:
        await _wait_until(
            lambda: len(self.requests) >= count, timeout, f"{count} SMS", self.requests
        )
        return list(self.requests)


class _Server(ThreadingHTTPServer):
    request_queue_size = 256  # the default 5 resets connections under a burst of SMS
    daemon_threads = True


def _sms_handler(sink: SmsSink) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as real SMS APIs allow

        def setup(self) -> None:
            super().setup()
            with sink.faults.lock:
                sink.connections += 1

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if sink.faults.delay:
                time.sleep(sink.faults.delay)
            fault = sink.faults.take()
            if fault is None and sink.over_rate():
                self._answer(
                    429, {"code": 20429, "message": "too many"}, {"Retry-After": sink.retry_after}
                )
                return
            if fault is not None:
                sink.rejected += 1
                self._answer(
                    int(fault), {"code": sink.faults.code, "message": "rejected by test sink"}
                )
                return
            received = ReceivedSms(self.path, dict(self.headers.items()), body)
            sink.requests.append(received)
            if sink._on_sms:
                sink._on_sms(received)
            self._answer(201, {"sid": f"SM{len(sink.requests):032d}", "status": "queued"})

        def _answer(
            self, status: int, payload: dict[str, Any], extra: dict[str, str] | None = None
        ) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            for name, value in (extra or {}).items():
                self.send_header(name, value)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _wait_until(done: Callable[[], bool], timeout: float, what: str, got: list[Any]) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; got {len(got)}")
        await asyncio.sleep(0.05)


def _serve(out: Path, smtp_port: int, sms_port: int) -> None:
    """Run both sinks until interrupted, writing each message into ``out``."""
    (out / "email").mkdir(parents=True, exist_ok=True)
    (out / "sms").mkdir(parents=True, exist_ok=True)

    lock = threading.Lock()
    counts = {"email": 0, "sms": 0}

    def next_name(kind: str) -> str:
        with lock:  # SMS arrive on several threads at once
            counts[kind] += 1
            return f"{counts[kind]:04d}"

    def save_mail(mail: ReceivedMail) -> None:
        name = next_name("email")
        (out / "email" / f"{name}.eml").write_bytes(mail.raw)
        html = mail.message.get_body(("html",))
        if html is not None:
            (out / "email" / f"{name}.html").write_text(html.get_content(), encoding="utf-8")

    def save_sms(sms: ReceivedSms) -> None:
        (out / "sms" / f"{next_name('sms')}.json").write_text(
            json.dumps(sms.json, ensure_ascii=False, indent=2), encoding="utf-8"
        )

    smtp = SmtpSink(smtp_port, on_mail=save_mail).start()
    sms = SmsSink(sms_port, on_sms=save_sms).start()
    print(f"smtp 127.0.0.1:{smtp.port} sms {sms.url} writing to {out}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        sms.stop()
        smtp.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="SMTP and SMS catchers for local runs")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--smtp-port", type=int, default=2525)
    parser.add_argument("--sms-port", type=int, default=8025)
    args = parser.parse_args()
    _serve(args.out, args.smtp_port, args.sms_port)
