"""SMS length: every rendered SMS stays within the renderer's budget (segments, in the encoding
its text needs, and the provider's hard limit), for every template and locale, whatever the
event's fields hold. The free-text fields give way first, each ending in an ellipsis, so the
template's own words stay; cutting the whole text is the last resort, and nothing is ever cut
inside a character as people see it."""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path
from typing import Any, get_args

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.factories import event
from worker.events import Event, Shop, Status
from worker.graphemes import cut, utf16_length
from worker.render import Renderer, RenderError
from worker.sms_text import Encoding, SmsBudget, measure, unaccented

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
STATUSES: tuple[str, ...] = get_args(Status)
LOCALES = ("en", "vi", "ko", "de")
ELLIPSES = ("…", "...")

# a carrier's note as each language writes one, repeated to the longest detail an event may have
NOTES = {
    "en": "Nobody was home and the recipient did not answer the phone. ",
    "vi": "Người nhận không có nhà, đã gọi điện nhưng không liên lạc được. ",
    "ko": "수령인이 부재중이며 전화를 받지 않았습니다. ",
    "de": "Niemand war zu Hause und der Empfänger ging nicht ans Telefon. ",
}

# the longest support address an event may carry: a 64-octet local part and a domain that
# fills the 254 octets (events refuse a longer local part, as RFC 5321 does)
LONGEST_EMAIL = "e" * 64 + "@" + "d" * 63 + "." + "d" * 63 + "." + "d" * 57 + ".com"


DEFAULT = SmsBudget()


@pytest.fixture(scope="module")
def renderer() -> Renderer:
    """A renderer over the repository's templates with the default budget."""
    return Renderer(TEMPLATES, "en", Shop(name="Our shop"))


def fits(text: str, budget: SmsBudget = DEFAULT) -> bool:
    return budget.fits(measure(text), text)


def an_event(status: str, locale: str, **shipment: Any) -> Event:
    return Event.model_validate(
        event(
            "evt-len",
            status,
            customer={"locale": locale},
            **{
                "shipment": shipment,
            },
        )
    )


@pytest.mark.parametrize("locale", LOCALES)
def test_a_2000_character_detail_gives_way_and_the_template_keeps_its_words(
    renderer: Renderer, locale: str
) -> None:
    """The delivery_failed SMS with the longest detail fits the budget: its text is the short
    detail's text with the detail cut at a word's end and an ellipsis, all else unchanged."""
    detail = (NOTES[locale] * 100)[:2000]
    short = renderer.sms(an_event("delivery_failed", locale, detail="DETAIL")).text
    before, after = short.split("DETAIL")
    text = renderer.sms(an_event("delivery_failed", locale, detail=detail)).text
    assert fits(text)
    assert text.startswith(before) and text.endswith(after)
    kept = text[len(before) : len(text) - len(after)]
    ellipsis = next(e for e in ELLIPSES if kept.endswith(e))
    shortened = kept.removesuffix(ellipsis)
    assert detail.startswith(shortened)
    assert detail[len(shortened)] == " "  # cut where a word ends
    assert len(kept) > 100  # the detail was shortened to fit, not dropped


def test_the_events_email_keeps_the_field_its_sms_shortened(renderer: Renderer) -> None:
    """The shortening works on a copy: the email of the same event, whose context the
    renderer keeps for it, shows the whole detail."""
    detail = (NOTES["en"] * 100)[:2000].strip()
    long = an_event("delivery_failed", "en", detail=detail)
    assert detail not in renderer.sms(long).text
    assert detail in " ".join(renderer.email(long).text.split())
    assert detail not in renderer.sms(long).text


def test_an_ascii_sms_is_shortened_with_three_dots_to_stay_in_the_gsm_alphabet(
    renderer: Renderer,
) -> None:
    """ "…" is not in the GSM 7-bit alphabet and would make an English SMS UCS-2."""
    text = renderer.sms(an_event("delivery_failed", "en", detail=NOTES["en"] * 33)).text
    assert "..." in text and "…" not in text
    vi = renderer.sms(an_event("delivery_failed", "vi", detail=NOTES["vi"] * 31)).text
    assert "…" in vi and "..." not in vi


def test_a_tracking_url_too_long_to_fit_is_left_out_rather_than_broken(
    renderer: Renderer,
) -> None:
    """A cut URL would be a broken link: the SMS goes without its tracking line instead."""
    url = "https://track.example/" + "a" * 1970
    text = renderer.sms(an_event("shipped", "en", tracking_url=url)).text
    assert fits(text)
    assert "https://" not in text
    assert text == renderer.sms(an_event("shipped", "en", tracking_url=None)).text


