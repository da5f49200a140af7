"""Rendering: locale fallback, dates in the customer's language, escaping, and golden files.

The golden files in ``tests/golden/<locale>-<status>-<part>.txt`` hold exact renders of
``worker.preview.sample_event``. After an intended template change, regenerate them with

    UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/test_render.py

(those tests then rewrite their file and report themselves as skipped), and read the diff
before committing it: a golden file that pins a bug is worse than none.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.factories import event
from worker.events import Event, Shop
from worker.policy import STATUSES
from worker.preview import sample_event
from worker.render import RECENT_CONTEXTS, Renderer, RenderError, _fields

ROOT = Path(__file__).resolve().parent.parent
TEMPLATES = ROOT / "templates"
GOLDEN = Path(__file__).resolve().parent / "golden"
UPDATE_GOLDEN = os.environ.get("UPDATE_GOLDEN") == "1"
# what worker.app.build_renderer passes with the default settings
DEFAULT_SHOP = Shop(name="Our shop", url=None, support_email=None)

HOSTILE_NAME = "<script>alert(1)</script>"
HOSTILE_CARRIER = '"><img src=x onerror=alert(1)>'

CopyTemplates = Callable[[], Path]


@pytest.fixture(scope="module")
def renderer() -> Renderer:
    """A renderer over the repository's templates, built as the app builds it by default
    (shared by the module: it holds no state but its compiled-template cache)."""
    return Renderer(TEMPLATES, "en", DEFAULT_SHOP)


@pytest.fixture
def copy_templates(tmp_path: Path) -> CopyTemplates:
    """Factory: a private copy of the templates (removed with tmp_path) that a test may break."""

    def make() -> Path:
        return Path(shutil.copytree(TEMPLATES, tmp_path / "templates"))

    return make


def an_event(status: str = "shipped", **customer: Any) -> Event:
    """A valid event (ETA 2026-11-25, a Wednesday); keyword arguments override customer fields."""
    return Event.model_validate(event("evt-1", status, customer=customer))


@pytest.mark.parametrize(
    ("requested", "expected"),
    [
        ("vi", "vi"),
        ("vi-VN", "vi"),
        ("VI", "vi"),
        ("vi_VN", "vi"),
        ("de_AT", "de"),
        ("ko-KR", "ko"),
        ("en-GB", "en"),
        ("fr-FR", "en"),
        ("zh-Hant-TW", "en"),
        ("", "en"),
        (None, "en"),
    ],
)
def test_locale_fallback(renderer: Renderer, requested: str | None, expected: str) -> None:
    """A tag falls back to its language, then to the default locale."""
    assert renderer.locale_for(requested) == expected


def test_the_renderer_knows_the_shipped_locales(renderer: Renderer) -> None:
    """Every directory with email templates is a locale."""
    assert renderer.locales == frozenset({"de", "en", "ko", "vi"})


@pytest.mark.parametrize(
    ("locale", "line"),
    [
        ("en-US", "Estimated delivery: Wednesday, November 25, 2026"),
        ("en-GB", "Estimated delivery: Wednesday, 25 November 2026"),
        ("de", "Voraussichtliche Zustellung: Mittwoch, 25. November 2026"),
        ("de-AT", "Voraussichtliche Zustellung: Mittwoch, 25. November 2026"),
        ("vi", "Dự kiến giao hàng: Thứ Tư, ngày 25 tháng 11 năm 2026"),
        ("ko-KR", "도착 예정일: 2026년 11월 25일 수요일"),
    ],
)
def test_the_eta_is_written_as_the_locale_writes_dates(
    renderer: Renderer, locale: str, line: str
) -> None:
    """The ETA in the text part is a full date in the customer's language and region."""
    assert line in renderer.email(an_event(locale=locale)).text.splitlines()


