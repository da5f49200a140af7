"""What makes an address the worker sends from or to usable, as pure rules: a mailbox it can
write as it is (the sender and reply-to addresses) and an HTTP URL it can post to (the SMS
provider's). The settings check configured values with these at start-up, and the adapters
that send (the mail builder, the HTTP client) hold what they are given to the same rules, so a
value that passes one passes the other. Also the unsubscribe URL template
(``UNSUBSCRIBE_URL``), which ``channels/mailheaders.py`` fills per message.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from urllib.parse import urlsplit

# RFC 5322's dot-atom on both sides: printable ASCII "atext" runs joined by single dots, at
# most 64 octets before the "@", and a domain of hostname labels with at least one dot. That
# is exactly what the email package accepts as an ``addr_spec`` among such strings (property
# test), at 0.4 us instead of 34 for parsing it with ``email.headerregistry.Address``.
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_EMAIL = re.compile(rf"(?=[^@]{{1,64}}@){_ATOM}(?:\.{_ATOM})*@{_LABEL}(?:\.{_LABEL})+\Z")


def usable_email(address: str) -> bool:
    """A plain ``local@domain.tld`` that the email package will also accept as a header: the
    customer's address, and the shop's support address."""
    return _EMAIL.match(address) is not None


def plain_mailbox(address: str) -> str:
    """``address``, if it can stand as it is in a header and on a MAIL or RCPT line: one
    ``local@domain`` of printable ASCII (so no line break) without specials or quoting
    (SMTPUTF8 is not used). Otherwise ValueError."""
    plain = address.isascii() and address.isprintable()
    if not plain or any(c in address for c in '<>,;" ') or address.count("@") != 1:
        raise ValueError(
            f"not a single plain address: {address!r} (printable ASCII without quoting;"
            " SMTPUTF8 is not used)"
        )
    return address


@dataclass(frozen=True, slots=True)
class HttpUrl:
    """Where an http(s) URL points, in the pieces a request to it is made of."""

    https: bool
    host: str  # the host name, to connect to
    port: int
    authority: str  # the URL's host[:port], as the Host header carries it
    target: str  # the path and query, as the request line carries them


def http_url(url: str) -> HttpUrl:
    """``url`` in pieces, if a request can be sent to it: http or https with a host, no
    credentials, a valid port, and a host and path of printable ASCII (percent-encoded,
    IDNA for a host) without spaces, which go on the request's head as they are. Otherwise
    ValueError."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{url!r} is not an http(s) URL with a host")
    if parts.username is not None or parts.password is not None:
        raise ValueError(f"{url!r}: credentials in the URL are not supported")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise ValueError(f"{url!r}: {exc}") from exc
    if not _head_text(parts.netloc):
        raise ValueError(f"{url!r}: the host must be ASCII (IDNA for other names)")
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    if not _head_text(target):
        raise ValueError(f"{url!r}: the path must be percent-encoded ASCII")
    return HttpUrl(parts.scheme == "https", parts.hostname, port, parts.netloc, target)


def _head_text(text: str) -> bool:
    return text.isascii() and text.isprintable() and " " not in text


UNSUBSCRIBE_FIELDS = ("email", "customer_id", "order_id", "event_id", "locale")
# the URL between angle brackets: printable ASCII without spaces, quotes or brackets
_UNSUBSCRIBE_URI = re.compile(r"https://[!#-;=?-~]+\Z")


def unsubscribe_template(template: str) -> str:
    """``template`` when it names only ``UNSUBSCRIBE_FIELDS`` (no conversions or format
    specs) and makes an https URL; else ValueError saying what is wrong."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"{template!r} is not a format template: {exc}") from exc
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if name not in UNSUBSCRIBE_FIELDS or spec or conversion:
            raise ValueError(f"{{{name}}}: the fields are {{{'}, {'.join(UNSUBSCRIBE_FIELDS)}}}")
    sample = template.format(**dict.fromkeys(UNSUBSCRIBE_FIELDS, "x"))
    if not _UNSUBSCRIBE_URI.match(sample):
        raise ValueError(f"{template!r} is not an https URL (RFC 8058 needs https)")
    return template
