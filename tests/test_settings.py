"""Configuration from the environment: defaults, derived values, and one readable line per
invalid variable, including at the command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import AliasChoices

from worker.addresses import http_url, plain_mailbox
from worker.channels import mime
from worker.channels.http import parse_url
from worker.policy import DEFAULT_POLICY
from worker.settings import (
    AppSettings,
    ConfigError,
    DedupSettings,
    EmailSettings,
    EventLoop,
    KafkaSettings,
    LogFormat,
    LogSettings,
    PacingSettings,
    SmsProvider,
    SmsSettings,
    SmtpSecurity,
    SmtpSettings,
    load_settings,
)

ROOT = Path(__file__).resolve().parent.parent
SECTIONS = (
    KafkaSettings,
    LogSettings,
    SmtpSettings,
    EmailSettings,
    SmsSettings,
    DedupSettings,
    AppSettings,
    PacingSettings,
)


def settings_variables() -> frozenset[str]:
    """Every environment variable a settings section reads (upper case), aliases included."""
    names: set[str] = set()
    for section in SECTIONS:
        prefix = section.model_config.get("env_prefix", "")
        for field_name, field in section.model_fields.items():
            alias = field.validation_alias
            if isinstance(alias, str):
                names.add(alias.upper())
            elif isinstance(alias, AliasChoices):
                names.update(str(choice).upper() for choice in alias.choices)
            else:
                names.add((prefix + field_name).upper())
    return frozenset(names)


def clean_environ() -> dict[str, str]:
    """This process's environment without any variable the settings read (in any case)."""
    variables = settings_variables()
    return {k: v for k, v in os.environ.items() if k.upper() not in variables}


SetEnv = Callable[..., None]


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> SetEnv:
    """Factory: clears every settings variable (the developer's shell may set some), then
    ``env(SMTP_PORT="25")`` sets the given ones; monkeypatch restores all afterwards."""
    variables = settings_variables()
    for name in list(os.environ):
        if name.upper() in variables:
            monkeypatch.delenv(name, raising=False)

    def set_env(**values: str) -> None:
        for name, value in values.items():
            monkeypatch.setenv(name, value)

    return set_env


def problems_of(env: SetEnv, **values: str) -> list[str]:
    """The ConfigError lines that ``values`` produce."""
    env(**values)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert str(caught.value) == "\n".join(caught.value.problems)
    return caught.value.problems


def test_defaults_without_any_variable(env: SetEnv) -> None:
    """With no variables set, every section takes its documented default."""
    settings = load_settings()
    assert settings.kafka.bootstrap_servers == "localhost:9092"
    assert settings.kafka.topic == "shipment-status"
    assert settings.kafka.group_id == "shipment-notifier"
    assert settings.kafka.dead_letter_topic == "shipment-status.dlq"
    assert settings.kafka.max_in_flight == 256
    assert settings.kafka.commit_interval == 1.0
    assert settings.log.level == "INFO"
    assert settings.log.format is LogFormat.JSON
    assert settings.smtp.host == "localhost"
    assert settings.smtp.port == 587
    assert settings.smtp.security is SmtpSecurity.STARTTLS
    assert settings.smtp.username is None
    assert settings.email.from_ == "Shop <no-reply@shop.example>"
    assert settings.sms.provider is SmsProvider.DISABLED
    assert settings.dedup_url == "sqlite:///data/dedup.sqlite3"
    assert settings.app.templates_dir == ROOT / "templates"
    assert settings.app.default_locale == "en"
    assert settings.app.shop_name == "Our shop"
    assert settings.app.send_retries == 2  # then the retry topic takes over
    assert settings.kafka.retries_topic == "shipment-status.retry"
    assert (settings.retry.max_attempts, settings.retry.base_delay) == (8, 30.0)
    assert settings.app.policy == DEFAULT_POLICY
    assert settings.app.event_loop is EventLoop.UVLOOP


def test_dead_letter_topic_follows_the_topic(env: SetEnv) -> None:
    """Without KAFKA_DLQ_TOPIC the dead-letter topic is ``<KAFKA_TOPIC>.dlq``."""
    env(KAFKA_TOPIC="orders")
    assert load_settings().kafka.dead_letter_topic == "orders.dlq"


