"""The product through its real path: events on a real Kafka broker, the worker in this process,
a real SMTP server and a real HTTP SMS endpoint on loopback. Each test reads what the customer
would receive."""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest
from structlog.testing import capture_logs

from tests.conftest import SMS_SID, MakeTopic, Produce, committed_offsets, read_topic
from tests.factories import event, record
from tests.sinks import SmsSink, SmtpSink
from worker.dedup import ShipmentState, open_store
from worker.logs import merge_context

ROOT = Path(__file__).resolve().parent.parent
Env = Callable[..., dict[str, str]]


async def wait_committed(bootstrap: str, env: dict[str, str], ends: dict[int, int]) -> None:
    """Until the worker's group has committed every partition up to ``ends``."""
    async with asyncio.timeout(60):
        while True:
            got = await committed_offsets(bootstrap, env["KAFKA_GROUP_ID"], env["KAFKA_TOPIC"])
            if all(got.get(p, -1) >= end for p, end in ends.items()):
                return
            await asyncio.sleep(0.1)


async def deliver(
    kafka_bootstrap: str,
    new_topic: MakeTopic,
    produce: Produce,
    worker_env: Env,
    run_worker: Any,
    events: list[dict[str, Any] | bytes],
    **overrides: str,
) -> dict[str, str]:
    """Produce ``events`` to a new one-partition topic and run a worker until it committed all
    of them. Raw ``bytes`` entries are produced as they are, with key b"raw"."""
    topic = await new_topic(partitions=1)
    env = worker_env(topic, **overrides)
    records = [(b"raw", e) if isinstance(e, bytes) else record(e) for e in events]
    await produce(topic, records)
    async with run_worker(env):
        await wait_committed(kafka_bootstrap, env, {0: len(records)})
    return env


def subjects(sink: SmtpSink) -> list[str]:
    return [str(m.message["Subject"]) for m in sink.messages]


