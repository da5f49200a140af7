"""Cutting text where people see a character end: the one place that knows what a grapheme
cluster's pieces are, for every part of the worker that shortens text (an SMS field, an
email's display name), and how long a text is in UTF-16 code units (what SMS count)."""

from __future__ import annotations

import unicodedata


def utf16_length(text: str) -> int:
    """How long ``text`` is in UTF-16 code units: a character outside the BMP (an emoji)
    counts two."""
    if text.isascii():
        return len(text)
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


def cut(text: str, units: int) -> str:
    """The longest start of ``text`` within ``units`` UTF-16 code units that does not end
    inside a character as people see it (a grapheme cluster)."""
    return text[: boundary(text, _within(text, units))]


def boundary(text: str, at: int) -> int:
    """The last index at or before ``at`` where ``text`` may end without splitting a grapheme
    cluster (0 when the first one already reaches past ``at``)."""
    while 0 < at < len(text) and inside_cluster(text, at):
        at -= 1
    return at


def _within(text: str, units: int) -> int:
    """How many code points of ``text`` fit in ``units`` UTF-16 code units."""
    if units <= 0:
        return 0
    if utf16_length(text) == len(text):  # nothing outside the BMP: a code point is a unit
        return min(units, len(text))
    count = 0
    for index, char in enumerate(text):
        count += 2 if char > "\uffff" else 1
        if count > units:
            return index
    return len(text)


def inside_cluster(text: str, at: int) -> bool:
    """Whether ``text[at - 1]`` and ``text[at]`` belong to one grapheme cluster: a combining
    mark or variation selector, a joiner, a skin tone, emoji tags, Hangul jamo that continue
    a syllable, a flag's second letter, or a surrogate pair's second half."""
    before, after = text[at - 1], text[at]
    if unicodedata.category(after) in ("Mn", "Mc", "Me") or "\u200d" in (before, after):
        return True
    if "\U0001f3fb" <= after <= "\U0001f3ff" or "\U000e0020" <= after <= "\U000e007f":
        return True
    if "\u1160" <= after <= "\u11ff" or "\ud7b0" <= after <= "\ud7ff":
        return True
    if "\ud800" <= before <= "\udbff":
        return True
    return _flag_letter(before) and _flag_letter(after) and _flag_letters_before(text, at) % 2 == 1


def _flag_letter(char: str) -> bool:
    return "\U0001f1e6" <= char <= "\U0001f1ff"


def _flag_letters_before(text: str, at: int) -> int:
    count = 0
    while at - count > 0 and _flag_letter(text[at - count - 1]):
        count += 1
    return count