def test_dead_letter_topic_can_be_named(env: SetEnv) -> None:
    """KAFKA_DLQ_TOPIC, when set, is used as given."""
    env(KAFKA_TOPIC="orders", KAFKA_DLQ_TOPIC="orders-dead")
    assert load_settings().kafka.dead_letter_topic == "orders-dead"


def test_bootstrap_servers_are_tidied(env: SetEnv) -> None:
    """Spaces and empty entries between brokers are dropped."""
    env(KAFKA_BOOTSTRAP_SERVERS=" k1:9092, ,k2:9093 ")
    assert load_settings().kafka.bootstrap_servers == "k1:9092,k2:9093"


def test_max_in_flight_sets_the_in_flight_bound(env: SetEnv) -> None:
    """MAX_IN_FLIGHT (the one name it has) sets the in-flight bound."""
    env(MAX_IN_FLIGHT="8")
    assert load_settings().kafka.max_in_flight == 8


def test_log_level_is_case_insensitive(env: SetEnv) -> None:
    """LOG_LEVEL=debug is read as DEBUG."""
    env(LOG_LEVEL="debug")
    assert load_settings().log.level == "DEBUG"


def test_sms_defaults_to_twilio_with_credentials(env: SetEnv) -> None:
    """SID, token and sender without SMS_PROVIDER select Twilio."""
    env(SMS_ACCOUNT_SID="AC1", SMS_AUTH_TOKEN="secret", SMS_FROM="+15005550006")
    sms = load_settings().sms
    assert sms.provider is SmsProvider.TWILIO
    assert sms.auth_token is not None
    assert sms.auth_token.get_secret_value() == "secret"
    assert "secret" not in repr(sms)


def test_sms_is_disabled_with_half_the_credentials(env: SetEnv) -> None:
    """A SID without a token is not enough to pick a provider: SMS stays disabled."""
    env(SMS_ACCOUNT_SID="AC1")
    assert load_settings().sms.provider is SmsProvider.DISABLED


def test_twilio_without_a_sender_names_sms_from(env: SetEnv) -> None:
    """Credentials without SMS_FROM are an error that names SMS_FROM."""
    problems = problems_of(env, SMS_ACCOUNT_SID="AC1", SMS_AUTH_TOKEN="secret")
    assert problems == ["SMS_PROVIDER=twilio needs SMS_FROM"]


def test_explicit_twilio_names_every_missing_variable(env: SetEnv) -> None:
    """SMS_PROVIDER=twilio alone lists all three missing variables."""
    problems = problems_of(env, SMS_PROVIDER="twilio")
    assert problems == ["SMS_PROVIDER=twilio needs SMS_ACCOUNT_SID, SMS_AUTH_TOKEN, SMS_FROM"]


def test_webhook_without_a_url(env: SetEnv) -> None:
    """SMS_PROVIDER=webhook without SMS_WEBHOOK_URL is an error naming the URL variable."""
    assert problems_of(env, SMS_PROVIDER="webhook") == [
        "SMS_PROVIDER=webhook needs SMS_WEBHOOK_URL"
    ]


def test_webhook_with_a_url(env: SetEnv) -> None:
    """A webhook provider keeps its URL, without a trailing slash."""
    env(SMS_PROVIDER="webhook", SMS_WEBHOOK_URL="https://sms.example/send/")
    sms = load_settings().sms
    assert (sms.provider, sms.webhook_url) == (SmsProvider.WEBHOOK, "https://sms.example/send")


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("SMTP_PORT", "abc"),
        ("SMTP_PORT", "0"),
        ("SMTP_PORT", "65536"),
        ("LOG_LEVEL", "verbose"),
        ("KAFKA_BOOTSTRAP_SERVERS", "kafka"),
        ("KAFKA_BOOTSTRAP_SERVERS", "kafka:http"),
        ("KAFKA_BOOTSTRAP_SERVERS", " , "),
        ("MAX_IN_FLIGHT", "0"),
        ("SMS_POOL_SIZE", "0"),
        ("SMS_API_URL", "api.twilio.com"),
        ("SMS_ACCOUNT_SID", "AC 12/3"),
        ("SMS_API_URL", "https://user:pw@api.twilio.com"),
        ("SMS_WEBHOOK_URL", "https://sms.example:99999/send"),
        ("SMS_WEBHOOK_URL", "https://sms.example/send now"),
        ("SMS_WEBHOOK_URL", "ftp://sms.example/send"),
        ("SMS_WEBHOOK_URL", "https:///send"),
        ("SMS_WEBHOOK_URL", "https://sms.example/send?to=\u00fc"),
        ("SMS_API_URL", "https://b\u00fccher.example/sms"),
        ("MAX_IN_FLIGHT", "many"),
        ("EMAIL_FROM", "nobody"),
        ("EMAIL_FROM", "Shop <a@shop.example>\nBcc: all@example.com"),
        ("EMAIL_FROM", "Shop <bestellung@shöp.example>"),
        ("EMAIL_REPLY_TO", "info@shöp.example"),
        ("EMAIL_FROM", 'Shop <"a b"@shop.example>'),
        ("EMAIL_REPLY_TO", "Shop <no-reply@shop.example\x1b>"),
        ("DEDUP_URL", "postgres://db/notify"),
        ("EVENT_LOOP", "trio"),
        ("METRICS_PORT", "65536"),
        ("METRICS_PORT", "-1"),
        ("LIVENESS_RECORD_TTL", "0"),
        ("READINESS_TIMEOUT", "soon"),
        ("SMS_QUIET_HOURS", "21-8"),
        ("EMAIL_QUIET_HOURS", "22:00-22:00"),
        ("DEFAULT_TIMEZONE", "Asia/Hanoi"),
        ("QUIET_HOURS_DROP", "out_for_delivery,soon"),
        ("QUIET_HOURS_RECHECK", "0"),
        ("SMS_RATE_LIMIT", "-1"),
        ("SMTP_RATE_LIMIT", "fast"),
    ],
)
def test_an_invalid_value_is_one_line_naming_its_variable(
    env: SetEnv, name: str, value: str
) -> None:
    """Each invalid variable produces exactly one problem line, prefixed with its name."""
    problems = problems_of(env, **{name: value})
    assert len(problems) == 1
    assert problems[0].startswith(f"{name}: ")


def test_messages_say_what_is_wrong(env: SetEnv) -> None:
    """Lines read as variable, reason and the value that was given."""
    problems = problems_of(env, KAFKA_BOOTSTRAP_SERVERS="kafka", DEDUP_URL="postgres://db")
    assert problems == [
        "KAFKA_BOOTSTRAP_SERVERS: 'kafka' is not host:port (got 'kafka')",
        "DEDUP_URL: 'postgres://db': use sqlite:///path/file.db, memory:// or "
        "redis://host:port/db (got 'postgres://db')",
    ]


def test_every_invalid_variable_is_reported_at_once(env: SetEnv) -> None:
    """Problems in several sections are collected into one error, one line each."""
    problems = problems_of(
        env,
        SMTP_PORT="abc",
        LOG_LEVEL="verbose",
        KAFKA_BOOTSTRAP_SERVERS="kafka",
        MAX_IN_FLIGHT="0",
        EMAIL_FROM="nobody",
        DEDUP_URL="postgres://db",
    )
    assert [line.split(": ", 1)[0] for line in problems] == [
        "KAFKA_BOOTSTRAP_SERVERS",
        "MAX_IN_FLIGHT",
        "LOG_LEVEL",
        "SMTP_PORT",
        "EMAIL_FROM",
        "DEDUP_URL",
    ]


def test_smtp_credentials_come_in_pairs(env: SetEnv) -> None:
    """A username without a password is reported with both variable names."""
    assert problems_of(env, SMTP_USERNAME="mailer") == [
        "SMTP_USERNAME and SMTP_PASSWORD must be set together"
    ]


def test_policy_as_inline_json_overrides_listed_statuses(env: SetEnv) -> None:
    """Inline NOTIFY_POLICY replaces the listed statuses and keeps the defaults for the rest."""
    env(NOTIFY_POLICY='{"shipped": ["sms"], "in_transit": ["sms", "email"]}')
    policy = load_settings().app.policy
    assert policy == {**DEFAULT_POLICY, "shipped": ("sms",), "in_transit": ("email", "sms")}


def test_policy_from_a_file(env: SetEnv, tmp_path: Path) -> None:
    """A NOTIFY_POLICY that is a path is read as a JSON file."""
    path = tmp_path / "policy.json"
    path.write_text(json.dumps({"delivered": [], "processing": ["email"]}), encoding="utf-8")
    env(NOTIFY_POLICY=str(path))
    policy = load_settings().app.policy
    assert policy == {**DEFAULT_POLICY, "delivered": (), "processing": ("email",)}


def test_policy_with_an_unknown_status(env: SetEnv) -> None:
    """A status that does not exist is named in the error."""
    assert problems_of(env, NOTIFY_POLICY='{"lost": ["email"]}') == [
        "NOTIFY_POLICY names unknown status 'lost'"
    ]


@pytest.mark.parametrize("channels", ['["fax"]', '"email"', '["email", "pigeon"]'])
def test_policy_with_a_bad_channel_list(env: SetEnv, channels: str) -> None:
    """Channels must be a list drawn from email and sms."""
    assert problems_of(env, NOTIFY_POLICY=f'{{"shipped": {channels}}}') == [
        "NOTIFY_POLICY['shipped'] must be a list of 'email'/'sms'"
    ]


def test_policy_that_is_not_json(env: SetEnv) -> None:
    """Broken inline JSON is reported as such."""
    problems = problems_of(env, NOTIFY_POLICY="{shipped: email}")
    assert len(problems) == 1
    assert problems[0].startswith("NOTIFY_POLICY is not valid JSON: ")


def test_policy_file_that_cannot_be_read(env: SetEnv, tmp_path: Path) -> None:
    """A policy path that does not exist names the file and the OS reason."""
    missing = tmp_path / "nope.json"
    assert problems_of(env, NOTIFY_POLICY=str(missing)) == [
        f"NOTIFY_POLICY file {str(missing)!r} cannot be read: No such file or directory"
    ]


def test_cli_reports_bad_configuration_without_a_traceback() -> None:
    """``python -m worker run`` with SMTP_PORT=abc exits 2 with one stderr line, no traceback."""
    result = subprocess.run(
        [sys.executable, "-m", "worker", "run"],
        cwd=ROOT,
        env={**clean_environ(), "SMTP_PORT": "abc"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("configuration error: SMTP_PORT: ")
    assert lines[0].endswith("(got 'abc')")
    assert result.stdout == ""


SETTINGS_WITHOUT_ADAPTERS_SCRIPT = """
import sys
from worker.settings import load_settings

settings = load_settings()
assert settings.sms.webhook_url == "https://sms.example/send"
assert settings.email.reply_to == "help@shop.example"
print(sorted(name for name in sys.modules if name.startswith("worker.channels")))
"""


def test_settings_validate_addresses_without_the_channel_adapters() -> None:
    """Loading and validating every setting, sender addresses and SMS URLs included, imports
    none of the channel adapters: the rules are the domain's, in worker.addresses."""
    result = subprocess.run(
        [sys.executable, "-c", SETTINGS_WITHOUT_ADAPTERS_SCRIPT],
        cwd=ROOT,
        env={
            **clean_environ(),
            "EMAIL_FROM": "Shop <no-reply@shop.example>",
            "EMAIL_REPLY_TO": "help@shop.example",
            "SMS_PROVIDER": "webhook",
            "SMS_WEBHOOK_URL": "https://sms.example/send/",
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == "[]\n"


URLS = [
    "https://api.twilio.com",
    "http://127.0.0.1:8080/sms?x=1&y=%C3%BC",
    "https://sms.example:443/send/",
    "https://[::1]:9/a",
    "https://sms.example:99999/send",
    "https://sms.example:port/send",
    "https://user:pw@sms.example/",
    "https://user@sms.example/",
    "https://sms.example/send now",
    "https://sms.example/s\u00fc",
    "https://sms.example/s\x7f",
    "https://b\u00fccher.example/",
    "ftp://sms.example/",
    "https:///send",
    "sms.example/send",
    "",
]


@pytest.mark.parametrize("url", URLS)
def test_http_url_holds_an_sms_url_to_the_http_clients_rules(url: str) -> None:
    """``addresses.http_url`` accepts exactly the URLs the HTTP client can send to, and
    finds the same host, port, Host header and request target in them."""
    try:
        target = parse_url.__wrapped__(url)
    except ValueError:
        with pytest.raises(ValueError):
            http_url(url)
        return
    pieces = http_url(url)
    assert (pieces.https, pieces.host, pieces.port) == (
        target.origin.tls,
        target.origin.host,
        target.origin.port,
    )
    assert target.head.startswith(
        f"POST {pieces.target} HTTP/1.1\r\nHost: {pieces.authority}\r\n".encode()
    )


@given(st.text(alphabet=st.sampled_from('ab.@<>,;" \r\n\x00\x7f\u00fc-+'), max_size=12))
def test_plain_mailbox_holds_an_address_to_the_mail_builders_rules(address: str) -> None:
    """``addresses.plain_mailbox`` accepts exactly the addresses the mail builder writes as
    they are, and returns them unchanged."""
    try:
        builders = mime.plain_mailbox(address)
    except ValueError:
        with pytest.raises(ValueError):
            plain_mailbox(address)
        return
    assert plain_mailbox(address) == builders == address


def test_liveness_ttls_must_outlast_the_waits_they_allow(env: SetEnv) -> None:
    """A poll TTL within SHUTDOWN_TIMEOUT, or a record TTL within CLAIM_LEASE, would have
    /livez restart a healthy worker: start-up refuses them, naming both variables."""
    (poll,) = problems_of(env, LIVENESS_POLL_TTL="20", SHUTDOWN_TIMEOUT="25")
    assert poll.startswith("LIVENESS_POLL_TTL (20) must exceed SHUTDOWN_TIMEOUT (25)")
    (record,) = problems_of(
        env, LIVENESS_POLL_TTL="300", LIVENESS_RECORD_TTL="60", CLAIM_LEASE="120"
    )
    assert record.startswith("LIVENESS_RECORD_TTL (60) must exceed CLAIM_LEASE (120)")


def test_quiet_hours_and_rate_limits(env: SetEnv) -> None:
    """SMS are quiet 21:00-08:00 by default, email never, no rate limit; each is set by its
    variable (``off`` turns quiet hours off)."""
    env()
    pacing = load_settings().pacing
    assert {c: str(w) for c, w in pacing.quiet_windows.items()} == {
        "sms": "Window(start=datetime.time(21, 0), end=datetime.time(8, 0))",
        "email": "None",
    }
    assert (pacing.default_timezone, pacing.expiring) == ("UTC", ())
    assert (pacing.sms_rate_limit, pacing.smtp_rate_limit) == (None, None)
    env(
        SMS_QUIET_HOURS="off",
        EMAIL_QUIET_HOURS="22:30-07:00",
        DEFAULT_TIMEZONE="Asia/Ho_Chi_Minh",
        QUIET_HOURS_DROP="out_for_delivery, available_for_pickup",
        SMS_RATE_LIMIT="1",
        SMTP_RATE_LIMIT="14.5",
    )
    pacing = load_settings().pacing
    assert pacing.quiet_windows["sms"] is None and pacing.quiet_windows["email"] is not None
    assert pacing.expiring == ("out_for_delivery", "available_for_pickup")
    assert (pacing.sms_rate_limit, pacing.smtp_rate_limit) == (1.0, 14.5)


def test_sms_cost_settings(env: SetEnv) -> None:
    """SMS_MAX_SEGMENTS defaults to 4; SMS_UNACCENTED is a comma list of template locales, any
    case and spacing, empty by default."""
    sms = load_settings().sms
    assert (sms.max_segments, sms.unaccented_locales) == (4, frozenset())
    env(SMS_MAX_SEGMENTS="2", SMS_UNACCENTED=" VI , ko,")
    sms = load_settings().sms
    assert (sms.max_segments, sms.unaccented_locales) == (2, frozenset({"vi", "ko"}))


@pytest.mark.parametrize(
    ("name", "value", "problem"),
    [
        ("SMS_MAX_SEGMENTS", "0", "SMS_MAX_SEGMENTS: Input should be greater than or equal to 1"),
        ("SMS_MAX_SEGMENTS", "11", "SMS_MAX_SEGMENTS: Input should be less than or equal to 10"),
        ("SMS_UNACCENTED", "vi-VN", "SMS_UNACCENTED: 'vi-vn' is not a template locale like vi"),
    ],
)
def test_an_sms_cost_setting_out_of_range_names_its_variable(
    env: SetEnv, name: str, value: str, problem: str
) -> None:
    """More segments than Twilio advises, none, or a locale that is no template folder's name
    is one line naming the variable."""
    assert problems_of(env, **{name: value}) == [f"{problem} (got {value!r})"]
