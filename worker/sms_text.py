"""What an SMS costs: its encoding, its length in that encoding and its segments; the budget
an SMS must fit; and the unaccented form some locales send.

Encodings (3GPP TS 23.038):

- ``gsm7``: every character is in the GSM 7-bit default alphabet or its extension table.
  A character of the basic table is one septet, one of the extension table (``€ [ ] { } ~ ^
  | \\`` and form feed) two: an escape, then the character. 160 septets fit one SMS; a longer
  text is sent as segments of 153 (the rest carries the concatenation header).
- ``ucs2``: anything else. Counted in UTF-16 code units, as every provider counts it (an
  emoji outside the BMP is a surrogate pair: two). 70 units fit one SMS, else 67 a segment.

A segment never ends between an escape and its character, nor inside a surrogate pair (phones
would show two broken halves), so a text with such characters may need one segment more than
its length divided by 153 or 67 says. The alphabet comes from the ``gsm0338`` codec's tables,
decoded once at import; counting here is a regex scan, since that codec's ``encode`` builds
its bytes one character at a time and costs many times a whole render
(``tests/test_sms_text.py`` checks the count against it).

Unaccented: Vietnamese written without diacritics is how many people text, and it is GSM-7:
two to three times cheaper than the UCS-2 text. ``unaccented`` drops the combining diacritical
marks (U+0300 to U+036F) and writes đ and Đ as d and D; links stay as they are, since a
changed link leads elsewhere.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from enum import StrEnum

import gsm0338  # type: ignore[import-untyped]  # registers the "gsm03.38" codec

from worker.graphemes import utf16_length

# Twilio refuses a body over 1,600 characters
PROVIDER_MAX_LENGTH = 1600
# Twilio advises at most 10 segments: more may not be delivered in one piece
MAX_SEGMENTS_LIMIT = 10
# Four segments: every template with realistic fields in every locale fits
# (``python -m worker check`` shows the counts), and a long carrier detail or place name
# is shortened rather than making one SMS cost five or more.
MAX_SEGMENTS = 4

GSM7_SINGLE, GSM7_SEGMENT = 160, 153
UCS2_SINGLE, UCS2_SEGMENT = 70, 67

_ESCAPE = 0x1B


def _gsm_tables() -> tuple[frozenset[str], frozenset[str]]:
    """The basic table and the extension table, as the codec decodes them."""
    codec = gsm0338.Codec.NAME
    basic = {bytes([code]).decode(codec) for code in range(128) if code != _ESCAPE}
    extension = set()
    for code in range(128):
        try:
            extension.add(bytes([_ESCAPE, code]).decode(codec))
        except UnicodeDecodeError:
            continue
    return frozenset(basic), frozenset(extension)


GSM7_BASIC, GSM7_EXTENSION = _gsm_tables()
GSM7 = GSM7_BASIC | GSM7_EXTENSION


def _outside(alphabet: frozenset[str]) -> re.Pattern[str]:
    """A pattern for one character not in ``alphabet``: a regex scan is several times faster
    than a set's ``issuperset`` over a text."""
    return re.compile(f"[^{''.join(re.escape(char) for char in sorted(alphabet))}]")


_NOT_BASIC = _outside(GSM7_BASIC)
_NOT_GSM7 = _outside(GSM7)


class Encoding(StrEnum):
    GSM7 = "gsm7"
    UCS2 = "ucs2"


@dataclass(frozen=True, slots=True)
class SmsCost:
    """``units``: septets for ``gsm7``, UTF-16 code units for ``ucs2``."""

    encoding: Encoding
    units: int
    segments: int


def is_gsm7(text: str) -> bool:
    return _NOT_GSM7.search(text) is None