@pytest.mark.parametrize(
    ("locale", "line"),
    [
        ("en-US", "Last update: November 21, 2026 at 8:15 AM"),
        ("de", "Letzte Aktualisierung: 21. November 2026, 08:15"),
        ("vi", "Cập nhật lúc: 08:15 ngày 21/11/2026"),
        ("ko", "업데이트 일시: 2026년 11월 21일 08:15"),
    ],
)
def test_the_event_time_is_the_producers_local_time(
    renderer: Renderer, locale: str, line: str
) -> None:
    """08:15+07:00 is shown as 08:15, in the locale's way of joining a date and a time."""
    text = renderer.email(sample_event("in_transit", locale)).text
    assert line in text.splitlines()


def test_a_fallback_locale_writes_dates_in_the_template_language(renderer: Renderer) -> None:
    """A fr-FR customer gets the English email, so its dates must be English too."""
    text = renderer.email(an_event(locale="fr-FR")).text
    assert "Estimated delivery: Wednesday, November 25, 2026" in text.splitlines()
    assert "mercredi" not in text


@pytest.mark.parametrize("locale", ["en", "de", "vi", "ko"])
@pytest.mark.parametrize("status", STATUSES)
def test_every_subject_is_one_line(renderer: Renderer, locale: str, status: str) -> None:
    """No subject contains a line break or surrounding whitespace."""
    subject = renderer.email(sample_event(status, locale)).subject
    assert subject == " ".join(subject.split())
    assert subject != ""


def test_the_subject_folds_line_breaks_the_event_did_not(renderer: Renderer) -> None:
    """Even an order id that bypassed validation cannot add a header line to the subject."""
    good = an_event(locale="en")
    bad = good.model_copy(
        update={"shipment": good.shipment.model_copy(update={"order_id": "ORD-1\r\nBcc: x@evil"})}
    )
    assert renderer.email(bad).subject == "Your order ORD-1 Bcc: x@evil from Our shop"


def test_html_escapes_a_hostile_name_and_carrier(renderer: Renderer) -> None:
    """Markup in the customer's name or the carrier reaches the HTML part only as text."""
    data = event("evt-1", "shipped", customer={"name": HOSTILE_NAME, "locale": "en"})
    data["shipment"]["carrier"] = HOSTILE_CARRIER
    html = renderer.email(Event.model_validate(data)).html
    assert "Hi &lt;script&gt;alert(1)&lt;/script&gt;," in html
    assert "is now with &#34;&gt;&lt;img src=x onerror=alert(1)&gt;." in html
    assert "<script" not in html
    assert "<img" not in html


def test_the_text_part_is_not_html_escaped(renderer: Renderer) -> None:
    """The plain-text part shows the name as written, without entities."""
    text = renderer.email(an_event(name="Ann & <Bob>", locale="en")).text
    assert text.splitlines()[0] == "Hi Ann & <Bob>,"


@pytest.mark.parametrize(
    ("locale", "line"),
    [
        ("en", "Track your parcel: https://track.example/VN123456789"),
        ("de", "Sendung verfolgen: https://track.example/VN123456789"),
        ("vi", "Theo dõi đơn hàng: https://track.example/VN123456789"),
        ("ko", "배송 조회: https://track.example/VN123456789"),
    ],
)
def test_the_text_part_carries_the_tracking_url(renderer: Renderer, locale: str, line: str) -> None:
    """Plain-text readers get the tracking link on its own labelled line."""
    assert line in renderer.email(an_event(locale=locale)).text.splitlines()


def test_shop_fields_fall_back_to_the_configured_shop() -> None:
    """An event without shop data signs with the shop the renderer was built with."""
    shop = Shop(name="Test Shop", url="https://test.example", support_email="help@test.example")
    text = Renderer(TEMPLATES, "en", shop).email(an_event(locale="en")).text
    assert text.splitlines()[-4:] == [
        "Test Shop",
        "https://test.example",
        "",
        "Questions? Contact us at help@test.example.",
    ]


def test_a_missing_template_raises_render_error(copy_templates: CopyTemplates) -> None:
    """A status whose template file is missing is a RenderError naming the file."""
    templates = copy_templates()
    (templates / "en" / "email" / "shipped.txt").unlink()
    renderer = Renderer(templates, "en", DEFAULT_SHOP)
    with pytest.raises(RenderError) as caught:
        renderer.email(an_event(locale="en"))
    assert str(caught.value).startswith("en/email/shipped.txt: ")


