"""Logging: the maskers that keep personal data out of logs, and the JSON line format."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
import time
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st
from structlog.testing import capture_logs

from worker.logs import (
    _EMAIL_IN_TEXT,
    _PHONE_IN_TEXT,
    Masked,
    _json_text,
    add_timestamp,
    bind,
    get_logger,
    mask_email,
    mask_phone,
    merge_context,
    new_context,
    redact_contacts,
    terminal_text,
)

ROOT = Path(__file__).resolve().parent.parent

# structlog caches configured loggers process-wide, so configure() runs in a child process
JSON_LOGGING_SCRIPT = textwrap.dedent(
    """
    import logging
    from decimal import Decimal
    from worker.logs import configure, get_logger
    from worker.settings import LogFormat, LogSettings

    configure(LogSettings(level="INFO", format=LogFormat.JSON))
    log = get_logger("worker.pipeline")
    log.info("notification_sent", shop="Cửa hàng Sen", channel="email")
    log.debug("too_detailed")
    log.info("odd_values", keys={1: "a"}, thing=Decimal("1.5"))
    log.info("odd_values", big=2**70, thing=Decimal("1.5"))
    logging.getLogger("aiokafka").info("rebalance step")
    logging.getLogger("aiokafka").warning("heartbeat failed for %s", "Gruppe Süd")
    log.warning("retrying", error="452 Empf\\udce4nger voll")  # a Latin-1 reply, undecoded
    try:
        raise RuntimeError("550 lan.nguyen@example.com unknown; SMS to +84901234567 failed")
    except RuntimeError:
        log.error("send_crashed", exc_info=True)
        logging.getLogger("aiokafka").error("callback failed", exc_info=True)
    print("stdout stays clean")
    """
)


@pytest.mark.parametrize(
    ("address", "masked"),
    [
        ("lan.nguyen@example.com", "l***@example.com"),
        ("a@example.com", "a***@example.com"),
        ("an@sub.example.co.kr", "a***@sub.example.co.kr"),
        ("odd@local@example.com", "o***@example.com"),
        ("@example.com", "***@example.com"),
        ("not-an-address", "***"),
        ("", "***"),
    ],
)
def test_mask_email(address: str, masked: str) -> None:
    """Only the first letter of the local part and the domain survive."""
    assert mask_email(address) == masked


@pytest.mark.parametrize(
    ("number", "masked"),
    [
        ("+84901234567", "+84******567"),
        ("+4915123456789", "+49********789"),
        ("+821012345678", "+82*******678"),
        ("0901234567", "09*****567"),
        ("+123456", "+12*456"),
        ("+12345", "***"),
        ("12345", "***"),
        ("", "***"),
    ],
)
def test_mask_phone(number: str, masked: str) -> None:
    """The country prefix and last three digits survive; short numbers are hidden whole."""
    assert mask_phone(number) == masked


def test_json_logs_are_one_object_per_line_on_stderr() -> None:
    """JSON format writes each event as one JSON object on stderr, non-ASCII kept readable,
    values JSON has no type for as their repr."""
    result = subprocess.run(
        [sys.executable, "-c", JSON_LOGGING_SCRIPT],
        cwd=ROOT,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"stdout stays clean\n"
    stderr = result.stderr.decode("utf-8")
    lines = stderr.splitlines()
    records = [json.loads(line) for line in lines]
    assert [(r["event"], r["level"], r["logger"]) for r in records] == [
        ("notification_sent", "info", "worker.pipeline"),
        ("odd_values", "info", "worker.pipeline"),
        ("odd_values", "info", "worker.pipeline"),
        ("heartbeat failed for Gruppe Süd", "warning", "aiokafka"),
        ("retrying", "warning", "worker.pipeline"),
        ("send_crashed", "error", "worker.pipeline"),
        ("callback failed", "error", "aiokafka"),
    ]
    assert all(set(r) >= {"event", "level", "timestamp"} for r in records)
    assert records[0]["shop"] == "Cửa hàng Sen"
    assert records[0]["timestamp"].endswith("Z")
    # what the fast encoder refuses still makes a line: other keys, big ints, other objects
    assert records[1]["keys"] == {"1": "a"}
    assert (records[2]["big"], records[1]["thing"], records[2]["thing"]) == (
        2**70,
        "Decimal('1.5')",
        "Decimal('1.5')",
    )
    assert '"Cửa hàng Sen"' in lines[0]
    # UTF-8 as it is; only what UTF-8 cannot carry is escaped, as stderr's text stream does
    assert records[4]["error"] == "452 Empf\udce4nger voll"
    assert stderr.count("\\u") == 1
    # a traceback is masked too, from either logger
    masked = "RuntimeError: 550 l***@example.com unknown; SMS to +84******567"
    for crash in records[-2:]:
        assert masked in crash["exception"]
    assert "lan.nguyen" not in stderr and "901234" not in stderr


SWAPPED_STDERR_SCRIPT = textwrap.dedent(
    """
    import io, sys
    from contextlib import redirect_stderr
    from worker.logs import configure, get_logger
    from worker.settings import LogFormat, LogSettings

    configure(LogSettings(level="INFO", format=LogFormat.JSON))
    sys.stderr.write("unfinished ")
    get_logger("worker.a").info("first")
    with redirect_stderr(io.StringIO()) as swapped:
        get_logger("worker.b").info("second")
    print(swapped.getvalue(), end="")
    """
)


def test_json_lines_keep_their_place_in_stderr_and_follow_a_swapped_stderr() -> None:
    """Text left in stderr without a newline is written before the next JSON line, and a
    stderr swapped for a text buffer after start-up gets the lines of loggers made then."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # stderr buffers
    result = subprocess.run(
        [sys.executable, "-c", SWAPPED_STDERR_SCRIPT],
        cwd=ROOT,
        env=env,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    before, _, line = result.stderr.decode().partition("{")
    assert before == "unfinished "
    assert json.loads("{" + line)["event"] == "first"
    assert json.loads(result.stdout)["event"] == "second"


def test_a_stderr_in_another_encoding_gets_every_line_in_that_encoding() -> None:
    """With stderr in Latin-1, the worker's lines and the standard library's come out in
    Latin-1 alike."""
    script = textwrap.dedent(
        """
        import logging
        from worker.logs import configure, get_logger
        from worker.settings import LogFormat, LogSettings

        configure(LogSettings(level="INFO", format=LogFormat.JSON))
        get_logger("worker.a").info("sent", shop="Gruppe Süd")
        logging.getLogger("aiokafka").warning("heartbeat failed for Gruppe Süd")
        """
    )
    env = {**os.environ, "PYTHONIOENCODING": "latin-1"}
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line.decode("latin-1")) for line in result.stderr.splitlines()]
    assert [line.get("shop") or line["event"] for line in lines] == [
        "Gruppe Süd",
        "heartbeat failed for Gruppe Süd",
    ]


async def test_lines_carry_the_record_context_of_their_task() -> None:
    """Lines carry what their task bound (their own keys win); a sibling task, a task started
    before the bind, and a new record context do not see it."""
    log = get_logger("worker.pipeline")

    async def line(event: str, **values: str) -> None:
        log.info(event, **values)

    async def record(name: str) -> None:
        new_context(topic="shipments", offset=name)
        started_before = asyncio.create_task(line("early"))
        bind(event_id=f"e-{name}")
        await started_before
        await asyncio.gather(line("sent", offset="own"))
        new_context()
        log.info("next_record")

    with capture_logs(processors=[merge_context]) as lines:
        await asyncio.gather(record("1"), record("2"))
    seen = sorted(
        tuple(line.get(k) for k in ("event", "topic", "event_id", "offset")) for line in lines
    )
    assert seen == [
        ("early", "shipments", None, "1"),
        ("early", "shipments", None, "2"),
        ("next_record", None, None, None),
        ("next_record", None, None, None),
        ("sent", "shipments", "e-1", "own"),
        ("sent", "shipments", "e-2", "own"),
    ]


def test_the_timestamp_is_utc_to_the_microsecond() -> None:
    """Every line's timestamp is an ISO 8601 UTC time with six fractional digits, now."""
    before = time.time()
    stamps = [add_timestamp(None, "info", {})["timestamp"] for _ in range(1000)]
    after = time.time()
    for stamp in stamps:
        assert len(stamp) == len("2026-11-21T08:15:00.123456Z")
        assert stamp.endswith("Z")
        at = datetime.fromisoformat(stamp)
        assert at.utcoffset() is not None and at.utcoffset().total_seconds() == 0
        assert before - 1e-6 <= at.timestamp() <= after + 1e-6
    assert add_timestamp(None, "info", {"x": 1})["x"] == 1


# text made of the pieces of addresses and numbers, and any text
_PIECES = ["a", "x.y", "+84901234567", "@ex.com", "@", ".", "-", ",", "*", "(", " ", "\n"]
_CONTACT_LIKE = st.lists(st.sampled_from(_PIECES), max_size=8).map("".join) | st.text(max_size=40)


@given(_CONTACT_LIKE)
def test_what_redaction_skips_has_nothing_left_to_mask(text: str) -> None:
    """A ``Masked`` value, which redaction does not search, holds no phone number and no
    address but with a masked local part; anything else mask_email makes is searched."""
    for masked in (mask_email(text), mask_phone(text)):
        if type(masked) is not Masked:
            continue
        assert _PHONE_IN_TEXT.search(masked) is None
        for address in _EMAIL_IN_TEXT.finditer(masked):
            local = address.group().rpartition("@")[0]
            assert local.endswith("***") and len(local) <= 4, masked


def test_an_address_with_an_odd_domain_is_searched_after_masking() -> None:
    """A domain that is not a host name keeps what it holds until redaction masks it."""
    masked = mask_email("x@ex.com,+84901234567")
    assert type(masked) is not Masked
    assert redact_contacts(None, "info", {"to": masked})["to"] == "x***@ex.com,+84******567"
    assert type(mask_email("lan.nguyen@mail.example.com")) is Masked


def _chain_line(name: str, method: str, event: dict[str, Any]) -> bytes:
    """The line ``configure``'s processor chain, with the JSON renderer, writes for
    ``event`` on a UTF-8 stderr."""
    logger = SimpleNamespace(name=name)
    for step in (
        merge_context,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        add_timestamp,
        structlog.processors.format_exc_info,
        redact_contacts,
    ):
        event = step(logger, method, event)
    rendered: str = structlog.processors.JSONRenderer(serializer=_json_text)(logger, method, event)
    return rendered.encode("utf-8", "backslashreplace")  # as stderr's text stream writes it


def test_the_json_line_of_odd_masked_and_failing_events() -> None:
    """Each event is one JSON line with the record context: contacts masked in values and in
    the traceback, keys JSON lacks and ints past 64 bits kept, other objects as their
    ``__structlog__()`` or repr, a lone surrogate from an SMTP reply escaped."""
    try:
        raise ValueError("bounce from an@example.com")
    except ValueError as exc:
        error = exc
    events = [
        ("warning", {"event": "x", "reason": "call +84901234567 or lan@example.com"}),
        ("warn", {"event": "x", "offset": "own", "keys": {1: "a"}, "big": 2**70}),
        ("error", {"event": "send_crashed", "exc_info": error, "n": Decimal("1.5")}),
        ("warning", {"event": "retry", "error": "452 Empf\udce4nger voll", "x": _Rendered()}),
    ]
    new_context(topic="shipments", offset=7)
    try:
        lines = [_chain_line("worker.x", method, dict(event)) for method, event in events]
    finally:
        new_context()
    assert all(b"\n" not in line for line in lines)
    masked, odd, failed, retry = (json.loads(line) for line in lines)
    assert masked["reason"] == "call +84******567 or l***@example.com"
    assert (masked["level"], masked["logger"], masked["topic"]) == (
        "warning",
        "worker.x",
        "shipments",
    )
    assert (odd["offset"], odd["keys"], odd["big"]) == ("own", {"1": "a"}, 2**70)
    assert failed["n"] == "Decimal('1.5')"
    assert "ValueError: bounce from a***@example.com" in failed["exception"]
    assert (retry["error"], retry["x"]) == (
        "452 Empf\udce4nger voll",
        {"rendered": "for structlog"},
    )


class _Rendered:
    def __structlog__(self) -> dict[str, str]:
        return {"rendered": "for structlog"}


def test_terminal_text_masks_contacts_and_replaces_what_a_terminal_would_act_on() -> None:
    """Contacts are masked and every control, bidi, invisible or surrogate character becomes
    U+FFFD, so nothing in the text can move, recolour or reorder the line around it."""
    hostile = "550 <lan.nguyen@example.com>\x1b[2J\x1b]0;t\x07 +84901234567\u202e\u200b\r\n\udce4"
    assert terminal_text(hostile) == (
        "550 <l***@example.com>\ufffd[2J\ufffd]0;t\ufffd +84******567" + "\ufffd" * 5
    )


def test_terminal_text_is_cut_to_its_limit_after_masking() -> None:
    """Text past the limit is cut to ``limit`` characters ending in an ellipsis, and an
    address across the cut is masked before it is cut."""
    text = "x" * 190 + " lan.nguyen@example.com and more"
    shown = terminal_text(text, limit=200)
    assert shown == "x" * 190 + " l***@exa\u2026"
    assert terminal_text("short", limit=5) == "short"
    assert len(terminal_text("y" * 10_000)) == 200


@given(st.text(max_size=300))
def test_terminal_text_is_always_one_printable_line_within_its_limit(text: str) -> None:
    """Whatever the text, what is shown is printable, without a line break, and at most the
    limit long."""
    shown = terminal_text(text, limit=120)
    assert shown.isprintable() and len(shown) <= 120