def measure(text: str) -> SmsCost:
    """The encoding ``text`` travels in, its length in that encoding and its segments."""
    first = _NOT_BASIC.search(text)
    if first is None or _NOT_GSM7.search(text, first.start()) is None:
        escaped = 0 if first is None else sum(text.count(char) for char in GSM7_EXTENSION)
        septets = len(text) + escaped
        if septets <= GSM7_SINGLE or not escaped:
            return SmsCost(Encoding.GSM7, septets, _segments(septets, GSM7_SINGLE, GSM7_SEGMENT))
        return SmsCost(Encoding.GSM7, septets, _packed(_septets(text), septets, GSM7_SEGMENT))
    units = utf16_length(text)
    if units <= UCS2_SINGLE or units == len(text):
        return SmsCost(Encoding.UCS2, units, _segments(units, UCS2_SINGLE, UCS2_SEGMENT))
    return SmsCost(Encoding.UCS2, units, _packed(_utf16_units(text), units, UCS2_SEGMENT))


def _segments(units: int, single: int, segment: int) -> int:
    return 1 if units <= single else -(-units // segment)


def _packed(widths: list[int], total: int, segment: int) -> int:
    """Segments of ``segment`` units, none splitting a character of width 2."""
    count, used = 1, 0
    for width in widths:
        if used + width > segment:
            count, used = count + 1, 0
        used += width
    return count


def _septets(text: str) -> list[int]:
    return [2 if char in GSM7_EXTENSION else 1 for char in text]


def _utf16_units(text: str) -> list[int]:
    return [2 if char > "\uffff" else 1 for char in text]


def ellipsis_for(text: str) -> str:
    """ "…" is not in the GSM alphabet: in a 7-bit SMS it would make the whole text UCS-2."""
    return "..." if is_gsm7(text) else "…"


@dataclass(frozen=True, slots=True)
class SmsBudget:
    """What one SMS may cost: at most ``segments`` segments and ``length`` UTF-16 code units
    (the provider's hard limit, or less)."""

    segments: int = MAX_SEGMENTS
    length: int = PROVIDER_MAX_LENGTH

    def __post_init__(self) -> None:
        if not 1 <= self.segments <= MAX_SEGMENTS_LIMIT:
            raise ValueError(f"segments must be 1 to {MAX_SEGMENTS_LIMIT}: {self.segments}")
        if not 3 <= self.length <= PROVIDER_MAX_LENGTH:  # 3: room for an ellipsis
            raise ValueError(f"length must be 3 to {PROVIDER_MAX_LENGTH}: {self.length}")

    def fits(self, cost: SmsCost, text: str) -> bool:
        return cost.segments <= self.segments and utf16_length(text) <= self.length

    def excess(self, cost: SmsCost, text: str) -> int:
        """About how many units ``text`` is over: at least 1 when it does not fit (a segment
        lost to a character it could not split is not in the units), else 0."""
        if self.fits(cost, text):
            return 0
        over = max(cost.units - self.capacity(cost.encoding), utf16_length(text) - self.length)
        return max(1, over)

    def capacity(self, encoding: Encoding) -> int:
        """The most units of ``encoding`` that ``segments`` segments hold."""
        single, segment = (
            (GSM7_SINGLE, GSM7_SEGMENT)
            if encoding is Encoding.GSM7
            else (UCS2_SINGLE, UCS2_SEGMENT)
        )
        return single if self.segments == 1 else segment * self.segments


_LINK = re.compile(r"https?://\S+")
_DIACRITICS = re.compile("[\u0300-\u036f]+")
_STROKED_D = str.maketrans("đĐ", "dD")


def unaccented(text: str) -> str:
    """``text`` without diacritics (``Đơn hàng đã giao`` -> ``Don hang da giao``), its links
    as they are."""
    if text.isascii():
        return text
    pieces = _LINK.split(text)
    links = _LINK.findall(text)
    out = [_without_diacritics(pieces[0])]
    for link, piece in zip(links, pieces[1:], strict=True):
        out += [link, _without_diacritics(piece)]
    return "".join(out)


def _without_diacritics(text: str) -> str:
    if text.isascii():
        return text
    decomposed = unicodedata.normalize("NFD", text.translate(_STROKED_D))
    return unicodedata.normalize("NFC", _DIACRITICS.sub("", decomposed))
