"""Delivery channels: one ``Sender`` per channel, and the errors that say what happens next.

    DeliveryError
     ├── TransientDeliveryError   retry later: connection refused, timeout, SMTP 4xx, HTTP 5xx
     │    └── ProviderThrottled   HTTP 429: the account is over its rate; every send of the
     │                            channel waits (``Retry-After``, when the provider gave one)
     └── PermanentDeliveryError   dead-letter this channel's notification: SMTP 5xx, HTTP 4xx
          └── RecipientOptedOut   the provider says the recipient opted out (Twilio 21610):
                                  remember it and skip the channel, not a failure

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


class ProviderThrottled(TransientDeliveryError):
    """The provider refused for rate (HTTP 429). ``retry_after``: seconds it asked the sender
    to wait, when it said."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PermanentDeliveryError(DeliveryError):
    """The same send will fail again; retrying is pointless."""


class RecipientOptedOut(PermanentDeliveryError):
    """The provider refuses because the recipient opted out (replied STOP): every later send
    to the address would be refused the same way until they opt back in."""


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
    # an SMS's cost, as rendered: ``gsm7`` or ``ucs2``, and how many segments it takes
    encoding: str = ""
    segments: int = 0
    order_id: str = ""  # emails of one order thread together
    customer_id: str | None = None


class Sender(Protocol):
    async def send(self, message: Outgoing) -> str | None:
        """Deliver ``message`` or raise a DeliveryError; return the id the message goes by
        (an email's Message-ID, the SMS provider's message id), None when there is none."""

    async def close(self) -> None: ...


def idempotency_key(event_id: str, channel: str) -> str:
    """Stable per (event, channel): the same notification always carries the same key."""
    return hashlib.sha256(f"{event_id}\x00{channel}".encode()).hexdigest()[:40]
