"""How the worker reaches Redis: one server or a Redis Cluster, over TCP or TLS, as an ACL user.

``connect`` builds the client the ``DEDUP_URL`` and the ``DEDUP_REDIS_*`` settings describe.
``rediss://`` verifies the server's certificate against ``DEDUP_REDIS_CA_FILE`` (else the
system's CAs) and its host name; a client certificate is optional. ``check`` answers at
start-up whether the server can be used at all, for a refusal that waiting will not change:

    StoreUnavailable   the credentials are refused, the certificate is not trusted, the host
                       name does not match it, the TLS handshake is refused otherwise, or the
                       server is a cluster node and DEDUP_REDIS_CLUSTER says otherwise
    StoreError         anything that may pass (nothing listening yet, a timeout, a failover):
                       waited out like any outage (``resilient``)

No message here carries a password: redis-py's errors name the host and port only.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import redis.asyncio as aioredis
import redis.exceptions
from pydantic import SecretStr
from redis.asyncio.cluster import RedisCluster

from worker.dedup.store import StoreError, StoreUnavailable

Client = aioredis.Redis | RedisCluster


class RedisOptions(Protocol):
    """What ``DedupSettings`` tells about the connection, beyond the URL."""

    @property
    def redis_cluster(self) -> bool: ...
    @property
    def redis_username(self) -> str | None: ...
    @property
    def redis_password(self) -> SecretStr | None: ...
    @property
    def redis_ca_file(self) -> Path | None: ...
    @property
    def redis_cert_file(self) -> Path | None: ...
    @property
    def redis_key_file(self) -> Path | None: ...
    @property
    def redis_timeout(self) -> float: ...


@dataclass(frozen=True, slots=True)
class UrlOnly:
    """The defaults: one server; credentials and TLS only as the URL gives them."""

    redis_cluster: bool = False
    redis_username: str | None = None
    redis_password: SecretStr | None = None
    redis_ca_file: Path | None = None
    redis_cert_file: Path | None = None
    redis_key_file: Path | None = None
    redis_timeout: float = 10.0


def connect(url: str, options: RedisOptions) -> Client:
    """The client for ``url``; it connects on its first command."""
    kwargs: dict[str, Any] = {
        "decode_responses": True,
        # a server that does not answer (a dropped SYN, a half-open connection) is a
        # StoreError after this long, not a wait without end
        "socket_connect_timeout": options.redis_timeout,
        "socket_timeout": options.redis_timeout,
    }
    if options.redis_username is not None:
        kwargs["username"] = options.redis_username
    if options.redis_password is not None:
        kwargs["password"] = options.redis_password.get_secret_value()
    if url.startswith("rediss://"):
        kwargs.update(
            ssl_cert_reqs="required",
            ssl_check_hostname=True,
            ssl_ca_certs=_str_or_none(options.redis_ca_file),
            ssl_certfile=_str_or_none(options.redis_cert_file),
            ssl_keyfile=_str_or_none(options.redis_key_file),
        )
    if options.redis_cluster:
        return RedisCluster.from_url(url, **kwargs)
    client: aioredis.Redis = aioredis.Redis.from_url(url, **kwargs)
    return client


async def check(client: Client) -> None:
    """Raise ``StoreUnavailable`` naming the cause when the server refuses this client for
    good, ``StoreError`` when it cannot be reached for now."""
    try:
        await client.ping()
        if isinstance(client, aioredis.Redis) and await _is_cluster_node(client):
            raise StoreUnavailable(
                "DEDUP_URL names a Redis Cluster node: set DEDUP_REDIS_CLUSTER=true"
            )
    except (redis.exceptions.RedisError, redis.exceptions.RedisClusterException, OSError) as exc:
        cause = refusal(exc)
        if cause is not None:
            raise StoreUnavailable(cause) from exc
        raise StoreError(f"Redis: {describe(exc)}") from exc


async def _is_cluster_node(client: aioredis.Redis) -> bool:
    """Whether one server's client was given a cluster node (its scripts would fail there)."""
    try:
        await client.cluster("MYID")
    except redis.exceptions.ResponseError:  # cluster support disabled, or not ours to ask
        return False
    return True


def refusal(exc: BaseException) -> str | None:
    """Why the server refuses this client whatever the next try, or None."""
    for link in _chain(exc):
        if isinstance(link, redis.exceptions.AuthenticationError):
            return (
                f"Redis authentication failed ({link}): check DEDUP_REDIS_USERNAME and "
                "DEDUP_REDIS_PASSWORD, or the user and password in DEDUP_URL"
            )
        if isinstance(link, ssl.SSLCertVerificationError):
            if link.verify_code == _HOSTNAME_MISMATCH:
                return f"Redis TLS host name mismatch: {link.verify_message}"
            return (
                f"Redis TLS certificate not trusted ({link.verify_message}): check "
                "DEDUP_REDIS_CA_FILE"
            )
        if isinstance(link, redis.exceptions.RedisClusterException) and _NOT_CLUSTER in str(link):
            return (
                "DEDUP_REDIS_CLUSTER is set but DEDUP_URL's server is not a Redis Cluster node "
                "(or its ACL user may not run CLUSTER SLOTS)"
            )
        if isinstance(link, ssl.SSLError) and not isinstance(link, ssl.SSLEOFError):
            return (
                f"Redis TLS handshake failed ({link.reason or link}): check "
                "DEDUP_REDIS_CERT_FILE and DEDUP_REDIS_KEY_FILE"
            )
    return None


def describe(exc: BaseException) -> str:
    """The error's class and message (redis-py's ``repr`` drops the message)."""
    return f"{type(exc).__name__}: {exc}"


_HOSTNAME_MISMATCH = 62  # X509_V_ERR_HOSTNAME_MISMATCH
_NOT_CLUSTER = "Cluster mode is not enabled"  # redis-py's words; it has no type of its own


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    link: BaseException | None = exc
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        yield link
        link = link.__cause__ or link.__context__


def _str_or_none(path: Path | None) -> str | None:
    return None if path is None else str(path)
