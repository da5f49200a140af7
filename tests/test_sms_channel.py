"""The SMS senders against a real HTTP server on loopback: what the provider receives, and how
each answer is classified (transient: retry later; permanent: dead-letter the channel)."""

from __future__ import annotations

import asyncio
import base64
import socket
import ssl
from collections.abc import AsyncIterator, Iterator
from urllib.parse import parse_qs

import pytest
import trustme

from tests.sinks import SmsSink
from worker.channels import (
    Outgoing,
    PermanentDeliveryError,
    TransientDeliveryError,
    idempotency_key,
)
from worker.channels.http import HttpClient
from worker.channels.sms import TwilioSender, WebhookSender, http_client

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
async def session() -> AsyncIterator[HttpClient]:
    client = http_client(timeout=1.0)
    yield client
    await client.close()


async def test_webhook_posts_utf8_json_with_the_idempotency_key(
    session: HttpClient, sms_sink: SmsSink
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
    session: HttpClient, sms_sink: SmsSink
) -> None:
    sender = TwilioSender(session, sms_sink.url, "AC123", "s3cret", "+15005550006")
    await sender.send(MESSAGE)
    [request] = sms_sink.requests
    assert request.path == "/2010-04-01/Accounts/AC123/Messages.json"
    assert request.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert request.headers["Authorization"] == "Basic " + base64.b64encode(b"AC123:s3cret").decode()
    form = parse_qs(request.body.decode())
    assert form == {"To": ["+84901234567"], "From": ["+15005550006"], "Body": [MESSAGE.text]}


async def test_keep_alive_reuses_connections(session: HttpClient, sms_sink: SmsSink) -> None:
    sender = WebhookSender(session, f"{sms_sink.url}/sms")
    for _ in range(20):
        await sender.send(MESSAGE)
    assert len(sms_sink.requests) == 20
    assert len({r.headers.get("Connection", "keep-alive") for r in sms_sink.requests}) == 1
    assert sms_sink.connections == 1


async def test_the_pool_opens_at_most_pool_size_connections(sms_sink: SmsSink) -> None:
    """Twelve SMS at once over a pool of three connections all arrive, over three connections."""
    client = http_client(timeout=5.0, pool_size=3)
    try:
        sender = WebhookSender(client, f"{sms_sink.url}/sms")
        await asyncio.gather(*(sender.send(MESSAGE) for _ in range(12)))
    finally:
        await client.close()
    assert len(sms_sink.requests) == 12
    assert sms_sink.connections == 3


@pytest.mark.parametrize("reply", [429, 500, 503])
async def test_throttling_and_server_errors_are_transient(
    session: HttpClient, sms_sink: SmsSink, reply: int
) -> None:
    sms_sink.faults.count, sms_sink.faults.reply = 1, reply
    sender = WebhookSender(session, f"{sms_sink.url}/sms")
    with pytest.raises(TransientDeliveryError, match=f"answered {reply}"):
        await sender.send(MESSAGE)
    await sender.send(MESSAGE)  # the connection is still usable after the error reply
    assert len(sms_sink.requests) == 1


@pytest.mark.parametrize("reply", [400, 401, 302])
async def test_refusals_and_redirects_are_permanent_with_the_provider_code(
    session: HttpClient, sms_sink: SmsSink, reply: int
) -> None:
    sms_sink.faults.count, sms_sink.faults.reply = 1, reply
    sender = WebhookSender(session, f"{sms_sink.url}/sms")
    with pytest.raises(PermanentDeliveryError) as raised:
        await sender.send(MESSAGE)
    assert str(raised.value) == f"SMS provider refused with {reply} (provider code 20003)"
    assert sms_sink.requests == []


async def test_connection_refused_is_transient(session: HttpClient) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sender = WebhookSender(session, f"http://127.0.0.1:{port}/sms")
    with pytest.raises(TransientDeliveryError, match="unreachable"):
        await sender.send(MESSAGE)


async def test_a_provider_slower_than_the_timeout_is_transient(
    session: HttpClient, sms_sink: SmsSink
) -> None:
    sms_sink.faults.delay = 1.5  # the session's timeout is 1 s
    sender = WebhookSender(session, f"{sms_sink.url}/sms")
    with pytest.raises(TransientDeliveryError, match="unreachable"):
        await sender.send(MESSAGE)


@pytest.fixture
def tls_sms_sink() -> Iterator[tuple[SmsSink, trustme.CA]]:
    """An https SMS provider on loopback whose certificate a test CA issued."""
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    sink = SmsSink(tls=server_context).start()
    try:
        yield sink, ca
    finally:
        sink.stop()


async def test_an_https_provider_gets_the_sms_over_a_verified_connection(
    tls_sms_sink: tuple[SmsSink, trustme.CA],
) -> None:
    sink, ca = tls_sms_sink
    trusting = ssl.create_default_context()
    ca.configure_trust(trusting)
    client = HttpClient(timeout=5.0, pool_size=2, ssl_context=trusting)
    try:
        await TwilioSender(client, sink.url, "AC123", "s3cret", "+15005550006").send(MESSAGE)
    finally:
        await client.close()
    [request] = sink.requests
    assert parse_qs(request.body.decode())["Body"] == [MESSAGE.text]


async def test_an_https_provider_with_an_untrusted_certificate_is_unreachable(
    tls_sms_sink: tuple[SmsSink, trustme.CA],
) -> None:
    """The default context (system CAs) refuses the test CA's certificate: nothing is sent."""
    sink, _ = tls_sms_sink
    client = http_client(timeout=5.0)
    try:
        sender = WebhookSender(client, f"{sink.url}/sms")
        with pytest.raises(TransientDeliveryError, match="CERTIFICATE_VERIFY_FAILED"):
            await sender.send(MESSAGE)
    finally:
        await client.close()
    assert sink.requests == []


def test_a_twilio_account_sid_that_makes_the_url_unsendable_is_refused_up_front() -> None:
    """The SID goes into the URL's path: one the client could not send fails at start-up."""
    with pytest.raises(ValueError, match="percent-encoded"):
        TwilioSender(
            HttpClient(timeout=1.0, pool_size=1), "https://api.twilio.com", "AC 1", "t", "+1"
        )
