"""What the mailbox receives through the real path (a real broker, the worker in this process,
a real SMTP server on loopback): an order's emails thread together, offer one-click
unsubscribe, and carry a DKIM signature that verifies against the published key (the DNS
answer is stubbed here, the message is the one the server received)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dkim

from tests.conftest import MakeTopic, Produce
from tests.factories import event
from tests.sinks import SmsSink, SmtpSink
from tests.test_mailheaders import private_key, public_record
from tests.test_pipeline_kafka import Env, deliver

STATUSES = ("order_confirmed", "shipped", "out_for_delivery", "delivered")
URL = "https://shop.example/unsubscribe?customer={customer_id}&email={email}"


async def test_an_orders_emails_thread_unsubscribe_and_verify(
    kafka_bootstrap: str,
    new_topic: MakeTopic,
    produce: Produce,
    worker_env: Env,
    run_worker: Any,
    smtp_sink: SmtpSink,
    sms_sink: SmsSink,
    tmp_path: Path,
) -> None:
    """Four statuses of one order reach the mailbox as one conversation: one subject, each
    replying to and referencing the order's root Message-ID, each with its own Message-ID;
    each carries List-Unsubscribe (https with the escaped fields, and mailto) with
    List-Unsubscribe-Post One-Click, and a DKIM signature over those headers that verifies."""
    key = private_key(tmp_path)
    events: list[dict[str, Any] | bytes] = [
        event(f"e{i}", status, minutes=10 * i, customer={"id": "C-77"})
        for i, status in enumerate(STATUSES)
    ]
    await deliver(
        kafka_bootstrap,
        new_topic,
        produce,
        worker_env,
        run_worker,
        events,
        UNSUBSCRIBE_URL=URL,
        UNSUBSCRIBE_MAILTO="unsubscribe@shop.example",
        DKIM_DOMAIN="shop.example",
        DKIM_SELECTOR="s2026",
        DKIM_PRIVATE_KEY_FILE=str(key),
    )
    record = public_record(key)

    def dns(name: bytes, timeout: float = 5) -> bytes | None:
        return record if name == b"s2026._domainkey.shop.example." else None

    received = smtp_sink.messages
    assert len(received) == len(STATUSES)
    parsed = [m.message for m in received]
    roots = {(p["In-Reply-To"], p["References"]) for p in parsed}
    assert len(roots) == 1
    (root, references) = roots.pop()
    assert root == references and root.startswith("<order.") and root.endswith("@shop.example>")
    assert {p["Subject"] for p in parsed} == {"Đơn hàng ORD-5521 tại Test Shop"}
    assert len({p["Message-ID"] for p in parsed}) == len(STATUSES)
    for mail, message in zip(received, parsed, strict=True):
        assert message["List-Unsubscribe"] == (
            "<https://shop.example/unsubscribe?customer=C-77&email=an%40example.com>,"
            " <mailto:unsubscribe@shop.example?subject=unsubscribe>"
        )
        assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        assert "s=s2026" in "".join(str(message["DKIM-Signature"]).split())
        assert dkim.verify(mail.raw, dnsfunc=dns)