def events_named(logs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [entry for entry in logs if entry["event"] == name]


async def test_sample_events_reach_each_customer_once_in_their_language(
    kafka_bootstrap: str,
    new_topic: MakeTopic,
    produce: Produce,
    worker_env: Env,
    run_worker: Any,
    smtp_sink: SmtpSink,
    sms_sink: SmsSink,
) -> None:
    """The sample stream (4 customers x 5 statuses, a delay, a redelivery, a stale event and two
    invalid records) gives exactly the emails and SMS the default policy promises, each in the
    customer's language, and dead-letters the two invalid records."""
    topic = await new_topic(partitions=3)
    env = worker_env(topic)
    lines = (ROOT / "samples" / "events.jsonl").read_bytes().splitlines()
    records = []
    for line in lines:
        try:
            key = json.loads(line)["shipment"]["id"].encode()
        except (ValueError, KeyError, TypeError):
            key = b"invalid"
        records.append((key, line))
    await produce(topic, records)

    async with run_worker(env):
        await smtp_sink.wait_for(17)
        await sms_sink.wait_for(13)
        dead = await read_topic(kafka_bootstrap, f"{topic}.dlq", 2)
        await asyncio.sleep(0.5)  # a duplicate would arrive right behind the last message

    assert len(smtp_sink.messages) == 17
    assert len(sms_sink.requests) == 13
    by_recipient = Counter(m.rcpt_tos[0] for m in smtp_sink.messages)
    assert by_recipient == {
        "lan.nguyen@example.com": 4,
        "minjun.kim@example.com": 4,
        "juergen.weiss@example.com": 5,
        "amelia@example.com": 4,
    }
    languages = {m.rcpt_tos[0]: m.message["Content-Language"] for m in smtp_sink.messages}
    assert languages == {
        "lan.nguyen@example.com": "vi",
        "minjun.kim@example.com": "ko",
        "juergen.weiss@example.com": "de",
        "amelia@example.com": "en",
    }
    sms_to = Counter(parse_qs(r.body.decode())["To"][0] for r in sms_sink.requests)
    assert sms_to == {"+84901234567": 3, "+821012345678": 3, "+4915123456789": 4, "+14155550134": 3}
    assert sorted(r.value for r in dead) == sorted([lines[23], lines[24]])


async def test_same_event_id_twice_notifies_once(
    kafka_bootstrap: str,
    new_topic: MakeTopic,
    produce: Produce,
    worker_env: Env,
    run_worker: Any,
    smtp_sink: SmtpSink,
    sms_sink: SmsSink,
) -> None:
    """A redelivered event (same event_id) sends its email and SMS once; the repeat is logged
    as a duplicate."""
    shipped = event("evt-1", "shipped")
    with capture_logs() as logs:
        await deliver(
            kafka_bootstrap, new_topic, produce, worker_env, run_worker, [shipped, shipped]
        )
    assert len(smtp_sink.messages) == 1
    assert len(sms_sink.requests) == 1
    assert [e["rule"] for e in events_named(logs, "event_duplicate_skipped")] == ["duplicate"]


async def test_repeated_status_notifies_once_but_a_returning_status_notifies_again(
    kafka_bootstrap: str,
    new_topic: MakeTopic,
    produce: Produce,
    worker_env: Env,
    run_worker: Any,
    smtp_sink: SmtpSink,
) -> None:
    """out_for_delivery twice in a row (new event ids) notifies once; after delivery_failed, a
    new out_for_delivery notifies again."""
    events = [
        event("e1", "out_for_delivery", minutes=0),
        event("e2", "out_for_delivery", minutes=5),
        event("e3", "delivery_failed", minutes=10),
        event("e4", "out_for_delivery", minutes=20),
    ]
    with capture_logs(processors=[merge_context]) as logs:
        await deliver(
            kafka_bootstrap,
            new_topic,
            produce,
            worker_env,
            run_worker,
            events,
            SMS_PROVIDER="disabled",
        )
    assert len(smtp_sink.messages) == 3
    sent = [e["event_id"] for e in events_named(logs, "notification_sent")]
    assert sorted(sent) == ["e1", "e3", "e4"]  # out_for_delivery, delivery_failed, again
    assert [e["rule"] for e in events_named(logs, "event_repeated_status_skipped")] == [
        "repeated_status"
    ]


async def test_event_older_than_the_shipments_newest_is_stale(
    kafka_bootstrap: str,
    new_topic: MakeTopic,
    produce: Produce,
    worker_env: Env,
    run_worker: Any,
    smtp_sink: SmtpSink,
) -> None:
    """A "shipped" that happened before the "out_for_delivery" already notified is not sent."""
    events = [event("e1", "out_for_delivery", minutes=60), event("e0", "shipped", minutes=0)]
    with capture_logs() as logs:
        await deliver(
            kafka_bootstrap,
            new_topic,
            produce,
            worker_env,
            run_worker,
            events,
            SMS_PROVIDER="disabled",
        )
    assert len(smtp_sink.messages) == 1
    assert [e["rule"] for e in events_named(logs, "event_stale_skipped")] == ["stale"]


async def test_after_a_terminal_status_only_returned_notifies(
    kafka_bootstrap: str,
    new_topic: MakeTopic,
    produce: Produce,
    worker_env: Env,
    run_worker: Any,
    smtp_sink: SmtpSink,
) -> None:
    """After "delivered", a later "delivery_failed" is skipped, a later "returned" is sent."""
    events = [
        event("e1", "delivered", minutes=0),
        event("e2", "delivery_failed", minutes=10),
        event("e3", "returned", minutes=20),
    ]
    with capture_logs() as logs:
        await deliver(
            kafka_bootstrap,
            new_topic,
            produce,
            worker_env,
            run_worker,
            events,
            SMS_PROVIDER="disabled",
        )
    assert len(smtp_sink.messages) == 2
    assert [e["rule"] for e in events_named(logs, "event_after_terminal_skipped")] == [
        "after_terminal"
    ]


@pytest.mark.parametrize("store", ["sqlite", "redis"])
async def test_restart_with_the_same_store_does_not_resend(
    kafka_bootstrap: str,
    new_topic: MakeTopic,
    produce: Produce,
    worker_env: Env,
    run_worker: Any,
    smtp_sink: SmtpSink,
    sms_sink: SmsSink,
    store: str,
    request: pytest.FixtureRequest,
) -> None:
    """A second worker that reads the whole topic again (a new consumer group: the worst
    redelivery) with the same SQLite file or Redis server sends nothing more."""
    events = [event("e1", "shipped", minutes=0), event("e2", "delivered", minutes=10)]
    overrides = {}
    if store == "redis":
        overrides = {
            "DEDUP_URL": request.getfixturevalue("redis_url"),
            "DEDUP_KEY_PREFIX": f"restart-{uuid.uuid4().hex[:8]}:",
        }
    env = await deliver(
        kafka_bootstrap, new_topic, produce, worker_env, run_worker, events, **overrides
    )
    assert (len(smtp_sink.messages), len(sms_sink.requests)) == (2, 2)

    again = {**env, "KAFKA_GROUP_ID": env["KAFKA_GROUP_ID"] + "-again"}
    with capture_logs() as logs:
        async with run_worker(again):
            await wait_committed(kafka_bootstrap, again, {0: 2})
    assert (len(smtp_sink.messages), len(sms_sink.requests)) == (2, 2)
    assert len(events_named(logs, "event_duplicate_skipped")) == 2


async def test_offset_is_committed_only_after_the_notification_is_sent(
    kafka_bootstrap: str,
    new_topic: MakeTopic,
    produce: Produce,
    worker_env: Env,
    run_worker: Any,
    smtp_sink: SmtpSink,
) -> None:
    """While the SMTP server holds the message, the record's offset stays uncommitted (the
    invalid record before it is committed, so the group's offsets are readable); once the
    server accepts it, the offset is committed."""
    topic = await new_topic(partitions=1)
    env = worker_env(topic, SMS_PROVIDER="disabled")
    await produce(topic, [(b"x", b"not json"), record(event("e1", "shipped"))])
    smtp_sink.faults.delay = 2.0
    async with run_worker(env):
        await wait_committed(kafka_bootstrap, env, {0: 1})
        async with asyncio.timeout(30):
            while smtp_sink.connections == 0:
                await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)  # five commit intervals while the message is held
        held = await committed_offsets(kafka_bootstrap, env["KAFKA_GROUP_ID"], topic)
        assert smtp_sink.messages == []
        assert held == {0: 1}
        await smtp_sink.wait_for(1)
        await wait_committed(kafka_bootstrap, env, {0: 2})


