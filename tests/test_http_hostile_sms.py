"""The SMS senders against a hostile provider on loopback (a raw TCP server writing scripted
bytes): whatever the body of a refusal, classifying it raises only the channel's errors, and
their texts quote neither the recipient's number nor the provider's free text."""

from __future__ import annotations

import asyncio
import json

import pytest

from tests.test_http_hostile import Hostile, HostileServer
from worker.channels import Outgoing, PermanentDeliveryError
from worker.channels.http import HttpClient
from worker.channels.sms import MAX_PARSED_BODY, WebhookSender

MESSAGE = Outgoing(
    channel="sms",
    event_id="evt-hostile-1",
    status="delivery_failed",
    locale="en",
    address="+84901234567",
    recipient_name=None,
    text="Your parcel could not be delivered.",
)


def _refusal(body: bytes, status: int = 400) -> Hostile:
    head = b"HTTP/1.1 %d Bad Request\r\nContent-Length: %d\r\n\r\n" % (status, len(body))
    return Hostile(head + body)


async def _refuse(body: bytes) -> PermanentDeliveryError:
    scripted = HostileServer(_refusal(body))
    server = await asyncio.start_server(scripted.serve, "127.0.0.1", 0)
    scripted.port = server.sockets[0].getsockname()[1]
    client = HttpClient(timeout=5.0, pool_size=1)
    try:
        sender = WebhookSender(client, scripted.url)
        with pytest.raises(PermanentDeliveryError) as raised:
            await sender.send(MESSAGE)
        await sender.send(MESSAGE)  # the sender and its pool go on
    finally:
        await client.close()
        server.close()
    return raised.value


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 50_000,
        b'{"a":' * 50_000,
        b'{"code": 21211, "more": ' + b"[" * 5_000 + b"]" * 5_000 + b"}",
        b'{"code": 1' + b"0" * 5_000 + b"}",
        b"\xff\xfe{",
        b"",
    ],
    ids=["nested-lists", "nested-objects", "nested-beside-a-code", "huge-int", "not-utf8", "empty"],
)
async def test_a_refusal_with_any_body_is_a_permanent_error_without_a_code(body: bytes) -> None:
    """A 4xx whose body is not a small well-formed JSON object with a code is refused with the
    status alone, never an exception of the parser."""
    error = await _refuse(body)
    assert str(error) == "SMS provider refused with 400"


async def test_a_well_formed_refusal_keeps_the_provider_code() -> None:
    """Twilio's error object gives its numeric code, and the text leaves its message out."""
    body = {
        "code": 21211,
        "message": "The 'To' number +84901234567 is not a valid phone number.",
        "more_info": "https://www.twilio.com/docs/errors/21211",
        "status": 400,
    }
    error = await _refuse(json.dumps(body).encode())
    assert str(error) == "SMS provider refused with 400 (provider code 21211)"


@pytest.mark.parametrize(
    "code",
    [
        "+84901234567",
        "84901234567",
        84901234567,
        "invalid number +84901234567",
        "\x1b[2J\x1b[31mcleared",
        "a\nforged_log_line",
        True,
        "x" * 200,
    ],
    ids=["number", "digits", "int-number", "sentence", "escapes", "newline", "bool", "long"],
)
async def test_a_code_that_is_not_a_short_code_is_left_out(code: object) -> None:
    """A "code" that could quote the recipient's number, or carry control characters or free
    text, does not reach the error text."""
    error = await _refuse(json.dumps({"code": code}).encode())
    assert str(error) == "SMS provider refused with 400"


@pytest.mark.parametrize("code", ["invalid_number", "E21211", "21211"])
async def test_a_gateway_code_as_a_short_word_is_kept(code: str) -> None:
    """A webhook gateway's code may be a short identifier rather than a number."""
    error = await _refuse(json.dumps({"code": code}).encode())
    assert str(error) == f"SMS provider refused with 400 (provider code {code})"


async def test_a_body_over_the_parse_bound_is_not_parsed() -> None:
    """Only a body of at most MAX_PARSED_BODY bytes is parsed, so a refusal costs the loop
    little whatever its size (a provider's error object is a few hundred bytes)."""
    padding = "x" * MAX_PARSED_BODY
    error = await _refuse(json.dumps({"code": 21211, "message": padding}).encode())
    assert str(error) == "SMS provider refused with 400"