def test_an_undefined_name_raises_render_error(copy_templates: CopyTemplates) -> None:
    """A template using a name the context lacks fails instead of rendering an empty string."""
    templates = copy_templates()
    (templates / "en" / "sms" / "shipped.txt").write_text(
        '{% extends "en/sms/_layout.txt" %}{% block message %}{{ parcel }}{% endblock %}',
        encoding="utf-8",
    )
    with pytest.raises(RenderError, match=r"^en/sms/shipped\.txt: 'parcel' is undefined$"):
        Renderer(templates, "en", DEFAULT_SHOP).sms(an_event(locale="en"))


@pytest.mark.parametrize(
    "expression", ["shipment.__class__", "shop.clear", "show.__class__", "show._body_stream"]
)
def test_the_sandbox_refuses_internals_of_the_context_and_of_imported_templates(
    copy_templates: CopyTemplates, expression: str
) -> None:
    """The renderer serves plain dict items and the names an imported template exports
    without the sandbox's per-read checks; everything else (internals, methods that change a
    dict) still goes through them, so a template cannot reach past its data."""
    templates = copy_templates()
    (templates / "en" / "sms" / "shipped.txt").write_text(
        '{% import "layouts/visibility.jinja" as show with context %}'
        f"{{{{ show.carrier }}}} {{{{ {expression}() }}}}",
        encoding="utf-8",
    )
    with pytest.raises(RenderError, match=r"^en/sms/shipped\.txt: access to attribute"):
        Renderer(templates, "en", DEFAULT_SHOP).sms(an_event(locale="en"))


@pytest.mark.parametrize(
    ("child", "layout", "expected"),
    [
        # the blocks of a chain, stacked once for all renders: super() and self still reach them
        (
            '{% extends "en/sms/_layout.txt" %}{% block message %}[{{ super() }}]{% endblock %}',
            '{% extends "en/sms/base.txt" %}{% block message %}mid {{ super() }}{% endblock %}',
            "B<[mid base]>",
        ),
        (
            '{% extends "en/sms/_layout.txt" %}{% block message %}m{% endblock %}',
            "{% block message %}top{% endblock %}|{{ self.message() }}",
            "m|m",
        ),
        # a child that does more at its top level than extend, and a conditional extends:
        # rendered from the template's own root, as Jinja renders them
        (
            '{% extends "en/sms/_layout.txt" %}{% set extra = "!" %}'
            "{% block message %}m{{ extra }}{% endblock %}",
            "<{% block message %}{% endblock %}>",
            "<m!>",
        ),
        (
            '{% extends "en/sms/_layout.txt" %}{% block message %}m{% endblock %}',
            '{% if status == "shipped" %}{% extends "en/sms/base.txt" %}{% endif %}'
            "{% block message %}L{% endblock %}",
            "B<m>",
        ),
    ],
)
def test_template_inheritance_renders_as_jinja_renders_it(
    copy_templates: CopyTemplates, child: str, layout: str, expected: str
) -> None:
    """The renderer resolves a template's parents once and runs the last one's root itself
    when the others only extend and define blocks; every shape renders as Jinja's own."""
    templates = copy_templates()
    sms = templates / "en" / "sms"
    (sms / "base.txt").write_text("B<{% block message %}base{% endblock %}>", encoding="utf-8")
    (sms / "shipped.txt").write_text(child, encoding="utf-8")
    (sms / "_layout.txt").write_text(layout, encoding="utf-8")
    assert Renderer(templates, "en", DEFAULT_SHOP).sms(an_event(locale="en")).text == expected