async def test_a_redelivered_event_sends_only_the_channels_not_yet_done(
    kafka_bootstrap: str,
    new_topic: MakeTopic,
    produce: Produce,
    worker_env: Env,
    run_worker: Any,
    smtp_sink: SmtpSink,
    sms_sink: SmsSink,
) -> None:
    """A worker died after the email of an event was sent and recorded but before its SMS: the
    redelivered event sends the SMS only."""
    topic = await new_topic(partitions=1)
    env = worker_env(topic)
    store = open_store(env["DEDUP_URL"], 3600)
    state = ShipmentState("shipped", datetime(2026, 11, 21, 8, 15, tzinfo=UTC).timestamp())
    await store.accept("e1", ("email", "sms"), "SHP-1", state, "crashed/1", lease=0)
    await store.mark_done("e1", "email", "sent")
    await store.close()
    await produce(topic, [record(event("e1", "shipped"))])
    with capture_logs() as logs:
        async with run_worker(env):
            await wait_committed(kafka_bootstrap, env, {0: 1})
    assert smtp_sink.messages == []
    assert len(sms_sink.requests) == 1
    assert [e["channels"] for e in events_named(logs, "event_resumed")] == [["sms"]]


async def test_an_sms_refused_with_4xx_is_dead_lettered_without_retrying(
    kafka_bootstrap: str,
    new_topic: MakeTopic,
    produce: Produce,
    worker_env: Env,
    run_worker: Any,
    smtp_sink: SmtpSink,
    sms_sink: SmsSink,
) -> None:
    """HTTP 400 from the SMS API is permanent: one request, a dead letter for the SMS with the
    provider's code, the email still sent."""
    topic = await new_topic(partitions=1)
    env = worker_env(topic)
    sms_sink.faults.count, sms_sink.faults.reply = 1, 400
    await produce(topic, [record(event("e1", "shipped"))])
    with capture_logs() as logs:
        async with run_worker(env):
            (dead,) = await read_topic(kafka_bootstrap, f"{topic}.dlq", 1)
            await wait_committed(kafka_bootstrap, env, {0: 1})
    headers = dict(dead.headers)
    assert (headers["error.type"], headers["error.channel"]) == (b"permanent", b"sms")
    assert headers["error.message"] == b"SMS provider refused with 400 (provider code 20003)"
    assert sms_sink.rejected == 1
    assert len(smtp_sink.messages) == 1
    assert events_named(logs, "notification_retrying") == []


