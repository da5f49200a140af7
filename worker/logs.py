"""Structured logging: JSON lines for machines (default), coloured console lines for people,
and the maskers that keep personal data out of both."""

from __future__ import annotations

import codecs
import functools
import json
import logging
import re
import sys
import time
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from types import MappingProxyType
from typing import Any, BinaryIO

import orjson
import structlog

from worker.settings import LogFormat, LogSettings

Logger = structlog.typing.FilteringBoundLogger
EventDict = structlog.typing.EventDict


class _NamedWriter(structlog.WriteLogger):
    """structlog's plain writer plus the ``name`` that ``add_logger_name`` reads."""

    def __init__(self, name: str) -> None:
        super().__init__(sys.stderr)
        self.name = name


class _JsonLineWriter:
    """The JSON lines' writer: ``json_line``'s UTF-8 bytes straight into stderr's buffer, one
    flush a line, as the text stream would write them, without decoding and encoding them
    again. Text someone left in the stream without a newline goes first, so nothing is
    reordered. A stderr swapped for one without a buffer (``redirect_stderr``) gets text."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._stream = sys.stderr
        self._buffer: BinaryIO | None = getattr(self._stream, "buffer", None)

    def msg(self, line: bytes) -> None:
        if self._buffer is None:
            self._stream.write(line.decode() + "\n")
            self._stream.flush()
            return
        self._stream.flush()  # no system call when it holds nothing
        self._buffer.write(line + b"\n")
        self._buffer.flush()

    log = debug = info = warn = warning = error = err = critical = exception = fatal = msg


def configure(settings: LogSettings) -> None:
    """One line format on stderr at ``settings.level``. The worker's own events are rendered
    by structlog and written straight to stderr (through the stdlib ``logging`` machinery each
    line cost 42 us instead of 18, several lines per notification); the standard library's
    records (aiokafka, aiosmtplib) go through a ``logging`` handler with the same renderer."""
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
    # JSON (the default, 2-3 lines a notification) takes the one-step path when stderr is
    # UTF-8 text over a byte buffer, as in a container: the same line, as bytes
    fused = settings.format is LogFormat.JSON and _utf8_over_bytes(sys.stderr)
    structlog.configure(
        processors=(
            [json_line]
            if fused
            else [*shared, structlog.processors.format_exc_info, redact_contacts, renderer]
        ),
        logger_factory=lambda *args: (_JsonLineWriter if fused else _NamedWriter)(
            args[0] if args else ""
        ),
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


def _utf8_over_bytes(stream: Any) -> bool:
    encoding: str | None = getattr(stream, "encoding", None)
    if not encoding or not hasattr(stream, "buffer"):
        return False
    return codecs.lookup(encoding).name == "utf-8"


def json_line(logger: Any, method: str, event: EventDict) -> bytes:
    """The whole chain for a JSON line in one structlog processor: the record context, the
    level, the logger's name, the timestamp and the formatted exception, contacts masked, as
    one line of JSON in UTF-8 for ``_JsonLineWriter``. A line through the chain of
    ``configure``'s other path (seven processors, each called by structlog, and a text
    stream) took about 2 us more: 9.0 against 7.2 us in alternated pairs. A lone surrogate
    (an SMTP reply decoded with ``surrogateescape``) comes out as ``_json_bytes`` says."""
    merge_context(logger, method, event)
    structlog.stdlib.add_log_level(logger, method, event)
    event["logger"] = logger.name
    add_timestamp(logger, method, event)
    if "exc_info" in event:
        structlog.processors.format_exc_info(logger, method, event)
    redact_contacts(logger, method, event)
    return _json_bytes(event, _unknown)


def _unknown(value: Any) -> Any:
    """A value JSON has no type for: its ``__structlog__()`` if it has one, as structlog's
    renderer does, else its repr."""
    try:
        return value.__structlog__()
    except AttributeError:
        return repr(value)


def _json_bytes(event: EventDict, default: Callable[[Any], Any]) -> bytes:
    """One event as compact JSON in UTF-8, non-ASCII as it is: orjson, 6 us a line less than
    the ``json`` module at 2-3 lines a notification. What orjson refuses (a dict key that is
    not a string, an int beyond 64 bits, a lone surrogate) goes through ``json`` instead of
    failing the call; text UTF-8 cannot carry is written as a backslash escape, as stderr's
    text stream does."""
    try:
        return orjson.dumps(event, default=default, option=orjson.OPT_NON_STR_KEYS)
    except TypeError:
        text = json.dumps(event, default=default, ensure_ascii=False)
        return text.encode("utf-8", "backslashreplace")


def _json_text(event: EventDict, **options: Any) -> str:
    """``_json_bytes`` as text: the serializer of the chain's ``JSONRenderer``, which passes
    structlog's fallback for values JSON has no type for."""
    return _json_bytes(event, options.get("default", repr)).decode()


def add_timestamp(logger: Any, method: str, event: EventDict) -> EventDict:
    """A structlog processor: ``timestamp``, UTC to the microsecond, like
    ``2026-11-21T08:15:00.123456Z``. structlog's ``TimeStamper`` builds a datetime for every
    line (2 us); this formats the date and time of day once a second (0.6 us)."""
    now = time.time()
    second = int(now)
    event["timestamp"] = f"{_utc_second(second)}.{int((now - second) * 1e6):06d}Z"
    return event


@functools.lru_cache(maxsize=2)
def _utc_second(second: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))


# The record being handled, for every line logged while handling it: one variable holding one
# dict, where structlog's contextvars keep a variable per key and scan the whole context for
# them on every line (bind, clear and merge were 4% of the worker's loop time).
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
            value = _EMAIL_IN_TEXT.sub(lambda m: mask_email(m.group()), value)
            event[key] = _PHONE_IN_TEXT.sub(lambda m: mask_phone(m.group()), value)
    return event


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
