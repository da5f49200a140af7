"""The worker's configuration: one tree of sections, each read from its own environment variables.

Every section is a ``BaseSettings`` with an ``env_prefix``, so a field's environment variable is
``PREFIX + FIELD`` (``SMTP_PORT`` is ``SmtpSettings.port``). ``load_settings`` builds all sections,
collects every problem, and raises one ``ConfigError`` whose lines name the variable and what is
wrong with it, so start-up can stop with a message instead of a traceback.
"""

from __future__ import annotations

import importlib.util
import re
import socket
import ssl
import sys
from email.headerregistry import Address
from email.utils import parseaddr
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from worker.addresses import http_url, plain_mailbox, unsubscribe_template
from worker.cloudevents import DEFAULT_TYPES
from worker.events import Status, iana_zone
from worker.policy import parse_policy
from worker.quiet import Window
from worker.signing import read_private_key
from worker.sms_text import MAX_SEGMENTS, MAX_SEGMENTS_LIMIT


class ConfigError(Exception):
    """A setting is missing or invalid; ``problems`` holds one line per variable."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class LogFormat(StrEnum):
    JSON = "json"
    CONSOLE = "console"


class SmtpSecurity(StrEnum):
    STARTTLS = "starttls"
    TLS = "tls"
    NONE = "none"


class EventLoop(StrEnum):
    UVLOOP = "uvloop"  # libuv's loop: faster aiosmtplib round trips; a few % end to end
    ASYNCIO = "asyncio"


class SmsProvider(StrEnum):
    TWILIO = "twilio"
    WEBHOOK = "webhook"
    DISABLED = "disabled"


PositiveInt = Annotated[int, Field(gt=0)]
PositiveFloat = Annotated[float, Field(gt=0)]


class _Section(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", frozen=True)


class KafkaSecurityProtocol(StrEnum):
    PLAINTEXT = "PLAINTEXT"
    SSL = "SSL"
    SASL_PLAINTEXT = "SASL_PLAINTEXT"
    SASL_SSL = "SASL_SSL"


class KafkaSaslMechanism(StrEnum):
    PLAIN = "PLAIN"
    SCRAM_SHA_256 = "SCRAM-SHA-256"
    SCRAM_SHA_512 = "SCRAM-SHA-512"
    OAUTHBEARER = "OAUTHBEARER"


class KafkaOAuthProvider(StrEnum):
    OIDC = "oidc"  # client-credentials grant at KAFKA_OAUTH_TOKEN_URL (worker/oauth.py)
    AWS_MSK_IAM = "aws-msk-iam"  # the optional extra msk-iam (worker/oauth.py)


class _KafkaSecurity(_Section):
    """How every Kafka client of the project connects: TLS, SASL, tokens, and how long start-up
    waits for a broker. Read by ``worker/kafka_client.py``; secrets are ``SecretStr``."""

    model_config = SettingsConfigDict(env_prefix="KAFKA_")

    connect_timeout: PositiveFloat = 60.0
    security_protocol: KafkaSecurityProtocol = KafkaSecurityProtocol.PLAINTEXT
    sasl_mechanism: KafkaSaslMechanism | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_ca_file: Path | None = None
    ssl_cert_file: Path | None = None
    ssl_key_file: Path | None = None
    ssl_key_password: SecretStr | None = None
    oauth_provider: KafkaOAuthProvider = KafkaOAuthProvider.OIDC
    oauth_token_url: str | None = None
    oauth_client_id: str | None = None
    oauth_client_secret: SecretStr | None = None
    oauth_scope: str | None = None
    aws_region: str | None = Field(None, validation_alias="AWS_REGION")

    @field_validator("security_protocol", "sasl_mechanism", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("ssl_ca_file", "ssl_cert_file", "ssl_key_file")
    @classmethod
    def _readable(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError("not a readable file")
        return value

    @field_validator("oauth_token_url")
    @classmethod
    def _token_url(cls, value: str | None) -> str | None:
        if value is not None:
            http_url(value)
        return value

    @model_validator(mode="after")
    def _consistent(self) -> _KafkaSecurity:
        for problem in _kafka_security_problems(self):
            raise ValueError(problem)
        return self

    @property
    def uses_tls(self) -> bool:
        return self.security_protocol in (KafkaSecurityProtocol.SSL, KafkaSecurityProtocol.SASL_SSL)

    @property
    def uses_sasl(self) -> bool:
        return self.security_protocol in (
            KafkaSecurityProtocol.SASL_PLAINTEXT,
            KafkaSecurityProtocol.SASL_SSL,
        )


def _kafka_security_problems(kafka: _KafkaSecurity) -> list[str]:
    """What is missing or contradictory, each line naming the variable (no secret values)."""
    mechanism = kafka.sasl_mechanism
    if kafka.uses_sasl and mechanism is None:
        return [f"KAFKA_SASL_MECHANISM: KAFKA_SECURITY_PROTOCOL={kafka.security_protocol} needs it"]
    if not kafka.uses_sasl and mechanism is not None:
        return [
            "KAFKA_SASL_MECHANISM: set only with KAFKA_SECURITY_PROTOCOL=SASL_SSL or SASL_PLAINTEXT"
        ]
    tls_files = (kafka.ssl_ca_file, kafka.ssl_cert_file, kafka.ssl_key_file)
    if not kafka.uses_tls and any(tls_files):
        return ["KAFKA_SSL_*: set only with KAFKA_SECURITY_PROTOCOL=SSL or SASL_SSL"]
    if bool(kafka.ssl_cert_file) != bool(kafka.ssl_key_file):
        return ["KAFKA_SSL_CERT_FILE and KAFKA_SSL_KEY_FILE must be set together"]
    if kafka.ssl_key_password and not kafka.ssl_key_file:
        return ["KAFKA_SSL_KEY_PASSWORD: set only with KAFKA_SSL_KEY_FILE"]
    if mechanism is KafkaSaslMechanism.OAUTHBEARER:
        return _oauth_problems(kafka)
    if mechanism is not None and not (kafka.sasl_username and kafka.sasl_password):
        return [
            f"KAFKA_SASL_MECHANISM={mechanism} needs KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD"
        ]
    return _tls_problems(kafka) if kafka.uses_tls else []


def _oauth_problems(kafka: _KafkaSecurity) -> list[str]:
    if kafka.oauth_provider is KafkaOAuthProvider.AWS_MSK_IAM:
        if not kafka.aws_region:
            return ["AWS_REGION: KAFKA_OAUTH_PROVIDER=aws-msk-iam needs it"]
        if importlib.util.find_spec("aws_msk_iam_sasl_signer") is None:
            return [
                "KAFKA_OAUTH_PROVIDER=aws-msk-iam needs the msk-iam extra: "
                "pip install 'shipment-notifier[msk-iam]'"
            ]
        return _tls_problems(kafka) if kafka.uses_tls else []
    missing = [
        name
        for name, value in (
            ("KAFKA_OAUTH_TOKEN_URL", kafka.oauth_token_url),
            ("KAFKA_OAUTH_CLIENT_ID", kafka.oauth_client_id),
            ("KAFKA_OAUTH_CLIENT_SECRET", kafka.oauth_client_secret),
        )
        if not value
    ]
    if missing:
        return [f"KAFKA_SASL_MECHANISM=OAUTHBEARER needs {', '.join(missing)}"]
    return _tls_problems(kafka) if kafka.uses_tls else []


def _tls_problems(kafka: _KafkaSecurity) -> list[str]:
    """Load the CA and the client certificate now: a wrong file or key password stops start-up
    here, naming the variable, instead of failing every connection later."""
    context = ssl.create_default_context()
    try:
        if kafka.ssl_ca_file:
            context.load_verify_locations(cafile=kafka.ssl_ca_file)
    except (ssl.SSLError, OSError) as exc:
        return [f"KAFKA_SSL_CA_FILE: not a PEM CA certificate ({exc.strerror or exc})"]
    if not kafka.ssl_cert_file or not kafka.ssl_key_file:
        return []
    password = kafka.ssl_key_password.get_secret_value() if kafka.ssl_key_password else None
    try:
        context.load_cert_chain(kafka.ssl_cert_file, kafka.ssl_key_file, password or "")
    except (ssl.SSLError, OSError):
        return [
            "KAFKA_SSL_CERT_FILE, KAFKA_SSL_KEY_FILE, KAFKA_SSL_KEY_PASSWORD: the certificate "
            "and key do not load together (wrong file, key password, or a key of another "
            "certificate)"
        ]
    return []


class KafkaSettings(_KafkaSecurity):
    model_config = SettingsConfigDict(env_prefix="KAFKA_")

    bootstrap_servers: str = "localhost:9092"
    topic: str = Field("shipment-status", min_length=1, max_length=249)
    group_id: str = Field("shipment-notifier", min_length=1)
    dlq_topic: str = ""
    retry_topic: str = ""
    # the shop's opt-outs and opt-ins (docs/preferences.md); empty: no preferences topic
    preferences_topic: str = Field("", max_length=249)
    client_id: str = "shipment-notifier"
    # static membership (KIP-345): a restarted replica with the same id gets its partitions
    # back without a rebalance; set it to the pod name of a StatefulSet, leave it unset else
    group_instance_id: str | None = None
    session_timeout_ms: int = Field(10000, ge=1000, le=1800000)
    commit_interval: PositiveFloat = 1.0
    max_in_flight: PositiveInt = Field(256, validation_alias="MAX_IN_FLIGHT")

    @field_validator("bootstrap_servers")
    @classmethod
    def _hosts_have_ports(cls, value: str) -> str:
        hosts = [h.strip() for h in value.split(",") if h.strip()]
        if not hosts:
            raise ValueError("must name at least one host:port")
        for host in hosts:
            name, sep, port = host.rpartition(":")
            if not sep or not name or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"{host!r} is not host:port")
        return ",".join(hosts)

    @property
    def dead_letter_topic(self) -> str:
        return self.dlq_topic or f"{self.topic}.dlq"

    @property
    def retries_topic(self) -> str:
        return self.retry_topic or f"{self.topic}.retry"

    # the notification log (worker/notification_log.py): unset means "<topic>.notifications",
    # an empty value turns it off
    notifications_topic: str | None = Field(None, pattern=r"^[A-Za-z0-9._-]{0,249}$")

    @property
    def notification_log_topic(self) -> str | None:
        """Where each channel outcome is published; None when the log is turned off."""
        if self.notifications_topic is None:
            return f"{self.topic}.notifications"
        return self.notifications_topic or None


class LogSettings(_Section):
    model_config = SettingsConfigDict(env_prefix="LOG_")

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: LogFormat = LogFormat.JSON

    @field_validator("level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value


class SmtpSettings(_Section):
    model_config = SettingsConfigDict(env_prefix="SMTP_")

    host: str = "localhost"
    port: int = Field(587, gt=0, lt=65536)
    username: str | None = None
    password: SecretStr | None = None
    security: SmtpSecurity = SmtpSecurity.STARTTLS
    timeout: PositiveFloat = 30.0
    pool_size: PositiveInt = 4

    @model_validator(mode="after")
    def _credentials_in_pairs(self) -> SmtpSettings:
        if bool(self.username) != bool(self.password):
            raise ValueError("SMTP_USERNAME and SMTP_PASSWORD must be set together")
        return self


class EmailSettings(_Section):
    model_config = SettingsConfigDict(env_prefix="EMAIL_")

    from_: str = Field("Shop <no-reply@shop.example>", validation_alias="EMAIL_FROM")
    reply_to: str | None = None
    # RFC 8058 one-click unsubscribe and DKIM signing (channels/mailheaders.py, signing.py)
    unsubscribe_url: str | None = Field(None, validation_alias="UNSUBSCRIBE_URL")
    unsubscribe_mailto: str | None = Field(None, validation_alias="UNSUBSCRIBE_MAILTO")
    dkim_domain: str | None = Field(None, validation_alias="DKIM_DOMAIN")
    dkim_selector: str | None = Field(None, validation_alias="DKIM_SELECTOR")
    dkim_private_key_file: Path | None = Field(None, validation_alias="DKIM_PRIVATE_KEY_FILE")

    @field_validator("unsubscribe_url")
    @classmethod
    def _unsubscribe_template(cls, value: str | None) -> str | None:
        return None if value is None else unsubscribe_template(value)

    @field_validator("unsubscribe_mailto")
    @classmethod
    def _unsubscribe_address(cls, value: str | None) -> str | None:
        return None if value is None else plain_mailbox(value)

    @field_validator("dkim_domain", "dkim_selector")
    @classmethod
    def _dns_name(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*", value):
            raise ValueError(f"{value!r} is not a DNS name")
        return value

    @field_validator("dkim_private_key_file")
    @classmethod
    def _private_key(cls, value: Path | None) -> Path | None:
        if value is not None:
            read_private_key(value)  # a key that cannot sign stops start-up, not every email
        return value

    @model_validator(mode="after")
    def _dkim_complete(self) -> EmailSettings:
        named = (self.dkim_domain, self.dkim_selector, self.dkim_private_key_file)
        if any(v is not None for v in named) and not all(v is not None for v in named):
            raise ValueError(
                "DKIM_DOMAIN, DKIM_SELECTOR and DKIM_PRIVATE_KEY_FILE must be set together"
            )
        return self

    @field_validator("from_", "reply_to")
    @classmethod
    def _one_address(cls, value: str | None) -> str | None:
        if value is None:
            return None
        _, addr = parseaddr(value)
        if "@" not in addr or any(c in value for c in "\r\n"):
            raise ValueError(f"{value!r} is not an address like 'Shop <no-reply@shop.example>'")
        Address(addr_spec=addr)  # raises on a malformed addr-spec
        plain_mailbox(addr)  # what the mail builder would refuse, refused at start-up
        return value


class SmsSettings(_Section):
    model_config = SettingsConfigDict(env_prefix="SMS_")

    provider: SmsProvider | None = None
    api_url: str = "https://api.twilio.com"
    account_sid: str | None = None
    auth_token: SecretStr | None = None
    from_: str | None = Field(None, validation_alias="SMS_FROM")
    webhook_url: str | None = None
    timeout: PositiveFloat = 10.0
    pool_size: PositiveInt = 100
    # what one SMS may cost; longer fields are shortened to fit (worker/sms_text.py)
    max_segments: int = Field(MAX_SEGMENTS, ge=1, le=MAX_SEGMENTS_LIMIT)
    # locales whose SMS go out without diacritics, comma-separated: "vi"
    unaccented: str = ""

    @field_validator("unaccented")
    @classmethod
    def _locales(cls, value: str) -> str:
        locales = [item.strip().lower() for item in value.split(",") if item.strip()]
        for locale in locales:
            if not re.fullmatch(r"[a-z]{2,8}", locale):
                raise ValueError(f"{locale!r} is not a template locale like vi")
        return ",".join(locales)

    @property
    def unaccented_locales(self) -> frozenset[str]:
        return frozenset(self.unaccented.split(",")) - {""}

    @field_validator("api_url", "webhook_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None:
            return value
        http_url(value)  # what the SMS client could not send to stops start-up instead
        return value.rstrip("/")

    @field_validator("account_sid")
    @classmethod
    def _path_safe(cls, value: str | None) -> str | None:
        if value is not None and not (value.isascii() and value.isalnum()):
            raise ValueError(f"{value!r} is not a Twilio account SID (letters and digits)")
        return value

    @model_validator(mode="after")
    def _provider_complete(self) -> SmsSettings:
        if self.provider is None:
            has_credentials = bool(self.account_sid and self.auth_token)
            object.__setattr__(
                self, "provider", SmsProvider.TWILIO if has_credentials else SmsProvider.DISABLED
            )
        if self.provider is SmsProvider.TWILIO:
            missing = [
                name
                for name, value in (
                    ("SMS_ACCOUNT_SID", self.account_sid),
                    ("SMS_AUTH_TOKEN", self.auth_token),
                    ("SMS_FROM", self.from_),
                )
                if not value
            ]
            if missing:
                raise ValueError(f"SMS_PROVIDER=twilio needs {', '.join(missing)}")
        if self.provider is SmsProvider.WEBHOOK and not self.webhook_url:
            raise ValueError("SMS_PROVIDER=webhook needs SMS_WEBHOOK_URL")
        return self


class DedupSettings(_Section):
    model_config = SettingsConfigDict(env_prefix="DEDUP_")

    url: str = ""
    ttl_days: PositiveFloat = 30.0
    key_prefix: str = "shipment-notifier:"
    # Redis only (worker/dedup/redis_client.py): a cluster, an ACL user, TLS beyond the URL
    redis_cluster: bool = False
    redis_username: str | None = None
    redis_password: SecretStr | None = None
    redis_ca_file: Path | None = None  # rediss:// verifies against it (else the system's CAs)
    redis_cert_file: Path | None = None  # a client certificate, with its key, for mutual TLS
    redis_key_file: Path | None = None
    redis_timeout: PositiveFloat = 10.0

    @field_validator("redis_ca_file", "redis_cert_file", "redis_key_file")
    @classmethod
    def _a_file(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"{str(value)!r} is not a file")
        return value

    @model_validator(mode="after")
    def _redis_consistent(self) -> DedupSettings:
        # one line per problem, naming the variable; the URL shown without its password
        url, shown = self.url, _without_password(self.url)
        if url and not url.startswith(("sqlite:///", "memory://", "redis://", "rediss://")):
            raise ValueError(
                f"DEDUP_URL: {shown!r}: use sqlite:///path/file.db, memory:// or "
                f"redis://host:port/db (got {shown!r})"
            )
        redis = url.startswith(("redis://", "rediss://"))
        for variable, value in (
            ("DEDUP_REDIS_CLUSTER", self.redis_cluster),
            ("DEDUP_REDIS_USERNAME", self.redis_username),
            ("DEDUP_REDIS_PASSWORD", self.redis_password),
            ("DEDUP_REDIS_CA_FILE", self.redis_ca_file),
            ("DEDUP_REDIS_CERT_FILE", self.redis_cert_file),
        ):
            if value and not redis:
                raise ValueError(f"{variable}: needs a redis:// or rediss:// DEDUP_URL")
            if value and variable.endswith("FILE") and not url.startswith("rediss://"):
                raise ValueError(f"{variable}: needs a rediss:// DEDUP_URL (TLS)")
        if redis:
            self._redis_url_consistent(url, shown)
        if bool(self.redis_cert_file) != bool(self.redis_key_file):
            raise ValueError("DEDUP_REDIS_CERT_FILE and DEDUP_REDIS_KEY_FILE must be set together")
        return self

    def _redis_url_consistent(self, url: str, shown: str) -> None:
        from urllib.parse import urlsplit  # here: this section's only use

        parts = urlsplit(url)
        try:
            parts.port  # noqa: B018 (reading it checks it)
        except ValueError:
            raise ValueError(f"DEDUP_URL: {shown!r} has an invalid port") from None
        if not parts.hostname:
            raise ValueError(f"DEDUP_URL: {shown!r} names no host")
        if parts.password and self.redis_password:
            raise ValueError("DEDUP_REDIS_PASSWORD: DEDUP_URL has one too; set it in one place")
        if parts.username and self.redis_username:
            raise ValueError("DEDUP_REDIS_USERNAME: DEDUP_URL has one too; set it in one place")
        if self.redis_username and not (parts.password or self.redis_password):
            raise ValueError("DEDUP_REDIS_USERNAME: needs DEDUP_REDIS_PASSWORD")
        if self.redis_cluster and parts.path.strip("/") not in ("", "0"):
            raise ValueError(f"DEDUP_URL: {shown!r}: a Redis Cluster has database 0 only")
        if self.redis_cluster and any(c in self.key_prefix for c in "{}"):
            raise ValueError(
                "DEDUP_KEY_PREFIX: no { or } with DEDUP_REDIS_CLUSTER (the store sets its own "
                f"hash tags) (got {self.key_prefix!r})"
            )


def _without_password(url: str) -> str:
    return re.sub(r"(//[^/@:]*):[^@]*@", r"\1:***@", url)


class AppSettings(_Section):
    """Settings without a prefix: behaviour of the worker as a whole."""

    data_dir: Path = Path("data")
    templates_dir: Path = Path(__file__).resolve().parent.parent / "templates"
    default_locale: str = "en"
    notify_policy: str = ""
    shop_name: str = "Our shop"
    shop_url: str | None = None
    shop_support_email: str | None = None
    shutdown_timeout: PositiveFloat = 25.0
    send_retries: int = Field(2, ge=0, le=10)
    send_retry_base: PositiveFloat = 0.5
    worker_id: str = Field(default_factory=socket.gethostname, min_length=1, pattern=r"^[^/\s]+$")
    claim_lease: PositiveFloat = 120.0
    # what the notification log says of the recipient: masked (default), full, or none
    notifications_log_recipients: Literal["masked", "full", "none"] = "masked"
    # uvloop has no Windows build (pyproject installs it everywhere else)
    event_loop: EventLoop = EventLoop.ASYNCIO if sys.platform == "win32" else EventLoop.UVLOOP
    # /metrics, /livez and /readyz (worker/probes.py); port 0 takes a free one, logged
    metrics_host: str = Field("0.0.0.0", min_length=1)  # probes and scrapes come from outside
    metrics_port: int = Field(9464, ge=0, lt=65536)
    # /livez fails when the fetch loop has not polled for this long (it can wait for a full
    # in-flight window or a partition's drain, up to SHUTDOWN_TIMEOUT) ...
    liveness_poll_ttl: PositiveFloat = 300.0
    # ... or when one record has been in flight for this long: far past its sends' timeouts
    # and in-process retries (SMTP_TIMEOUT, SMS_TIMEOUT, SEND_RETRIES) and a claim's lease
    liveness_record_ttl: PositiveFloat = 900.0
    readiness_timeout: PositiveFloat = 5.0
    # the CloudEvent types taken from the topics (worker/cloudevents.py): comma-separated
    # names or shell-style patterns; other types are dead-lettered as unexpected_ce_type
    cloudevents_types: Annotated[tuple[str, ...], NoDecode] = DEFAULT_TYPES

    @field_validator("cloudevents_types", mode="before")
    @classmethod
    def _type_list(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        types = tuple(t.strip() for t in value.split(",") if t.strip())
        if not types:
            raise ValueError("must name at least one CloudEvent type, e.g. shipment.status.changed")
        return types

    @field_validator("shop_url")
    @classmethod
    def _shop_url(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"https?://[^\s<>\"']+\Z", value):
            raise ValueError(f"{value!r} is not an http(s) URL")
        return value

    @property
    def policy(self) -> dict[str, tuple[str, ...]]:
        return parse_policy(self.notify_policy)

    @model_validator(mode="after")
    def _policy_parses(self) -> AppSettings:
        parse_policy(self.notify_policy)
        return self

    @model_validator(mode="after")
    def _liveness_outlasts_waits(self) -> AppSettings:
        if self.liveness_poll_ttl <= self.shutdown_timeout:
            raise ValueError(
                f"LIVENESS_POLL_TTL ({self.liveness_poll_ttl:g}) must exceed SHUTDOWN_TIMEOUT "
                f"({self.shutdown_timeout:g}): the fetch loop waits up to that long for a "
                "revoked partition's records, and /livez would restart a healthy worker"
            )
        if self.liveness_record_ttl <= self.claim_lease:
            raise ValueError(
                f"LIVENESS_RECORD_TTL ({self.liveness_record_ttl:g}) must exceed CLAIM_LEASE "
                f"({self.claim_lease:g}): a record may wait that long for another worker's claim"
            )
        return self


class RetrySettings(_Section):
    """Retries through the retry topic, after the in-process ones (SEND_RETRIES)."""

    model_config = SettingsConfigDict(env_prefix="RETRY_")

    max_attempts: int = Field(8, ge=0, le=100)
    max_age: PositiveFloat = 86400.0
    base_delay: PositiveFloat = 30.0
    max_delay: PositiveFloat = 3600.0


class PacingSettings(_Section):
    """When and how fast each channel may send: quiet hours in the recipient's time zone
    (``worker/quiet.py``) and provider rate limits per process (``worker/ratelimit.py``)."""

    sms_quiet_hours: str = Field("21:00-08:00", validation_alias="SMS_QUIET_HOURS")
    email_quiet_hours: str = Field("off", validation_alias="EMAIL_QUIET_HOURS")
    default_timezone: str = Field("UTC", validation_alias="DEFAULT_TIMEZONE")
    quiet_hours_drop: str = Field("", validation_alias="QUIET_HOURS_DROP")
    quiet_hours_recheck: PositiveFloat = Field(900.0, validation_alias="QUIET_HOURS_RECHECK")
    smtp_rate_limit: PositiveFloat | None = Field(None, validation_alias="SMTP_RATE_LIMIT")
    sms_rate_limit: PositiveFloat | None = Field(None, validation_alias="SMS_RATE_LIMIT")

    @field_validator("sms_quiet_hours", "email_quiet_hours")
    @classmethod
    def _window(cls, value: str) -> str:
        Window.parse(value)
        return value

    @field_validator("default_timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        return iana_zone(value)

    @field_validator("quiet_hours_drop")
    @classmethod
    def _statuses(cls, value: str) -> str:
        unknown = set(split_list(value)) - set(get_args(Status))
        if unknown:
            raise ValueError(f"unknown status {', '.join(sorted(unknown))}")
        return value

    @property
    def quiet_windows(self) -> dict[str, Window | None]:
        return {
            "sms": Window.parse(self.sms_quiet_hours),
            "email": Window.parse(self.email_quiet_hours),
        }

    @property
    def expiring(self) -> tuple[str, ...]:
        return split_list(self.quiet_hours_drop)


def split_list(value: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in value.split(",") if item.strip())


class Settings:
    """The whole tree. Build it with ``load_settings()``."""

    def __init__(
        self,
        kafka: KafkaSettings,
        log: LogSettings,
        smtp: SmtpSettings,
        email: EmailSettings,
        sms: SmsSettings,
        dedup: DedupSettings,
        app: AppSettings,
        retry: RetrySettings,
        pacing: PacingSettings,
    ) -> None:
        self.kafka = kafka
        self.log = log
        self.smtp = smtp
        self.email = email
        self.sms = sms
        self.dedup = dedup
        self.app = app
        self.retry = retry
        self.pacing = pacing

    @property
    def dedup_url(self) -> str:
        return self.dedup.url or f"sqlite:///{self.app.data_dir / 'dedup.sqlite3'}"


_SECTIONS: dict[str, type[_Section]] = {
    "kafka": KafkaSettings,
    "log": LogSettings,
    "smtp": SmtpSettings,
    "email": EmailSettings,
    "sms": SmsSettings,
    "dedup": DedupSettings,
    "app": AppSettings,
    "retry": RetrySettings,
    "pacing": PacingSettings,
}


def load_settings() -> Settings:
    """Read every section from the environment, raising one ConfigError that lists every
    invalid variable."""
    problems: list[str] = []
    built: dict[str, Any] = {}
    for name, section in _SECTIONS.items():
        try:
            built[name] = section()
        except ValidationError as exc:
            problems.extend(_describe(section, exc))
    if problems:
        raise ConfigError(problems)
    return Settings(**built)


def _describe(section: type[_Section], exc: ValidationError) -> list[str]:
    prefix = section.model_config.get("env_prefix", "")
    lines = []
    for error in exc.errors(include_url=False):
        message = error["msg"].removeprefix("Value error, ")
        if not error["loc"]:
            lines.append(message)
            continue
        field = str(error["loc"][0])
        # pydantic reports an aliased field by its alias, which is already the variable's name
        is_alias = field not in section.model_fields
        variable = field.upper() if is_alias else (prefix + field).upper()
        got = error.get("input")
        shown = f" (got {got!r})" if isinstance(got, str | int | float) else ""
        lines.append(f"{variable}: {message}{shown}")
    return lines