async def test_malformed_records_go_to_the_dead_letter_topic_and_the_worker_goes_on(
    kafka_bootstrap: str,
    new_topic: MakeTopic,
    produce: Produce,
    worker_env: Env,
    run_worker: Any,
    smtp_sink: SmtpSink,
) -> None:
    """Invalid UTF-8, non-JSON, a schema violation and an unknown status each land in the DLQ
    unchanged with headers that say why and where from; the valid events around them are sent."""
    bad_status = json.dumps(event("e-bad", "teleported")).encode()
    missing = json.dumps({"event_id": "e-missing", "status": "shipped"}).encode()
    events: list[dict[str, Any] | bytes] = [
        b"\xff\xfe not utf-8",
        event("ok-1", "shipped", shipment_id="A"),
        b"{not json",
        missing,
        event("ok-2", "shipped", shipment_id="B"),
        bad_status,
    ]
    with capture_logs() as logs:
        env = await deliver(
            kafka_bootstrap,
            new_topic,
            produce,
            worker_env,
            run_worker,
            events,
            SMS_PROVIDER="disabled",
        )
    assert len(smtp_sink.messages) == 2
    dead = await read_topic(kafka_bootstrap, f"{env['KAFKA_TOPIC']}.dlq", 4)
    assert [r.value for r in dead] == [events[0], events[2], missing, bad_status]
    assert all(r.key == b"raw" for r in dead)
    headers = [dict(r.headers) for r in dead]
    assert [h["error.type"] for h in headers] == [b"not_utf8", b"not_json", b"schema", b"schema"]
    assert [h["original.offset"] for h in headers] == [b"0", b"2", b"3", b"5"]
    assert {h["original.topic"] for h in headers} == {env["KAFKA_TOPIC"].encode()}
    assert {h["original.partition"] for h in headers} == {b"0"}
    assert b"occurred_at" in headers[2]["error.message"]
    assert b"status" in headers[3]["error.message"]
    assert len(events_named(logs, "event_dead_lettered")) == 4


async def test_invalid_phone_skips_sms_but_sends_the_email(
    kafka_bootstrap: str,
    new_topic: MakeTopic,
    produce: Produce,
    worker_env: Env,
    run_worker: Any,
    smtp_sink: SmtpSink,
    sms_sink: SmsSink,
) -> None:
    """A phone number that is not a number: no SMS, a log line that says why, and the email."""
    with capture_logs() as logs:
        await deliver(
            kafka_bootstrap,
            new_topic,
            produce,
            worker_env,
            run_worker,
            [event("e1", "shipped", customer={"phone": "12"})],
        )
    assert len(smtp_sink.messages) == 1
    assert sms_sink.requests == []
    skipped = events_named(logs, "notification_skipped")
    assert [(s["channel"], s["reason"]) for s in skipped] == [("sms", "invalid_phone")]


async def test_line_breaks_in_event_data_cannot_inject_headers(
    kafka_bootstrap: str,
    new_topic: MakeTopic,
    produce: Produce,
    worker_env: Env,
    run_worker: Any,
    smtp_sink: SmtpSink,
) -> None:
    """CR/LF in the customer's name or the order id never becomes a header or a recipient."""
    hostile = event(
        "e1",
        "shipped",
        customer={"name": "Eve\r\nBcc: victim@evil.example"},
        shipment={"order_id": "ORD-1\r\nX-Injected: yes"},
    )
    await deliver(
        kafka_bootstrap,
        new_topic,
        produce,
        worker_env,
        run_worker,
        [hostile],
        SMS_PROVIDER="disabled",
    )
    (mail,) = smtp_sink.messages
    assert mail.rcpt_tos == ["an@example.com"]
    message = mail.message
    assert message["Bcc"] is None
    assert message["X-Injected"] is None
    assert message["To"].addresses[0].display_name == "Eve Bcc: victim@evil.example"
    assert "ORD-1 X-Injected: yes" in str(message["Subject"])


