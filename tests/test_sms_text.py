"""What an SMS costs: GSM-7 (basic table one septet, extension table two) or UCS-2 (UTF-16 code
units, an emoji two), segments of 160/153 and 70/67 that never split an escape or a surrogate
pair, the budget's arithmetic, and Vietnamese without diacritics."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.sms_text import (
    GSM7,
    GSM7_EXTENSION,
    MAX_SEGMENTS,
    MAX_SEGMENTS_LIMIT,
    PROVIDER_MAX_LENGTH,
    Encoding,
    SmsBudget,
    SmsCost,
    ellipsis_for,
    measure,
    unaccented,
)

EXTENSION = "€[]{}~^|\\"


def gsm7(units: int, segments: int) -> SmsCost:
    return SmsCost(Encoding.GSM7, units, segments)


def ucs2(units: int, segments: int) -> SmsCost:
    return SmsCost(Encoding.UCS2, units, segments)


def test_the_extension_table_is_the_one_3gpp_defines() -> None:
    """The characters that cost two septets are exactly € [ ] { } ~ ^ | \\ and form feed."""
    assert set(EXTENSION + "\f") == GSM7_EXTENSION


@pytest.mark.parametrize(
    ("text", "cost"),
    [
        ("a" * 160, gsm7(160, 1)),
        ("a" * 161, gsm7(161, 2)),
        ("a" * 306, gsm7(306, 2)),
        ("a" * 307, gsm7(307, 3)),
        ("Grüße aus Köln, 5 £ oder 6 $? Ñ, ß, à, é, @, ¿, Δ", gsm7(49, 1)),
        ("line\nbreak\rreturn", gsm7(17, 1)),
        ("€" * 80, gsm7(160, 1)),  # each is an escape and a septet
        ("€" * 81, gsm7(162, 2)),
        ("a" * 159 + "[", gsm7(161, 2)),
        ("Price: 10€ [incl. {VAT}] ~ ^ | \\", gsm7(41, 1)),
        ("a" * 70, gsm7(70, 1)),
        ("ế" * 70, ucs2(70, 1)),
        ("ế" * 71, ucs2(71, 2)),
        ("한" * 134, ucs2(134, 2)),
        ("한" * 135, ucs2(135, 3)),
        ("😀" * 35, ucs2(70, 1)),  # a surrogate pair each
        ("😀" * 36, ucs2(72, 2)),
        ("a" * 150 + "😀", ucs2(152, 3)),  # one emoji makes all of it UCS-2
        ("Đơn hàng đã giao …", ucs2(18, 1)),  # "…" is not GSM
        ("a€ế", ucs2(3, 1)),  # € is one UTF-16 unit
    ],
)
def test_encoding_units_and_segments(text: str, cost: SmsCost) -> None:
    """Each text's encoding, length in that encoding, and segment count."""
    assert measure(text) == cost


def test_a_segment_never_ends_between_an_escape_and_its_character() -> None:
    """306 septets fit two segments of 153 unless an extension character would straddle the
    boundary: then it moves to the next segment, and the text needs three."""
    assert measure("a" * 151 + "€" + "a" * 153) == gsm7(306, 2)  # € ends segment one
    assert measure("a" * 152 + "€" + "a" * 152) == gsm7(306, 3)


def test_a_segment_never_ends_inside_a_surrogate_pair() -> None:
    """134 UTF-16 units fit two segments of 67 unless an emoji would straddle the boundary."""
    assert measure("ế" * 65 + "😀" + "ế" * 67) == ucs2(134, 2)
    assert measure("ế" * 66 + "😀" + "ế" * 66) == ucs2(134, 3)


@given(st.text(st.sampled_from(sorted(GSM7)), max_size=700))
def test_septets_are_what_the_gsm0338_codec_encodes(text: str) -> None:
    """The fast count agrees with its slow twin: the codec's encoded length, an escape byte
    before each extension character."""
    cost = measure(text)
    assert cost.encoding is Encoding.GSM7
    assert cost.units == len(text.encode("gsm03.38"))


# the escape itself (which the codec maps as a character) is no character of a text
@given(st.text(st.characters(exclude_characters="\x1b"), max_size=300))
def test_gsm7_exactly_when_the_codec_can_encode_it(text: str) -> None:
    """A text is GSM-7 exactly when the gsm0338 codec encodes it; else it is counted in
    UTF-16 code units."""
    cost = measure(text)
    try:
        encoded = text.encode("gsm03.38")
    except UnicodeEncodeError:
        units = len(text.encode("utf-16-le", "surrogatepass")) // 2
        assert (cost.encoding, cost.units) == (Encoding.UCS2, units)
    else:
        assert (cost.encoding, cost.units) == (Encoding.GSM7, len(encoded))


