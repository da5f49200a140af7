"""SMS through an HTTP provider, over one shared ``aiohttp.ClientSession`` (keep-alive pool).

``TwilioSender`` posts Twilio's form (``To``, ``From``, ``Body``) with basic auth;
``WebhookSender`` posts JSON ``{to, body, event_id, status, locale}`` to a local gateway.
Both send an ``Idempotency-Key`` stable per event, so a gateway that honours it drops repeats.

aiohttp rather than httpx: on this hot path httpx/httpcore cost about 3 ms of CPU per request
with 64 requests in flight on one pool, aiohttp 0.1-0.2 ms (``bench/micro.py``).
"""

from __future__ import annotations

import base64
import json

import aiohttp

from worker.channels import (
    Outgoing,
    PermanentDeliveryError,
    TransientDeliveryError,
    idempotency_key,
)


def http_session(timeout: float, pool_size: int = 100) -> aiohttp.ClientSession:
    """The pool every SMS sender shares: at most ``pool_size`` connections. Waiting for a free
    pooled connection is not the provider failing, so it has no timeout (``MAX_IN_FLIGHT``
    bounds the waiters); connecting and each read wait at most ``timeout`` seconds. Call from
    a running event loop."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=pool_size, limit_per_host=pool_size),
        timeout=aiohttp.ClientTimeout(
            total=None, connect=None, sock_connect=timeout, sock_read=timeout
        ),
        raise_for_status=False,
    )


class _HttpSender:
    def __init__(self, session: aiohttp.ClientSession) -> None:
        self._session = session

    async def _post(
        self, url: str, message: Outgoing, data: bytes | dict[str, str], headers: dict[str, str]
    ) -> None:
        headers = {"Idempotency-Key": idempotency_key(message.event_id, "sms"), **headers}
        try:
            async with self._session.post(
                url, data=data, headers=headers, allow_redirects=False
            ) as response:
                status = response.status
                body = await response.read()
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise TransientDeliveryError(f"SMS provider unreachable: {exc!r}") from exc
        if status == 429 or status >= 500:
            raise TransientDeliveryError(f"SMS provider answered {status}")
        if not 200 <= status < 300:  # a redirect is not an accepted SMS either
            raise PermanentDeliveryError(
                f"SMS provider refused with {status}{_provider_code(body)}"
            )

    async def close(self) -> None:
        await self._session.close()


class TwilioSender(_HttpSender):
    def __init__(
        self,
        session: aiohttp.ClientSession,
        api_url: str,
        account_sid: str,
        token: str,
        sender: str,
    ) -> None:
        super().__init__(session)
        self._url = f"{api_url}/2010-04-01/Accounts/{account_sid}/Messages.json"
        credentials = base64.b64encode(f"{account_sid}:{token}".encode()).decode()
        self._authorization = {"Authorization": f"Basic {credentials}"}
        self._from = sender

    async def send(self, message: Outgoing) -> None:
        form = {"To": message.address, "From": self._from, "Body": message.text}
        await self._post(self._url, message, data=form, headers=self._authorization)


class WebhookSender(_HttpSender):
    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        super().__init__(session)
        self._url = url

    async def send(self, message: Outgoing) -> None:
        payload = {
            "to": message.address,
            "body": message.text,
            "event_id": message.event_id,
            "status": message.status,
            "locale": message.locale,
        }
        body = json.dumps(payload, ensure_ascii=False).encode()
        headers = {"Content-Type": "application/json"}
        await self._post(self._url, message, data=body, headers=headers)


def _provider_code(body: bytes) -> str:
    """Twilio's numeric error code, when the body has one (its message may quote the number,
    so it is left out)."""
    try:
        parsed = json.loads(body)
    except ValueError:
        return ""
    code = parsed.get("code") if isinstance(parsed, dict) else None
    return f" (provider code {code})" if isinstance(code, int | str) else ""