def test_a_missing_parent_template_raises_render_error(copy_templates: CopyTemplates) -> None:
    """A template extending a file that is not there fails with the name of both."""
    templates = copy_templates()
    (templates / "en" / "sms" / "shipped.txt").write_text(
        '{% extends "en/sms/gone.txt" %}{% block message %}m{% endblock %}', encoding="utf-8"
    )
    renderer = Renderer(templates, "en", DEFAULT_SHOP)
    gone = r"^en/sms/shipped\.txt: 'en/sms/gone\.txt' not found"
    for _ in range(2):  # and again once the renderer has seen it fail
        with pytest.raises(RenderError, match=gone):
            renderer.sms(an_event(locale="en"))


def test_a_default_locale_without_templates_is_refused() -> None:
    """Building a renderer whose default locale has no templates raises RenderError."""
    with pytest.raises(RenderError) as caught:
        Renderer(TEMPLATES, "fr", DEFAULT_SHOP)
    assert str(caught.value) == (
        f"DEFAULT_LOCALE 'fr' has no templates in {TEMPLATES} (have: de, en, ko, vi)"
    )


GOLDEN_CASES = [
    ("en", "shipped", "subject"),
    ("en", "shipped", "text"),
    ("en", "delivered", "html"),
    ("vi", "out_for_delivery", "sms"),
    ("ko", "delivered", "text"),
    ("de", "delayed", "sms"),
    ("de", "delivery_failed", "text"),
    # SMS_UNACCENTED=vi
    ("vi", "delivered", "sms_unaccented"),
    ("vi", "out_for_delivery", "sms_unaccented"),
    ("vi", "delivery_failed", "sms_unaccented"),
]


def render_part(renderer: Renderer, locale: str, status: str, part: str) -> str:
    event = sample_event(status, locale)
    if part == "sms":
        return renderer.sms(event).text
    if part == "sms_unaccented":
        plain = Renderer(TEMPLATES, "en", DEFAULT_SHOP, sms_unaccented=frozenset({locale}))
        return plain.sms(event).text
    rendered = renderer.email(event)
    return {"subject": rendered.subject, "text": rendered.text, "html": rendered.html}[part]


@pytest.mark.parametrize(("locale", "status", "part"), GOLDEN_CASES)
def test_golden_renders(renderer: Renderer, locale: str, status: str, part: str) -> None:
    """The sample event renders exactly as the reviewed golden file says."""
    path = GOLDEN / f"{locale}-{status}-{part}.txt"
    rendered = render_part(renderer, locale, status, part)
    if UPDATE_GOLDEN:
        GOLDEN.mkdir(exist_ok=True)
        path.write_bytes(rendered.encode("utf-8"))
        pytest.skip(f"UPDATE_GOLDEN=1: rewrote {path.name}")
    assert rendered == path.read_bytes().decode("utf-8")


@pytest.mark.parametrize("status", STATUSES)
def test_templates_see_the_shipment_and_customer_as_model_dump_gives_them(status: str) -> None:
    """The context's field dicts equal ``model_dump()`` (which a nested model would break)."""
    sample = sample_event(status, "vi")
    assert _fields(sample.shipment) == sample.shipment.model_dump()
    assert _fields(sample.customer) == sample.customer.model_dump()


def test_interleaved_events_each_render_with_their_own_context() -> None:
    """An event's SMS rendered after many other events' emails (as concurrent tasks render
    them, and past the contexts the renderer keeps) carries that event's data only."""
    events = [
        Event.model_validate(
            event(
                f"evt-{i}",
                "shipped",
                customer={"name": f"Customer {i}", "locale": "en"},
                shipment={"order_id": f"ORD-{i}"},
            )
        )
        for i in range(RECENT_CONTEXTS + 10)
    ]
    interleaved = Renderer(TEMPLATES, "en", DEFAULT_SHOP)
    emails = [interleaved.email(e) for e in events]
    sms = [interleaved.sms(e) for e in reversed(events)][::-1]
    one_by_one = Renderer(TEMPLATES, "en", DEFAULT_SHOP)
    for i, e in enumerate(events):
        assert (emails[i], sms[i]) == (one_by_one.email(e), one_by_one.sms(e))
        assert f"Customer {i}," in emails[i].text
        assert f"Your order ORD-{i} has shipped" in sms[i].text
