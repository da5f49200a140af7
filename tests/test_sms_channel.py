"""The SMS senders against a real HTTP server on loopback: what the provider receives, and how
each answer is classified (transient: retry later; permanent: dead-letter the channel)."""

from __future__ import annotations

import asyncio
import base64
import socket
from collections.abc import AsyncIterator
from urllib.parse import parse_qs

import aiohttp
import pytest

from tests.sinks import SmsSink
from worker.channels import (
    Outgoing,
    PermanentDeliveryError,
    TransientDeliveryError,
    idempotency_key,
)
from worker.channels.sms import TwilioSender, WebhookSender, http_session

MESSAGE = Outgoing(
    channel="sms",
    event_id="evt-sms-1",
    status="out_for_delivery",
    locale="vi",
    address="+84901234567",
    recipient_name="Nguyễn Văn An",
    text="Đơn hàng #1042 sẽ đến hôm nay & cần ký nhận.",
)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    client = http_session(timeout=1.0)
    yield client
    await client.close()


async def test_webhook_posts_utf8_json_with_the_idempotency_key(
    session: aiohttp.ClientSession, sms_sink: SmsSink
) -> None:
    await WebhookSender(session, f"{sms_sink.url}/sms").send(MESSAGE)
    [request] = sms_sink.requests
    assert request.path == "/sms"
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["Idempotency-Key"] == idempotency_key("evt-sms-1", "sms")
    assert request.json == {
        "to": "+84901234567",
        "body": "Đơn hàng #1042 sẽ đến hôm nay & cần ký nhận.",
        "event_id": "evt-sms-1",
        "status": "out_for_delivery",
        "locale": "vi",
    }


async def test_twilio_posts_the_form_with_basic_auth(
    session: aiohttp.ClientSession, sms_sink: SmsSink
) -> None:
    sender = TwilioSender(session, sms_sink.url, "AC123", "s3cret", "+15005550006")
    await sender.send(MESSAGE)
    [request] = sms_sink.requests
    assert request.path == "/2010-04-01/Accounts/AC123/Messages.json"
    assert request.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert request.headers["Authorization"] == "Basic " + base64.b64encode(b"AC123:s3cret").decode()
    form = parse_qs(request.body.decode())
    assert form == {"To": ["+84901234567"], "From": ["+15005550006"], "Body": [MESSAGE.text]}


async def test_keep_alive_reuses_connections(
    session: aiohttp.ClientSession, sms_sink: SmsSink
) -> None:
    sender = WebhookSender(session, f"{sms_sink.url}/sms")
    for _ in range(20):
        await sender.send(MESSAGE)
    assert len(sms_sink.requests) == 20
    assert len({r.headers.get("Connection", "keep-alive") for r in sms_sink.requests}) == 1
    assert sms_sink.connections == 1


async def test_the_pool_opens_at_most_pool_size_connections(sms_sink: SmsSink) -> None:
    """Twelve SMS at once over a pool of three connections all arrive, over three connections."""
    client = http_session(timeout=5.0, pool_size=3)
    try:
        sender = WebhookSender(client, f"{sms_sink.url}/sms")
        await asyncio.gather(*(sender.send(MESSAGE) for _ in range(12)))
    finally:
        await client.close()
    assert len(sms_sink.requests) == 12
    assert sms_sink.connections == 3


@pytest.mark.parametrize("reply", [429, 500, 503])
async def test_throttling_and_server_errors_are_transient(
    session: aiohttp.ClientSession, sms_sink: SmsSink, reply: int
) -> None:
    sms_sink.faults.count, sms_sink.faults.reply = 1, reply
    sender = WebhookSender(session, f"{sms_sink.url}/sms")
    with pytest.raises(TransientDeliveryError, match=f"answered {reply}"):
        await sender.send(MESSAGE)
    await sender.send(MESSAGE)  # the connection is still usable after the error reply
    assert len(sms_sink.requests) == 1


@pytest.mark.parametrize("reply", [400, 401, 302])
async def test_refusals_and_redirects_are_permanent_with_the_provider_code(
    session: aiohttp.ClientSession, sms_sink: SmsSink, reply: int
) -> None:
    sms_sink.faults.count, sms_sink.faults.reply = 1, reply
    sender = WebhookSender(session, f"{sms_sink.url}/sms")
    with pytest.raises(PermanentDeliveryError) as raised:
        await sender.send(MESSAGE)
    assert str(raised.value) == f"SMS provider refused with {reply} (provider code 20003)"
    assert sms_sink.requests == []


async def test_connection_refused_is_transient(session: aiohttp.ClientSession) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sender = WebhookSender(session, f"http://127.0.0.1:{port}/sms")
    with pytest.raises(TransientDeliveryError, match="unreachable"):
        await sender.send(MESSAGE)


async def test_a_provider_slower_than_the_timeout_is_transient(
    session: aiohttp.ClientSession, sms_sink: SmsSink
) -> None:
    sms_sink.faults.delay = 1.5  # the session's timeout is 1 s
    sender = WebhookSender(session, f"{sms_sink.url}/sms")
    with pytest.raises(TransientDeliveryError, match="unreachable"):
        await sender.send(MESSAGE)
