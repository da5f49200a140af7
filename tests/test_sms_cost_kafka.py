"""What an SMS costs, through the real path: events on a real Kafka broker, the worker in this
process, a real HTTP SMS endpoint (and SMTP server) on loopback. Each test reads the body the
provider received."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs

from tests.conftest import MakeTopic, Produce
from tests.factories import event
from tests.sinks import SmsSink, SmtpSink
from tests.test_pipeline_kafka import deliver
from worker.sms_text import Encoding, SmsCost, measure

Env = Callable[..., dict[str, str]]

KOREAN_NOTE = "수령인이 부재중이며 전화를 받지 않았습니다. "


def bodies(sink: SmsSink) -> dict[str, str]:
    """The SMS bodies the provider received, by recipient."""
    forms = [parse_qs(request.body.decode()) for request in sink.requests]
    return {form["To"][0]: form["Body"][0] for form in forms}


async def test_the_provider_receives_unaccented_vietnamese_and_a_long_detail_within_budget(
    kafka_bootstrap: str,
    new_topic: MakeTopic,
    produce: Produce,
    worker_env: Env,
    run_worker: Any,
    smtp_sink: SmtpSink,
    sms_sink: SmsSink,
) -> None:
    """With SMS_UNACCENTED=vi and SMS_MAX_SEGMENTS=2: a Vietnamese customer's SMS arrives
    without diacritics, as one GSM-7 segment; a Korean delivery_failed SMS with a 2,000-
    character carrier note arrives within two UCS-2 segments, the note shortened with an
    ellipsis and the template's words whole, while the same event's email keeps the note."""
    note = (KOREAN_NOTE * 100)[:2000].strip()
    vietnamese = event("evt-vi", "delivered", shipment_id="SHP-vi")
    korean = event(
        "evt-ko",
        "delivery_failed",
        shipment_id="SHP-ko",
        customer={"locale": "ko", "phone": "+82 10 1234 5678", "email": "minjun@example.com"},
        shipment={"detail": note},
    )
    await deliver(
        kafka_bootstrap,
        new_topic,
        produce,
        worker_env,
        run_worker,
        [vietnamese, korean],
        SMS_UNACCENTED="vi",
        SMS_MAX_SEGMENTS="2",
    )

    received = bodies(sms_sink)
    assert received["+84901234567"] == (
        "Test Shop: Don ORD-5521 da duoc giao thanh cong. Cam on ban da mua sam!\n"
        "Theo doi: https://track.example/VN123456789"
    )
    assert measure(received["+84901234567"]) == SmsCost(Encoding.GSM7, 115, 1)

    sms = received["+821012345678"]
    cost = measure(sms)
    assert (cost.encoding, cost.segments) == (Encoding.UCS2, 2)
    start = "[Test Shop] 주문하신 상품(주문번호 ORD-5521)의 배송을 완료하지 못했습니다(사유: "
    end = "…). 택배사 또는 고객센터로 문의해 주시기 바랍니다."
    assert sms.startswith(start)
    assert end in sms
    shortened = sms[len(start) : sms.index(end)]
    assert note.startswith(shortened) and 16 <= len(shortened) < len(note)

    emails = {mail.rcpt_tos[0]: mail.message for mail in smtp_sink.messages}
    text = emails["minjun@example.com"].get_body(("plain",))
    assert text is not None
    assert note in " ".join(text.get_content().split())
