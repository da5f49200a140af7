"""How every Kafka client of the project connects: ``connection_kwargs`` turns the settings into
aiokafka's keyword arguments (TLS with host-name verification, SASL, OAUTHBEARER tokens), and
``wait_for_broker`` is the bounded start-up check each command runs before building clients.

``wait_for_broker`` connects to the bootstrap servers as the clients will (TLS handshake, SASL
authentication, one Metadata request). Until one answers it retries with backoff, logging each
try, for at most ``KAFKA_CONNECT_TIMEOUT``; a broker that answers and refuses is final at once.
Its errors, by what happens next::

    KafkaUnavailable           one line naming KAFKA_BOOTSTRAP_SERVERS and the cause
     ├── BrokerUnreachable     exit 1: nothing answered in time (refused, timed out, no TLS ...)
     └── BrokerRefused         exit 2: the configuration is wrong: authentication failed,
                               certificate not trusted, host name mismatch, client certificate
                               rejected, token endpoint refused the client
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any, Protocol

from aiokafka.conn import create_conn
from aiokafka.errors import (
    IllegalSaslStateError,
    KafkaConnectionError,
    KafkaError,
    SaslAuthenticationFailed,
    UnsupportedSaslMechanismError,
)
from aiokafka.protocol.metadata import MetadataRequest

from worker.logs import get_logger
from worker.oauth import ClientCredentialsTokens, MskIamTokens, TokenRequestFailed
from worker.retry import Backoff
from worker.settings import KafkaOAuthProvider, KafkaSaslMechanism, KafkaSettings

log = get_logger(__name__)

CONNECT_BACKOFF = Backoff(0.5, 5.0)
PROBE_TIMEOUT = 10.0  # one try at one bootstrap server
# OpenSSL's X509_V_ERR_HOSTNAME_MISMATCH and X509_V_ERR_IP_ADDRESS_MISMATCH
HOST_MISMATCH_CODES = frozenset({62, 64})
REFUSED_SASL = (SaslAuthenticationFailed, IllegalSaslStateError, UnsupportedSaslMechanismError)


class KafkaUnavailable(Exception):
    """Start-up cannot reach a usable broker; ``str()`` is the one line an operator reads."""

    exit_code = 1


class BrokerUnreachable(KafkaUnavailable):
    """No bootstrap server answered within ``KAFKA_CONNECT_TIMEOUT``."""


class BrokerRefused(KafkaUnavailable):
    """A broker answered and refused these settings: retrying cannot help."""

    exit_code = 2


def connection_kwargs(settings: KafkaSettings) -> dict[str, Any]:
    """aiokafka's connection arguments for these settings (for any client class)."""
    kwargs: dict[str, Any] = {
        "bootstrap_servers": settings.bootstrap_servers,
        "security_protocol": str(settings.security_protocol),
    }
    if settings.uses_tls:
        kwargs["ssl_context"] = ssl_context(settings)
    mechanism = settings.sasl_mechanism
    if mechanism is None:
        return kwargs
    kwargs["sasl_mechanism"] = str(mechanism)
    if mechanism is KafkaSaslMechanism.OAUTHBEARER:
        kwargs["sasl_oauth_token_provider"] = token_provider(settings)
    else:
        assert settings.sasl_username and settings.sasl_password  # checked by the settings
        kwargs["sasl_plain_username"] = settings.sasl_username
        kwargs["sasl_plain_password"] = settings.sasl_password.get_secret_value()
    return kwargs


def ssl_context(settings: KafkaSettings) -> ssl.SSLContext:
    """Verifies the broker against KAFKA_SSL_CA_FILE (else the system's CAs) and its host name;
    presents the client certificate when one is set (mTLS)."""
    context = ssl.create_default_context(cafile=settings.ssl_ca_file)
    if settings.ssl_cert_file and settings.ssl_key_file:
        secret = settings.ssl_key_password
        # "" rather than None: an encrypted key without its password fails instead of prompting
        password = secret.get_secret_value() if secret else ""
        context.load_cert_chain(settings.ssl_cert_file, settings.ssl_key_file, password)
    return context


def token_provider(settings: KafkaSettings) -> ClientCredentialsTokens | MskIamTokens:
    if settings.oauth_provider is KafkaOAuthProvider.AWS_MSK_IAM:
        assert settings.aws_region  # checked by the settings
        return MskIamTokens(settings.aws_region)
    assert settings.oauth_token_url and settings.oauth_client_id and settings.oauth_client_secret
    return ClientCredentialsTokens(
        settings.oauth_token_url,
        settings.oauth_client_id,
        settings.oauth_client_secret,
        settings.oauth_scope,
    )