@given(st.text(st.sampled_from(["a", "€", "ế", "😀", "한", " "]), max_size=800))
def test_segments_are_the_fewest_that_hold_the_text_without_splitting_a_character(
    text: str,
) -> None:
    """Filling segments one character at a time (the slow twin) gives the same count, and a
    text fits one segment exactly when it is within 160 septets or 70 units."""
    cost = measure(text)
    single, size = (160, 153) if cost.encoding is Encoding.GSM7 else (70, 67)

    def width(char: str) -> int:
        if cost.encoding is Encoding.GSM7:
            return 2 if char in GSM7_EXTENSION else 1
        return 2 if ord(char) > 0xFFFF else 1

    if cost.units <= single:
        assert cost.segments == 1
        return
    segments, used = 1, 0
    for char in text:
        if used + width(char) > size:
            segments, used = segments + 1, 0
        used += width(char)
    assert cost.segments == segments


def test_the_ellipsis_keeps_a_gsm7_text_gsm7() -> None:
    """Three dots for a GSM-7 text ("…" would make it UCS-2), one character otherwise."""
    assert ellipsis_for("Your order has shipped") == "..."
    assert ellipsis_for("Đơn hàng đã giao") == "…"


def test_the_default_budget_and_its_limits() -> None:
    """Four segments by default; no budget reaches past the provider's 1,600 characters."""
    assert SmsBudget() == SmsBudget(MAX_SEGMENTS, PROVIDER_MAX_LENGTH) == SmsBudget(4, 1600)
    widest = SmsBudget(MAX_SEGMENTS_LIMIT)
    assert widest.capacity(Encoding.GSM7) == 1530 <= PROVIDER_MAX_LENGTH
    assert widest.capacity(Encoding.UCS2) == 670


@pytest.mark.parametrize(
    ("segments", "length"), [(0, 1600), (MAX_SEGMENTS_LIMIT + 1, 1600), (4, 2), (4, 1601)]
)
def test_a_budget_outside_the_providers_limits_is_refused(segments: int, length: int) -> None:
    """No segments, more than ten, no room for an ellipsis, or past 1,600 units: a bug."""
    with pytest.raises(ValueError, match="must be"):
        SmsBudget(segments, length)


def test_a_budget_says_how_far_a_text_is_over() -> None:
    """Capacity is 160/70 for one segment, 153/67 a segment beyond; the excess is what a text
    must lose, at least 1 when a split character costs a segment, 0 when it fits."""
    one, two = SmsBudget(1), SmsBudget(2)
    assert (one.capacity(Encoding.GSM7), two.capacity(Encoding.GSM7)) == (160, 306)
    assert (one.capacity(Encoding.UCS2), two.capacity(Encoding.UCS2)) == (70, 134)
    text = "a" * 170
    assert (one.excess(measure(text), text), two.excess(measure(text), text)) == (10, 0)
    straddling = "ế" * 66 + "😀" + "ế" * 66
    assert two.excess(measure(straddling), straddling) == 1
    short = SmsBudget(4, length=100)
    assert short.excess(measure("a" * 130), "a" * 130) == 30


@pytest.mark.parametrize(
    ("text", "plain"),
    [
        ("Đơn hàng ORD-1 đã được giao", "Don hang ORD-1 da duoc giao"),
        ("Cửa hàng Sen: Cảm ơn bạn đã mua sắm!", "Cua hang Sen: Cam on ban da mua sam!"),
        ("ĐẶNG Ữ Ỳ ỹ ặ ậ ở ợ ự", "DANG U Y y a a o o u"),
        ("Bưu cục Cầu Giấy, Hà Nội", "Buu cuc Cau Giay, Ha Noi"),
        ("e\u0301 decomposed", "e decomposed"),
        (
            "Theo dõi: https://shop.example/đơn-hàng?q=ế ngay",
            "Theo doi: https://shop.example/đơn-hàng?q=ế ngay",
        ),
        ("한국 택배 👍🏽 €", "한국 택배 👍🏽 €"),
        ("plain ascii", "plain ascii"),
    ],
)
def test_unaccented_drops_diacritics_and_keeps_links_and_other_scripts(
    text: str, plain: str
) -> None:
    """Vietnamese loses its tone marks and đ/Đ become d/D; a link stays exactly as it was
    (it would lead elsewhere), and Hangul syllables, emoji and € are left alone."""
    assert unaccented(text) == plain


def test_unaccented_vietnamese_is_gsm7_and_cheaper() -> None:
    """A Vietnamese SMS of 139 characters is three UCS-2 segments, unaccented one GSM-7."""
    text = (
        "Cửa hàng Sen: Đơn ORD-5521 sẽ được giao hôm nay. Bạn vui lòng để ý điện thoại để "
        "nhận hàng nhé.\nTheo dõi: https://track.example/VN123456789"
    )
    assert measure(text) == ucs2(139, 3)
    assert measure(unaccented(text)) == gsm7(139, 1)