FIELDS = ("order_id", "tracking_number", "carrier", "location", "detail")


def test_a_link_left_out_makes_room_for_the_fields_shortened_before_it(
    renderer: Renderer,
) -> None:
    """Once the link is left out, the detail keeps what the budget leaves without it."""
    url = "https://track.example/" + "a" * 600
    detail = (NOTES["en"] * 100)[:2000]
    text = renderer.sms(an_event("delivery_failed", "en", tracking_url=url, detail=detail)).text
    assert fits(text)
    assert "https://" not in text
    cost = measure(text)
    assert cost.units > DEFAULT.capacity(cost.encoding) - 20  # the detail took the link's room
    plain = renderer.sms(an_event("delivery_failed", "en", tracking_url=None)).text
    assert text.endswith(plain[-20:])  # the template's own end, not a cut


def _longest(status: str, locale: str, marked: bool = False) -> Event:
    """An event whose every field the SMS templates show is as long as the contract allows;
    ``marked``: each free-text field a short marker instead, and no tracking URL (one too
    long for any bound is left out)."""
    values = {"order_id": "O" * 200, "tracking_number": "T" * 1000, "carrier": "C" * 1000}
    values |= {"location": "L" * 1000, "detail": "D" * 2000}
    url: str | None = "https://t.example/" + "u" * 1982
    name = "S" * 1000
    if marked:
        values = {field: f"<{field}>" for field in FIELDS}
        url, name = None, "<shop>"
    return Event.model_validate(
        event(
            "evt-longest",
            status,
            customer={"locale": locale, "name": "N" * 1000},
            shipment={**values, "tracking_url": url},
            shop={"name": name, "support_email": LONGEST_EMAIL},
        )
    )


@pytest.mark.parametrize("locale", LOCALES)
@pytest.mark.parametrize("status", STATUSES)
def test_every_template_keeps_its_words_with_every_field_at_its_longest(
    renderer: Renderer, status: str, locale: str
) -> None:
    """Each status and locale fits the default budget by shortening fields, never by cutting
    the text: every word between the fields is there, in order."""
    text = renderer.sms(_longest(status, locale)).text
    assert fits(text)
    marked = renderer.sms(_longest(status, locale, marked=True)).text
    position = 0
    for words in re.split(r"<[a-z_]+>", marked):
        found = text.find(words, position)
        assert found >= 0, f"{words!r} missing from {text!r}"
        position = found + len(words)
    assert text.endswith(words)


def test_the_last_resort_cuts_the_text_when_the_templates_words_are_over_the_budget() -> None:
    """With a length below the template's own words, the whole text is cut to fit."""
    budget = SmsBudget(1, length=40)
    small = Renderer(TEMPLATES, "en", Shop(name="Our shop"), sms_budget=budget)
    for status in STATUSES:
        text = small.sms(_longest(status, "vi")).text
        assert fits(text, budget)
        assert utf16_length(text) <= 40
        assert text.endswith("…")


@pytest.mark.parametrize("segments", [1, 2, 3])
@pytest.mark.parametrize("locale", LOCALES)
def test_a_smaller_segment_budget_shortens_the_detail_and_keeps_the_templates_words(
    segments: int, locale: str
) -> None:
    """``SMS_MAX_SEGMENTS`` of 1 to 3: a delivery_failed SMS with a 2,000-character detail fits
    it and says what it costs. Where the SMS with a 20-character detail fits, the long one is
    shortened and the template's words after it stay; where not even that fits, the text is
    cut with an ellipsis."""
    budget = SmsBudget(segments)
    small = Renderer(TEMPLATES, "en", Shop(name="Our shop"), sms_budget=budget)

    def sms(detail: str) -> Event:
        return an_event("delivery_failed", locale, detail=detail, tracking_url=None)

    rendered = small.sms(sms((NOTES[locale] * 100)[:2000]))
    cost = measure(rendered.text)
    assert fits(rendered.text, budget)
    assert (rendered.encoding, rendered.segments) == (cost.encoding, cost.segments)
    short = small.sms_as_written(sms("x" * 20)).text
    if fits(short, budget):
        assert rendered.text.endswith(short.split("x" * 20)[1])
    else:
        assert rendered.text.endswith(ELLIPSES)