async def test_html_in_a_customer_name_is_escaped_in_the_html_part(
    kafka_bootstrap: str,
    new_topic: MakeTopic,
    produce: Produce,
    worker_env: Env,
    run_worker: Any,
    smtp_sink: SmtpSink,
) -> None:
    """A name with markup shows as text in the HTML part, and as typed in the text part."""
    name = '<script>alert(1)</script> & "Bob"'
    await deliver(
        kafka_bootstrap,
        new_topic,
        produce,
        worker_env,
        run_worker,
        [event("e1", "shipped", customer={"name": name, "locale": "en-US"})],
        SMS_PROVIDER="disabled",
    )
    message = smtp_sink.messages[0].message
    html = message.get_body(("html",)).get_content()
    text = message.get_body(("plain",)).get_content()
    assert "<script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; &#34;Bob&#34;" in html
    assert name in text


async def test_email_is_multipart_with_stable_message_id_and_encoded_headers(
    kafka_bootstrap: str,
    new_topic: MakeTopic,
    produce: Produce,
    worker_env: Env,
    run_worker: Any,
    smtp_sink: SmtpSink,
    tmp_path: Path,
) -> None:
    """The email is multipart/alternative (text + HTML), its Vietnamese subject and display
    names are RFC 2047 encoded, and the same event gets the same Message-ID in a new worker."""
    shipped = event("e1", "shipped")
    env = await deliver(
        kafka_bootstrap,
        new_topic,
        produce,
        worker_env,
        run_worker,
        [shipped],
        SMS_PROVIDER="disabled",
    )
    fresh = {
        **env,
        "KAFKA_GROUP_ID": "fresh-" + env["KAFKA_GROUP_ID"],
        "DEDUP_URL": f"sqlite:///{tmp_path / 'other.sqlite3'}",
    }
    async with run_worker(fresh):
        await smtp_sink.wait_for(2)
    first, second = (m.message for m in smtp_sink.messages)
    assert first.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in first.iter_parts()] == ["text/plain", "text/html"]
    assert first["Message-ID"] == second["Message-ID"]
    assert first["Message-ID"].endswith("@shop.example>")
    raw_headers = smtp_sink.messages[0].raw.split(b"\r\n\r\n", 1)[0]
    assert raw_headers.isascii()
    assert b"=?utf-8?" in raw_headers
    assert first["To"].addresses[0].display_name == "Nguyễn Văn An"
    assert first["From"].addresses[0].display_name == "Cửa hàng Sen"
    assert first["Date"] is not None


async def test_twilio_request_carries_e164_number_sender_body_and_basic_auth(
    kafka_bootstrap: str,
    new_topic: MakeTopic,
    produce: Produce,
    worker_env: Env,
    run_worker: Any,
    sms_sink: SmsSink,
) -> None:
    """The SMS goes to Twilio's Messages.json as a form with To in E.164 (a national number read
    in the locale's country), From, the body, and basic auth of the account."""
    await deliver(
        kafka_bootstrap,
        new_topic,
        produce,
        worker_env,
        run_worker,
        [event("e1", "out_for_delivery", customer={"phone": "090 123 4567"})],
    )
    (sms,) = sms_sink.requests
    assert sms.path == f"/2010-04-01/Accounts/{SMS_SID}/Messages.json"
    form = parse_qs(sms.body.decode())
    assert form["To"] == ["+84901234567"]
    assert form["From"] == ["+15005550006"]
    assert "ORD-5521" in form["Body"][0]
    expected = base64.b64encode(f"{SMS_SID}:test-token".encode()).decode()
    assert sms.headers["Authorization"] == f"Basic {expected}"


async def test_webhook_provider_posts_json(
    kafka_bootstrap: str,
    new_topic: MakeTopic,
    produce: Produce,
    worker_env: Env,
    run_worker: Any,
    sms_sink: SmsSink,
) -> None:
    """With SMS_PROVIDER=webhook the SMS is a JSON POST {to, body, event_id, status, locale}."""
    await deliver(
        kafka_bootstrap,
        new_topic,
        produce,
        worker_env,
        run_worker,
        [event("e1", "delivered", customer={"locale": "ko-KR", "phone": "010-1234-5678"})],
        SMS_PROVIDER="webhook",
        SMS_WEBHOOK_URL=sms_sink.url + "/sms",
    )
    (sms,) = sms_sink.requests
    assert sms.path == "/sms"
    payload = sms.json
    assert set(payload) == {"to", "body", "event_id", "status", "locale"}
    assert (payload["to"], payload["event_id"], payload["status"], payload["locale"]) == (
        "+821012345678",
        "e1",
        "delivered",
        "ko",
    )


