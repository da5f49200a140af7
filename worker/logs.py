"""Structured logging: JSON lines for machines (default), coloured console lines for people,
and the maskers that keep personal data out of both."""

from __future__ import annotations

import functools
import json
import logging
import re
import sys
import time
from collections.abc import Mapping
from contextvars import ContextVar
from types import MappingProxyType
from typing import Any

import orjson
import structlog

from worker.settings import LogFormat, LogSettings

Logger = structlog.typing.FilteringBoundLogger
EventDict = structlog.typing.EventDict


class _NamedWriter(structlog.WriteLogger):
    """structlog's plain writer plus the ``name`` that ``add_logger_name`` reads. It writes
    to the stderr of the moment the logger is made, so a stderr swapped later (as
    ``redirect_stderr`` does) gets the lines of loggers made while it is in place."""

    def __init__(self, name: str) -> None:
        super().__init__(sys.stderr)
        self.name = name


def configure(settings: LogSettings) -> None:
    """One line format on stderr at ``settings.level``, through one chain of processors. The
    worker's own events are rendered by structlog and written straight to stderr, not through
    the stdlib ``logging`` machinery, which costs several times as much a line; the standard
    library's records (aiokafka, aiosmtplib) go through a ``logging`` handler with the same
    renderer. stderr's text stream does the encoding, whatever it is."""
    renderer: Any = (
        structlog.processors.JSONRenderer(serializer=_json_text)
        if settings.format is LogFormat.JSON
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    shared: list[Any] = [
        merge_context,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        add_timestamp,
    ]
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, redact_contacts, renderer],
        logger_factory=lambda *args: _NamedWriter(args[0] if args else ""),
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[settings.level]
        ),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                redact_contacts,  # after the traceback is text: an SMTP error quotes addresses
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.level)
    # aiokafka is chatty at INFO (every rebalance step)
    logging.getLogger("aiokafka").setLevel(max(logging.WARNING, root.level))


def _json_text(event: EventDict, **options: Any) -> str:
    """The serializer of ``JSONRenderer``: one event as compact JSON, non-ASCII as it is, with
    structlog's ``default`` for values JSON has no type for. orjson is the fast path; what it
    refuses (a dict key that is not a string, an int beyond 64 bits, a lone surrogate from an
    SMTP reply decoded with ``surrogateescape``) goes through ``json`` instead of failing the
    line. What the stream's encoding cannot carry it escapes itself, as stderr does."""
    default = options["default"]
    try:
        return orjson.dumps(event, default=default, option=orjson.OPT_NON_STR_KEYS).decode()
    except TypeError:
        return json.dumps(event, default=default, ensure_ascii=False)


def add_timestamp(logger: Any, method: str, event: EventDict) -> EventDict:
    """A structlog processor: ``timestamp``, UTC to the microsecond, like
    ``2026-11-21T08:15:00.123456Z``. structlog's ``TimeStamper`` builds a datetime for every
    line; this formats the date and time of day once a second."""
    now = time.time()
    second = int(now)
    event["timestamp"] = f"{_utc_second(second)}.{int((now - second) * 1e6):06d}Z"
    return event


@functools.lru_cache(maxsize=2)
def _utc_second(second: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))


# The record being handled, for every line logged while handling it: one variable holding one
# dict, where structlog's contextvars keep a variable per key and scan the whole context for
# them on every line (bind, clear and merge showed up in the worker's loop profile).
_CONTEXT: ContextVar[Mapping[str, Any]] = ContextVar(
    "worker_log_context", default=MappingProxyType({})
)


def new_context(**values: Any) -> None:
    """Lines logged from here on in this task, and in the tasks it starts, carry ``values``
    (and nothing bound before)."""
    _CONTEXT.set(values)


def bind(**values: Any) -> None:
    """Add ``values`` to this task's log context (a new dict: tasks started earlier, which
    share the old one, do not see them)."""
    _CONTEXT.set({**_CONTEXT.get(), **values})


def merge_context(logger: Any, method: str, event: EventDict) -> EventDict:
    """A structlog processor: the context's keys, unless the call names them itself."""
    for key, value in _CONTEXT.get().items():
        event.setdefault(key, value)
    return event


def get_logger(name: str) -> Logger:
    logger: Logger = structlog.get_logger(name)
    return logger


_EMAIL_IN_TEXT = re.compile(r"[\w.!#$%&'*+/=?^`{|}~-]+@[\w-]+(?:\.[\w-]+)+")
_PHONE_IN_TEXT = re.compile(r"\+\d{7,15}\b")


def redact_contacts(logger: Any, method: str, event: EventDict) -> EventDict:
    """A structlog processor: email addresses and E.164 numbers inside any string value
    (an SMTP server's reply often quotes the recipient) are masked before rendering."""
    for key, value in event.items():
        if isinstance(value, str) and type(value) is not Masked and ("@" in value or "+" in value):
            event[key] = _mask_contacts(value)
    return event


def _mask_contacts(text: str) -> str:
    text = _EMAIL_IN_TEXT.sub(lambda m: mask_email(m.group()), text)
    return _PHONE_IN_TEXT.sub(lambda m: mask_phone(m.group()), text)


def terminal_text(text: str, limit: int = 200) -> str:
    """Text from outside (a server's reply, a header) made safe to print as part of one
    terminal line: every character that is not printable (controls, so escape sequences
    lose their ESC; line breaks; bidi overrides and other invisible formatting; lone
    surrogates) becomes U+FFFD, contacts are masked as in the logs, and at most ``limit``
    characters are kept, the last an ellipsis when some were cut. The whole text is masked
    before it is cut, so an address across the cut is not left half unmasked."""
    shown = _mask_contacts("".join(c if c.isprintable() else "\ufffd" for c in text))
    return shown if len(shown) <= limit else shown[: limit - 1] + "\u2026"


class Masked(str):
    """What ``mask_email`` and ``mask_phone`` return when no address or number is left in
    it, so ``redact_contacts`` need not search it again (two regular expressions on every
    line that names a recipient): the only "@" in it follows a masked local part, and no
    run of digits is long enough to be a phone number."""

    __slots__ = ()


# the domains mask_email vouches for: host names, which hold neither "@" nor "+"
_HOST_NAME = re.compile(r"[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\Z")


def mask_email(address: str) -> str:
    """``lan.nguyen@example.com`` -> ``l***@example.com``: enough to tell recipients apart in
    an incident, not enough to contact them. A ``Masked`` when the domain is a host name
    (the worker's recipients are), else plain text, which redaction searches as any other."""
    local, at, domain = address.rpartition("@")
    if not at:
        return Masked("***")
    masked = f"{local[:1]}***@{domain}"
    return Masked(masked) if _HOST_NAME.match(domain) else masked


def mask_phone(number: str) -> Masked:
    """``+84901234567`` -> ``+84******567``: five characters of it at most are left, apart
    from the "+", with "*" between the first two and the last three."""
    digits = number.lstrip("+")
    if len(digits) <= 5:
        return Masked("***")
    plus = "+" if number.startswith("+") else ""
    return Masked(f"{plus}{digits[:2]}{'*' * (len(digits) - 5)}{digits[-3:]}")
