"""Delivery channels: one ``Sender`` per channel, and the errors that say what happens next.

    DeliveryError
     ├── TransientDeliveryError   retry later: connection refused, timeout, SMTP 4xx, HTTP 429/5xx
     └── PermanentDeliveryError   dead-letter this channel's notification: SMTP 5xx, HTTP 4xx

Adapters wrap their library's errors in these (``raise ... from exc``), so nothing above the
adapters imports aiosmtplib or httptools.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Protocol


class DeliveryError(Exception):
    """A notification was not delivered."""


class TransientDeliveryError(DeliveryError):
    """The same send may succeed later."""


class PermanentDeliveryError(DeliveryError):
    """The same send will fail again; retrying is pointless."""


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One rendered notification to one address."""

    channel: str
    event_id: str
    status: str
    locale: str
    address: str  # an email address, or an E.164 number
    recipient_name: str | None
    text: str
    subject: str = ""
    html: str = ""


class Sender(Protocol):
    async def send(self, message: Outgoing) -> str | None:
        """Deliver ``message`` or raise a DeliveryError; return the id the message goes by
        (an email's Message-ID, the SMS provider's message id), None when there is none."""

    async def close(self) -> None: ...


def idempotency_key(event_id: str, channel: str) -> str:
    """Stable per (event, channel): the same notification always carries the same key."""
    return hashlib.sha256(f"{event_id}\x00{channel}".encode()).hexdigest()[:40]
