"""The Kafka header names the worker writes, and how it writes their values.

Producers own every other header. A record on the main topic is the producers' alone: any of
the names below that it carries was set by someone else and is dropped before the pipeline
sees it (``Envelope.from_producer``). Only the worker's own topics, the retry topic among
them, are read with these headers.
"""

from __future__ import annotations

import re

# where a dead letter or retry stems from: the main-topic record
ORIGINAL_TOPIC = "original.topic"
ORIGINAL_PARTITION = "original.partition"
ORIGINAL_OFFSET = "original.offset"
ORIGIN = (ORIGINAL_TOPIC, ORIGINAL_PARTITION, ORIGINAL_OFFSET)
# the main-topic record's timestamp (milliseconds since the epoch, as Kafka keeps it), when
# it has one: the end-to-end delay of a retry is measured from it
ORIGINAL_TIMESTAMP = "original.timestamp"
# why a record is on the dead-letter topic
ERROR_TYPE = "error.type"
ERROR_MESSAGE = "error.message"
ERROR_CHANNEL = "error.channel"
# a retry record's state
RETRY_CHANNEL = "retry.channel"
RETRY_ATTEMPT = "retry.attempt"
RETRY_DUE = "retry.due"
RETRY_FIRST_FAILED = "retry.first_failed_at"
RETRY_HISTORY = "retry.history"
RETRY_HELD = "retry.held_until"  # a notification held for quiet hours: when they end
# a dead letter put back by `dlq replay` (on the retry topic: see worker/dlq.py)
REPLAY_FROM = "replay.from"
REPLAY_REASON = "replay.reason"

OURS = ("original.", "error.", "retry.", "replay.")
MAX_TEXT = 1000  # characters of a free-text value (a server's reply, an exception's message)

# C0 and C1 controls but tab, DEL, and the bidi controls: a header value is read in terminals
_UNPRINTABLE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def is_ours(name: str) -> bool:
    return name.startswith(OURS)


def text(value: str, limit: int = MAX_TEXT) -> bytes:
    """A free-text value as header bytes: at most ``limit`` characters, controls replaced by
    spaces, and whatever UTF-8 cannot carry (a lone surrogate from bytes a server sent that
    were not UTF-8) as ``U+FFFD``. Never raises."""
    printable = _UNPRINTABLE.sub(" ", value[:limit])
    return printable.encode("utf-8", "replace")


def decoded(value: bytes | None) -> str | None:
    """A header value as text, whatever bytes it holds."""
    return None if value is None else value.decode("utf-8", "replace")
