"""SMS through an HTTP provider with a shared ``httpx.AsyncClient``.

``TwilioSender`` posts Twilio's form (``To``, ``From``, ``Body``) with basic auth;
``WebhookSender`` posts JSON ``{to, body, event_id, status, locale}`` to a local gateway.
Both send an ``Idempotency-Key`` stable per event, so a gateway that honours it drops repeats.
"""

from __future__ import annotations

from typing import Any

import httpx

from worker.channels import (
    Outgoing,
    PermanentDeliveryError,
    TransientDeliveryError,
    idempotency_key,
)


class _HttpSender:
    def __init__(self, client: httpx.AsyncClient) -> None:
        self._client = client

    async def _post(self, url: str, message: Outgoing, **kwargs: Any) -> None:
        headers = {"Idempotency-Key": idempotency_key(message.event_id, "sms")}
        try:
            response = await self._client.post(url, headers=headers, **kwargs)
        except httpx.HTTPError as exc:
            raise TransientDeliveryError(f"SMS provider unreachable: {exc!r}") from exc
        if response.status_code == 429 or response.status_code >= 500:
            raise TransientDeliveryError(f"SMS provider answered {response.status_code}")
        if not 200 <= response.status_code < 300:  # a redirect is not an accepted SMS either
            raise PermanentDeliveryError(
                f"SMS provider refused with {response.status_code}{_provider_code(response)}"
            )

    async def close(self) -> None:
        await self._client.aclose()


class TwilioSender(_HttpSender):
    def __init__(
        self, client: httpx.AsyncClient, api_url: str, account_sid: str, token: str, sender: str
    ) -> None:
        super().__init__(client)
        self._url = f"{api_url}/2010-04-01/Accounts/{account_sid}/Messages.json"
        self._auth = httpx.BasicAuth(account_sid, token)
        self._from = sender

    async def send(self, message: Outgoing) -> None:
        form = {"To": message.address, "From": self._from, "Body": message.text}
        await self._post(self._url, message, data=form, auth=self._auth)


class WebhookSender(_HttpSender):
    def __init__(self, client: httpx.AsyncClient, url: str) -> None:
        super().__init__(client)
        self._url = url

    async def send(self, message: Outgoing) -> None:
        payload = {
            "to": message.address,
            "body": message.text,
            "event_id": message.event_id,
            "status": message.status,
            "locale": message.locale,
        }
        await self._post(self._url, message, json=payload)


def _provider_code(response: httpx.Response) -> str:
    """Twilio's numeric error code, when the body has one (its message may quote the number,
    so it is left out)."""
    try:
        body = response.json()
    except ValueError:
        return ""
    code = body.get("code") if isinstance(body, dict) else None
    return f" (provider code {code})" if isinstance(code, int | str) else ""