class _Startable(Protocol):
    async def start(self) -> None: ...


async def start(client: _Startable, settings: KafkaSettings) -> None:
    """``client.start()``, a failure reported like ``wait_for_broker``'s (the broker may go
    away between that check and this)."""
    try:
        await client.start()
    except (KafkaError, OSError) as exc:
        raise _failure(settings, exc, "the client could not start") from exc


async def wait_for_broker(settings: KafkaSettings) -> None:
    """Return once a bootstrap server accepts these settings; see the module docstring."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + settings.connect_timeout
    kwargs = connection_kwargs(settings)
    hosts = kwargs.pop("bootstrap_servers").split(",")
    attempt = 0
    error: BaseException | None = None
    while True:
        attempt += 1
        try:
            async with asyncio.timeout(max(0.0, deadline - loop.time())):
                await _probe_any(hosts, kwargs, settings.client_id)
            return
        except TimeoutError as exc:
            error = error or exc  # a try cut short by the deadline says less than the last one
        except (KafkaError, OSError) as exc:
            if _refusal(exc):
                raise _failure(settings, exc) from None
            error = exc
        left = deadline - loop.time()
        assert error is not None
        if left <= 0:
            within = f"no broker answered within {settings.connect_timeout:g} s ({attempt} tries)"
            raise _failure(settings, error, within) from None
        delay = min(CONNECT_BACKOFF.delay(attempt), left)
        log.warning(
            "kafka_connect_retry", attempt=attempt, error=_cause(error), retry_in=round(delay, 2)
        )
        await asyncio.sleep(delay)


async def _probe_any(hosts: list[str], kwargs: dict[str, Any], client_id: str) -> None:
    """Connect, authenticate and ask for metadata at each host in turn until one answers;
    else raise the most telling error (a refusal before anything else)."""
    errors: list[BaseException] = []
    for host in hosts:
        name, _, port = host.rpartition(":")
        try:
            async with asyncio.timeout(PROBE_TIMEOUT):
                conn = await create_conn(name, int(port), client_id=f"{client_id}-probe", **kwargs)
                try:
                    await conn.send(MetadataRequest([]))
                finally:
                    conn.close()
            return
        except (KafkaError, OSError, TimeoutError) as exc:
            errors.append(exc)
    raise next((e for e in errors if _refusal(e)), errors[-1])


def _failure(settings: KafkaSettings, exc: BaseException, prefix: str = "") -> KafkaUnavailable:
    kind = BrokerRefused if _refusal(exc) else BrokerUnreachable
    cause = _refusal(exc) or _cause(exc)
    text = f"{prefix}: {cause}" if prefix else cause
    return kind(f"KAFKA_BOOTSTRAP_SERVERS={settings.bootstrap_servers}: {text}")


def _refusal(exc: BaseException) -> str | None:
    """What a broker (or token endpoint) that answered and refused means, else None."""
    for error in _chain(exc):
        if isinstance(error, ssl.SSLCertVerificationError):
            if error.verify_code in HOST_MISMATCH_CODES:
                return f"host name mismatch: {error.verify_message}"
            return f"certificate not trusted: {error.verify_message} (KAFKA_SSL_CA_FILE)"
        if isinstance(error, ssl.SSLError) and "ALERT" in (error.reason or ""):
            return (
                f"the broker rejected the TLS client certificate ({error.reason}; "
                "KAFKA_SSL_CERT_FILE)"
            )
        if isinstance(error, REFUSED_SASL):
            said = " ".join(str(error).split())[:160] or type(error).__name__
            return f"authentication failed: {said} (KAFKA_SASL_*)"
        if isinstance(error, TokenRequestFailed) and not error.retriable:
            return f"authentication failed: {error.args[0]} (KAFKA_OAUTH_*)"
    return None


def _cause(exc: BaseException) -> str:
    """A short description of a failed try, without any setting's value."""
    for error in _chain(exc):
        if isinstance(error, ConnectionRefusedError):
            return "connection refused"
        if isinstance(error, ConnectionResetError):
            return "connection reset by the broker"
        if isinstance(error, ssl.SSLError):
            return f"TLS handshake failed: {error.reason or error} (is the listener TLS?)"
        if isinstance(error, TokenRequestFailed):
            return str(error.args[0])
        if isinstance(error, OSError) and error.strerror:
            return error.strerror.lower()
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, KafkaConnectionError):
        return "connection closed by the broker"
    return f"{type(exc).__name__}: {exc}"


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen
