"""Structured logging: JSON lines for machines (default), coloured console lines for people,
and the maskers that keep personal data out of both."""

from __future__ import annotations

import logging
import re
import sys
from typing import Any

import structlog

from worker.settings import LogFormat, LogSettings

Logger = structlog.stdlib.BoundLogger


def configure(settings: LogSettings) -> None:
    """Route structlog and the standard library (aiokafka, aiosmtplib) through one renderer
    on stderr at ``settings.level``."""
    renderer: Any = (
        structlog.processors.JSONRenderer(ensure_ascii=False)
        if settings.format is LogFormat.JSON
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        redact_contacts,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.processors.format_exc_info,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.level)
    # aiokafka is chatty at INFO (every rebalance step); the HTTP client's loggers only at
    # WARNING, in case a library debug line would print a webhook URL carrying a token
    for noisy in ("aiokafka", "aiohttp"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


def get_logger(name: str) -> Logger:
    logger: Logger = structlog.stdlib.get_logger(name)
    return logger


_EMAIL_IN_TEXT = re.compile(r"[\w.!#$%&'*+/=?^`{|}~-]+@[\w-]+(?:\.[\w-]+)+")
_PHONE_IN_TEXT = re.compile(r"\+\d{7,15}\b")


def redact_contacts(logger: Any, method: str, event: dict[str, Any]) -> dict[str, Any]:
    """A structlog processor: email addresses and E.164 numbers inside any string value
    (an SMTP server's reply often quotes the recipient) are masked before rendering."""
    for key, value in event.items():
        if isinstance(value, str) and ("@" in value or "+" in value):
            value = _EMAIL_IN_TEXT.sub(lambda m: mask_email(m.group()), value)
            event[key] = _PHONE_IN_TEXT.sub(lambda m: mask_phone(m.group()), value)
    return event


def mask_email(address: str) -> str:
    """``lan.nguyen@example.com`` -> ``l***@example.com``: enough to tell recipients apart in
    an incident, not enough to contact them."""
    local, at, domain = address.rpartition("@")
    if not at:
        return "***"
    return f"{local[:1]}***@{domain}"


def mask_phone(number: str) -> str:
    """``+84901234567`` -> ``+84******567``."""
    digits = number.lstrip("+")
    if len(digits) <= 5:
        return "***"
    plus = "+" if number.startswith("+") else ""
    return f"{plus}{digits[:2]}{'*' * (len(digits) - 5)}{digits[-3:]}"
