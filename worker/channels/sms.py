"""SMS through an HTTP provider, over one shared ``http.HttpClient`` (keep-alive pool).

``TwilioSender`` posts Twilio's form (``To``, ``From``, ``Body``) with basic auth;
``WebhookSender`` posts JSON ``{to, body, event_id, status, locale}`` to a local gateway.
Both send an ``Idempotency-Key`` stable per event, so a gateway that honours it drops repeats.

The client is the worker's own small one (``worker/channels/http.py`` says why): with 64
requests in flight on one pool, httpx/httpcore cost about 3 ms of CPU per request, aiohttp
80-110 us and it 20-30 us, depending on the machine's day (``bench/micro.py``).
"""

from __future__ import annotations

import base64
import json
import re
import time
from urllib.parse import urlencode

from worker.channels import (
    Outgoing,
    PermanentDeliveryError,
    ProviderThrottled,
    RecipientOptedOut,
    TransientDeliveryError,
    idempotency_key,
)
from worker.channels.http import HttpClient, HttpError, parse_url, retry_after_seconds

# a provider's error object is a few hundred bytes: a larger refusal is not parsed for its code
MAX_PARSED_BODY = 16 * 1024
# a code as providers give them (Twilio's 21211, a gateway's "invalid_number"): short, and with
# too few digits to be a phone number, since the text goes to logs and dead letters
_CODE = re.compile(r"[0-9]{1,6}|[A-Za-z][A-Za-z_.-]{0,31}[0-9]{0,6}")
# the codes of a refusal because the recipient opted out: Twilio's 21610 ("Attempt to send to
# unsubscribed recipient", after a STOP reply), and the words a webhook gateway answers with
OPTED_OUT_CODES = frozenset({"21610", "opted_out", "unsubscribed"})


def http_client(timeout: float, pool_size: int = 100) -> HttpClient:
    """The pool every SMS sender shares: at most ``pool_size`` connections. Waiting for a free
    pooled connection is not the provider failing, so it has no timeout (``MAX_IN_FLIGHT``
    bounds the waiters); connecting, and the whole response once the request is written,
    each take at most ``timeout`` seconds. Call from a running event loop."""
    return HttpClient(timeout=timeout, pool_size=pool_size)


class _HttpSender:
    def __init__(self, client: HttpClient) -> None:
        self._client = client

    async def _post(
        self, url: str, message: Outgoing, data: bytes, headers: dict[str, str]
    ) -> str | None:
        headers = {"Idempotency-Key": idempotency_key(message.event_id, "sms"), **headers}
        try:
            response = await self._client.post(url, data, headers)
        except HttpError as exc:
            raise TransientDeliveryError(f"SMS provider unreachable: {exc}") from exc
        except ValueError as exc:  # a URL or header the client cannot send, now or ever
            raise PermanentDeliveryError(f"SMS request cannot be sent: {exc}") from exc
        status, body = response.status, response.body
        if status == 429:
            wait = retry_after_seconds(response.retry_after, time.time())
            after = f", retry after {wait:g}s" if wait is not None else ""
            raise ProviderThrottled(f"SMS provider answered 429{after}", wait)
        if status >= 500:
            raise TransientDeliveryError(f"SMS provider answered {status}")
        if not 200 <= status < 300:  # a redirect is not an accepted SMS either
            code = _provider_code(body)
            named = f" (provider code {code})" if code else ""
            if 400 <= status < 500 and code.lower() in OPTED_OUT_CODES:
                raise RecipientOptedOut(f"SMS provider refused with {status}{named}: opted out")
            raise PermanentDeliveryError(f"SMS provider refused with {status}{named}")
        return provider_id(body)

    async def close(self) -> None:
        await self._client.close()


class TwilioSender(_HttpSender):
    def __init__(
        self,
        client: HttpClient,
        api_url: str,
        account_sid: str,
        token: str,
        sender: str,
    ) -> None:
        super().__init__(client)
        self._url = f"{api_url}/2010-04-01/Accounts/{account_sid}/Messages.json"
        parse_url(self._url)  # a SID that makes it unsendable fails here, not on every SMS
        credentials = base64.b64encode(f"{account_sid}:{token}".encode()).decode()
        self._form_headers = {
            "Authorization": f"Basic {credentials}",
            "Content-Type": "application/x-www-form-urlencoded",
        }
        self._from = sender

    async def send(self, message: Outgoing) -> str | None:
        form = urlencode({"To": message.address, "From": self._from, "Body": message.text})
        return await self._post(self._url, message, form.encode(), self._form_headers)


class WebhookSender(_HttpSender):
    def __init__(self, client: HttpClient, url: str) -> None:
        super().__init__(client)
        self._url = url

    async def send(self, message: Outgoing) -> str | None:
        payload = {
            "to": message.address,
            "body": message.text,
            "event_id": message.event_id,
            "status": message.status,
            "locale": message.locale,
        }
        body = json.dumps(payload, ensure_ascii=False).encode()
        headers = {"Content-Type": "application/json"}
        return await self._post(self._url, message, body, headers)


# a provider's message id as providers give them (Twilio's "SM" and 32 hex digits, a gateway's
# UUID): short, printable, no spaces, as it goes to the notification log and terminals
_MESSAGE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}")


def provider_id(body: bytes) -> str | None:
    """The id the provider gave the accepted SMS: ``sid`` (Twilio), else ``id`` or
    ``message_id`` of a small JSON object; None when the body has none it would be safe to
    show. Nothing in the body raises: the SMS is accepted whatever it says."""
    if len(body) > MAX_PARSED_BODY:
        return None
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError):
        return None
    if not isinstance(parsed, dict):
        return None
    for name in ("sid", "id", "message_id"):
        value = parsed.get(name)
        if type(value) is str and _MESSAGE_ID.fullmatch(value):
            return value
    return None


def _provider_code(body: bytes) -> str:
    """The provider's error code, when the body is a small JSON object with one (its message
    may quote the number, so it is left out), else "". Nothing in the body raises: it only
    decides whether the text names a code."""
    if len(body) > MAX_PARSED_BODY:
        return ""
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError):  # not JSON, or nested deeper than the parser goes
        return ""
    code = parsed.get("code") if isinstance(parsed, dict) else None
    if type(code) is int or type(code) is str:  # not True, whose type is a subclass of int
        text = str(code)
        return text if _CODE.fullmatch(text) else ""
    return ""
