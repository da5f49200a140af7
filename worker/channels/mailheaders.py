"""The headers that make an order's emails one conversation, and offer one-click unsubscribe.

Threading: every email of an order names the order's root Message-ID in ``In-Reply-To`` and
``References``. The root is derived from the order id alone, on the sender's domain
(``<order.<hash>@domain>``), so it is the same for every status, every shipment of the order,
every retry and every replica, without storing anything. No message carries it as its own
Message-ID: clients that thread by references (Apple Mail, Thunderbird, Outlook) group the
emails under it; Gmail also wants the same subject, which the templates give every email of an
order (``templates/<locale>/email/_subject.txt``).

Unsubscribe (RFC 2369, RFC 8058): with ``UNSUBSCRIBE_URL`` every email carries
``List-Unsubscribe: <https://...>`` (and ``<mailto:...>`` with ``UNSUBSCRIBE_MAILTO``) and
``List-Unsubscribe-Post: List-Unsubscribe=One-Click``. The URL is a ``str.format`` template
over ``addresses.UNSUBSCRIBE_FIELDS`` (checked at start-up), each value percent-escaped; a
message that lacks a field the template uses (an event without ``customer.id``) gets no https
link rather than a wrong one.
"""

from __future__ import annotations

import hashlib
import string
from urllib.parse import quote

from worker.channels import Outgoing

ONE_CLICK = "List-Unsubscribe-Post: List-Unsubscribe=One-Click"
MAX_URI = 900  # octets: a List-Unsubscribe line stays within SMTP's 998


def thread_root(order_id: str, domain: str) -> str:
    """The order's root Message-ID: stable, and saying nothing of the order id itself."""
    digest = hashlib.sha256(order_id.encode("utf-8")).hexdigest()[:32]
    return f"<order.{digest}@{domain}>"


def thread_headers(order_id: str, domain: str) -> list[str]:
    root = thread_root(order_id, domain)
    return [f"In-Reply-To: {root}", f"References: {root}"]


class Unsubscribe:
    """The unsubscribe headers of each message, from the configured template and address."""

    def __init__(self, url_template: str | None, mailto: str | None) -> None:
        self._template = url_template
        self._fields = {n for _, n, _, _ in string.Formatter().parse(url_template or "") if n}
        self._mailto = f"<mailto:{mailto}?subject=unsubscribe>" if mailto else None

    def headers(self, message: Outgoing) -> list[str]:
        url = self._url(message)
        uris = [u for u in (url, self._mailto) if u]
        if not uris:
            return []
        listed = "List-Unsubscribe: " + ",\r\n ".join(uris)  # one URI a line
        return [listed, ONE_CLICK] if url else [listed]

    def _url(self, message: Outgoing) -> str | None:
        if self._template is None:
            return None
        values = {
            "email": message.address,
            "customer_id": message.customer_id or "",
            "order_id": message.order_id,
            "event_id": message.event_id,
            "locale": message.locale,
        }
        if any(not values[name] for name in self._fields):
            return None
        url = self._template.format(**{k: quote(v, safe="") for k, v in values.items()})
        return f"<{url}>" if len(url) <= MAX_URI else None
