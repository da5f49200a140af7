"""The worker's configuration: one tree of sections, each read from its own environment variables.

Every section is a ``BaseSettings`` with an ``env_prefix``, so a field's environment variable is
``PREFIX + FIELD`` (``SMTP_PORT`` is ``SmtpSettings.port``). ``load_settings`` builds all sections,
collects every problem, and raises one ``ConfigError`` whose lines name the variable and what is
wrong with it, so start-up can stop with a message instead of a traceback.
"""

from __future__ import annotations

import re
import socket
import sys
from email.headerregistry import Address
from email.utils import parseaddr
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from worker.addresses import http_url, plain_mailbox
from worker.policy import parse_policy


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


class KafkaSettings(_Section):
    model_config = SettingsConfigDict(env_prefix="KAFKA_")

    bootstrap_servers: str = "localhost:9092"
    topic: str = Field("shipment-status", min_length=1, max_length=249)
    group_id: str = Field("shipment-notifier", min_length=1)
    dlq_topic: str = ""
    retry_topic: str = ""
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

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, value: str) -> str:
        if value and not value.startswith(("sqlite:///", "memory://", "redis://", "rediss://")):
            raise ValueError(
                f"{value!r}: use sqlite:///path/file.db, memory:// or redis://host:port/db"
            )
        return value


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


class RetrySettings(_Section):
    """Retries through the retry topic, after the in-process ones (SEND_RETRIES)."""

    model_config = SettingsConfigDict(env_prefix="RETRY_")

    max_attempts: int = Field(8, ge=0, le=100)
    max_age: PositiveFloat = 86400.0
    base_delay: PositiveFloat = 30.0
    max_delay: PositiveFloat = 3600.0


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
    ) -> None:
        self.kafka = kafka
        self.log = log
        self.smtp = smtp
        self.email = email
        self.sms = sms
        self.dedup = dedup
        self.app = app
        self.retry = retry

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
