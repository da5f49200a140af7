"""OAUTHBEARER tokens for the Kafka clients (aiokafka asks ``token()`` at every SASL handshake).

- ``ClientCredentialsTokens``: the OAuth 2.0 client-credentials grant at an OIDC token endpoint
  (``KAFKA_OAUTH_TOKEN_URL``), client id and secret sent with HTTP Basic as RFC 6749 2.3.1 says.
  A token is reused until most of its lifetime has passed, then fetched anew, so a connection
  made at any time presents a token that is still valid for a while.
- ``MskIamTokens``: Amazon MSK IAM, signed locally by ``aws-msk-iam-sasl-signer-python`` (the
  optional extra ``msk-iam``) from the usual AWS credential chain.

A token request that fails raises ``TokenRequestFailed``, a ``KafkaError`` so that aiokafka
treats it like any other failed connection; ``retriable`` is false when the endpoint refused the
client (retrying cannot help). Neither the secret nor a token ever goes into a log line or an
error message.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from urllib.parse import quote

import httpx
from aiokafka.abc import AbstractTokenProvider
from aiokafka.errors import KafkaError
from pydantic import BaseModel, Field, SecretStr, ValidationError

from worker.logs import get_logger

log = get_logger(__name__)

REFRESH_AT = 0.8  # share of a token's lifetime after which the next connection gets a new one
DEFAULT_LIFETIME = 300.0  # seconds, when the endpoint does not say (expires_in is optional)
REQUEST_TIMEOUT = 10.0
REFUSED = frozenset({400, 401, 403})  # RFC 6749 5.2: the client or the grant is not accepted


class TokenRequestFailed(KafkaError):  # type: ignore[misc]  # aiokafka has no type hints
    """The token endpoint refused the client (``retriable`` false) or could not be reached."""

    def __init__(self, message: str, *, retriable: bool) -> None:
        super().__init__(message)
        self.retriable = retriable


class _TokenResponse(BaseModel):
    access_token: str = Field(min_length=1)
    token_type: str = "Bearer"
    expires_in: float | None = Field(None, gt=0)


class ClientCredentialsTokens(AbstractTokenProvider):  # type: ignore[misc]
    """Tokens from an OIDC token endpoint by the client-credentials grant, cached and
    refreshed once ``REFRESH_AT`` of their lifetime has passed."""

    def __init__(
        self,
        token_url: str,
        client_id: str,
        client_secret: SecretStr,
        scope: str | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._url = token_url
        self._auth = (quote(client_id, safe=""), client_secret)
        self._scope = scope
        self._clock = clock
        self._token: str | None = None
        self._refresh_at = 0.0
        self._lock = asyncio.Lock()

    async def token(self) -> str:
        async with self._lock:  # connections opened together share one request
            if self._token is None or self._clock() >= self._refresh_at:
                started = self._clock()
                fetched = await self._request()
                lifetime = fetched.expires_in or DEFAULT_LIFETIME
                self._token = fetched.access_token
                self._refresh_at = started + lifetime * REFRESH_AT
                log.info("kafka_oauth_token_fetched", expires_in=lifetime)
            return self._token

    async def _request(self) -> _TokenResponse:
        form = {"grant_type": "client_credentials"}
        if self._scope:
            form["scope"] = self._scope
        user, secret = self._auth
        try:
            async with httpx.AsyncClient(timeout=REQUEST_TIMEOUT) as client:
                response = await client.post(
                    self._url, data=form, auth=(user, quote(secret.get_secret_value(), safe=""))
                )
        except httpx.HTTPError as exc:
            reason = f"{type(exc).__name__} {exc}".strip()
            raise TokenRequestFailed(
                f"token endpoint unreachable: {reason}", retriable=True
            ) from exc
        if response.status_code in REFUSED:
            raise TokenRequestFailed(
                f"token endpoint refused the client: HTTP {response.status_code} "
                f"{_oauth_error(response)}".rstrip(),
                retriable=False,
            )
        if response.status_code != 200:
            raise TokenRequestFailed(
                f"token endpoint answered HTTP {response.status_code}", retriable=True
            )
        try:
            return _TokenResponse.model_validate_json(response.content)
        except ValidationError as exc:
            raise TokenRequestFailed(
                "token endpoint answered without an access_token", retriable=False
            ) from exc


def _oauth_error(response: httpx.Response) -> str:
    """The ``error`` code of an RFC 6749 error answer (a fixed vocabulary, safe to show)."""
    try:
        code = response.json().get("error")
    except (ValueError, AttributeError):
        return ""
    return code if isinstance(code, str) and code.isascii() and len(code) < 64 else ""


class MskIamTokens(AbstractTokenProvider):  # type: ignore[misc]
    """Amazon MSK IAM tokens, signed locally with the AWS credentials of the environment."""

    def __init__(self, region: str) -> None:
        from aws_msk_iam_sasl_signer import MSKAuthTokenProvider

        self._region = region
        self._generate = MSKAuthTokenProvider.generate_auth_token

    async def token(self) -> str:
        try:  # botocore resolves credentials with blocking I/O
            token, _expiry_ms = await asyncio.to_thread(self._generate, self._region)
        except Exception as exc:  # botocore's errors share no base class worth naming
            raise TokenRequestFailed(
                f"MSK IAM token not signed: {type(exc).__name__}", retriable=False
            ) from exc
        return str(token)