@pytest.mark.parametrize("segments", [1, 2, 4])
@pytest.mark.parametrize("status", STATUSES)
def test_unaccented_vietnamese_fits_the_budget_as_gsm7(status: str, segments: int) -> None:
    """With SMS_UNACCENTED=vi, a Vietnamese SMS whose every field is at its longest fits the
    budget with no diacritic left, in GSM-7 (its ellipsis is three dots)."""
    budget = SmsBudget(segments)
    plain = Renderer(
        TEMPLATES, "en", Shop(name="Our shop"), sms_budget=budget, sms_unaccented=frozenset({"vi"})
    )
    rendered = plain.sms(_longest(status, "vi"))
    assert fits(rendered.text, budget)
    assert rendered.encoding is Encoding.GSM7
    assert rendered.text == unaccented(rendered.text)
    assert "…" not in rendered.text


def test_unaccented_applies_to_its_locales_only() -> None:
    """SMS_UNACCENTED=vi leaves German umlauts and Korean alone; a locale without templates is
    refused when the renderer is built."""
    plain = Renderer(TEMPLATES, "en", Shop(name="Our shop"), sms_unaccented=frozenset({"vi"}))
    assert "ö" in plain.sms(an_event("delayed", "de")).text
    assert "배송" in plain.sms(an_event("delayed", "ko")).text
    assert "đ" not in plain.sms(an_event("delayed", "vi")).text
    with pytest.raises(RenderError, match="SMS_UNACCENTED fr: no templates"):
        Renderer(TEMPLATES, "en", Shop(name="Our shop"), sms_unaccented=frozenset({"fr"}))


# every character an event's text field accepts: no control characters or line separators
TEXT = st.characters(exclude_categories=("Cc", "Cs", "Zl", "Zp"))
# an id's: no invisible formatting characters either
ID = st.characters(exclude_categories=("Cc", "Cs", "Zl", "Zp", "Cf"))


@st.composite
def events(draw: st.DrawFn) -> Event:
    def text(max_size: int) -> str | None:
        return draw(st.none() | st.text(TEXT, max_size=max_size).map(str.strip).filter(bool))

    url = draw(
        st.none() | st.text("abcXYZ019-._~/%", max_size=1980).map("https://t.example/{}".format)
    )
    shipment = {
        "order_id": draw(st.text(ID, min_size=1, max_size=200).filter(str.strip)),
        "tracking_number": text(1000),
        "carrier": text(1000),
        "location": text(1000),
        "detail": draw(st.none() | st.text(TEXT | st.just("\n"), max_size=2000).filter(str.strip)),
        "tracking_url": url,
    }
    data = event(
        "evt-prop",
        draw(st.sampled_from(STATUSES)),
        customer={"locale": draw(st.sampled_from((*LOCALES, "fr")))},
        shipment=shipment,
        shop={"name": text(1000)},
    )
    return Event.model_validate(data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events())
def test_no_event_renders_an_sms_over_the_bound(event_: Event) -> None:
    """Whatever the event's fields hold, its SMS fits the default budget, and what it says it
    costs is what its text costs."""
    renderer = Renderer(TEMPLATES, "en", Shop(name="Our shop"))
    rendered = renderer.sms(event_)
    assert fits(rendered.text)
    cost = measure(rendered.text)
    assert (rendered.encoding, rendered.segments) == (cost.encoding, cost.segments)


def _splits(text: str, at: int) -> bool:
    """Whether ending a text at ``at`` would split what people see as one character."""
    if not 0 < at < len(text):
        return False
    before, after = text[at - 1], text[at]
    return (
        unicodedata.category(after) in ("Mn", "Mc", "Me")
        or "\u200d" in (before, after)
        or "\U0001f3fb" <= after <= "\U0001f3ff"  # a skin tone
        or "\ud800" <= before <= "\udbff"
    )


GRAPHEMES = st.sampled_from(
    [
        "a",
        "é",
        "e\u0301",
        "ế",
        "e\u0302\u0301",
        "한",
        "\u1112\u1161\u11ab",
        "👍🏽",
        "👩\u200d💻",
        "🇻🇳",
        "❤\ufe0f",
        " ",
        "\ud83d",
    ]
)


@given(st.lists(GRAPHEMES, max_size=60).map("".join), st.integers(0, 120))
def test_a_cut_is_a_start_of_the_text_within_the_units_and_between_characters(
    text: str, units: int
) -> None:
    """A cut never passes the bound in UTF-16 units (what SMS count) and never ends inside a
    character as people see it: not before a combining mark, inside a surrogate pair, an
    emoji sequence or a Hangul syllable's jamo, or between a flag's two letters."""
    kept = cut(text, units)
    assert text.startswith(kept)
    assert utf16_length(kept) <= units
    assert not _splits(text, len(kept))
    flags = sum(1 for c in kept if "\U0001f1e6" <= c <= "\U0001f1ff")
    assert flags % 2 == 0
    jamo = "\u1160" <= text[len(kept) : len(kept) + 1] <= "\u11ff"
    assert not jamo