async def test_transient_failures_are_retried_and_sent_once(
    kafka_bootstrap: str,
    new_topic: MakeTopic,
    produce: Produce,
    worker_env: Env,
    run_worker: Any,
    smtp_sink: SmtpSink,
    sms_sink: SmsSink,
) -> None:
    """SMTP 451 once and HTTP 503 then 429: each notification is retried and arrives once."""
    smtp_sink.faults.count, smtp_sink.faults.reply = 1, "451 4.3.0 try again later"
    sms_sink.faults.count, sms_sink.faults.reply = 2, 503
    with capture_logs() as logs:
        await deliver(
            kafka_bootstrap, new_topic, produce, worker_env, run_worker, [event("e1", "shipped")]
        )
    assert len(smtp_sink.messages) == 1
    assert len(sms_sink.requests) == 1
    assert sms_sink.rejected == 2
    retries = Counter(e["channel"] for e in events_named(logs, "notification_retrying"))
    assert retries == {"email": 1, "sms": 2}


async def test_permanent_email_failure_dead_letters_that_channel_only(
    kafka_bootstrap: str,
    new_topic: MakeTopic,
    produce: Produce,
    worker_env: Env,
    run_worker: Any,
    smtp_sink: SmtpSink,
    sms_sink: SmsSink,
) -> None:
    """SMTP 550 for the recipient: the email is dead-lettered with the reason and channel, not
    retried; the SMS still goes out."""
    smtp_sink.faults.count, smtp_sink.faults.reply = 1, "550 5.1.1 no such user"
    with capture_logs() as logs:
        env = await deliver(
            kafka_bootstrap, new_topic, produce, worker_env, run_worker, [event("e1", "shipped")]
        )
    assert smtp_sink.messages == []
    assert len(sms_sink.requests) == 1
    (dead,) = await read_topic(kafka_bootstrap, f"{env['KAFKA_TOPIC']}.dlq", 1)
    headers = dict(dead.headers)
    assert headers["error.type"] == b"permanent"
    assert headers["error.channel"] == b"email"
    assert b"550" in headers["error.message"]
    assert events_named(logs, "notification_retrying") == []


async def test_smtp_connections_are_reused(
    kafka_bootstrap: str,
    new_topic: MakeTopic,
    produce: Produce,
    worker_env: Env,
    run_worker: Any,
    smtp_sink: SmtpSink,
) -> None:
    """Twenty emails travel over at most SMTP_POOL_SIZE connections."""
    events = [event(f"e{i}", "shipped", shipment_id=f"S{i}") for i in range(20)]
    await deliver(
        kafka_bootstrap,
        new_topic,
        produce,
        worker_env,
        run_worker,
        events,
        SMS_PROVIDER="disabled",
        SMTP_POOL_SIZE="2",
    )
    assert len(smtp_sink.messages) == 20
    assert 1 <= smtp_sink.connections <= 2


async def test_logs_mask_contacts_and_carry_event_context(
    kafka_bootstrap: str,
    new_topic: MakeTopic,
    produce: Produce,
    worker_env: Env,
    run_worker: Any,
    smtp_sink: SmtpSink,
    sms_sink: SmsSink,
) -> None:
    """Outcome lines name the event, shipment, status, channel and locale; no full address,
    phone number or body appears in any log line."""
    with capture_logs(processors=[merge_context]) as logs:
        await deliver(
            kafka_bootstrap, new_topic, produce, worker_env, run_worker, [event("e1", "shipped")]
        )
    sent = events_named(logs, "notification_sent")
    assert {(e["channel"], e["to"]) for e in sent} == {
        ("email", "a***@example.com"),
        ("sms", "+84******567"),
    }
    for entry in sent:
        assert (entry["event_id"], entry["shipment_id"], entry["status"], entry["locale"]) == (
            "e1",
            "SHP-1",
            "shipped",
            "vi",
        )
    flat = json.dumps(logs, default=str)
    assert "an@example.com" not in flat
    assert "901234567" not in flat
    assert "test-token" not in flat
