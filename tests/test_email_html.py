"""The HTML emails lean on nothing that major mail clients drop or only half support (per
caniemail's data, as Mailpit's HTML check reads it): no ``<style>`` block or ``@media`` outside
Outlook's conditional comments, nothing styled on ``<body>``, no ``word-break``,
``border-radius``, ``opacity``, ``overflow`` or ``max-height``, and bold as ``<strong>``. The
layout is fluid instead: a card 100% wide up to 600px, with a fixed 600px table for Outlook
only."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path

import pytest

from worker.events import Shop
from worker.policy import STATUSES
from worker.preview import long_sample_event, sample_event
from worker.render import Renderer

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
LOCALES = ("de", "en", "ko", "vi")
DROPPED = ("word-break", "border-radius", "opacity", "overflow", "max-height", "font-weight")


class Elements(HTMLParser):
    """Every start tag with its attributes; conditional comments stay comments."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.comments: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, {name: value or "" for name, value in attrs}))

    def handle_comment(self, data: str) -> None:
        self.comments.append(data)


def properties(style: str) -> set[str]:
    return {part.split(":", 1)[0].strip().lower() for part in style.split(";") if ":" in part}


def parsed(html: str) -> Elements:
    elements = Elements()
    elements.feed(html)
    elements.close()
    return elements


@pytest.fixture(scope="module")
def renderer() -> Renderer:
    return Renderer(TEMPLATES, "en", Shop(name="Our shop"))


@pytest.mark.parametrize("locale", LOCALES)
@pytest.mark.parametrize("status", STATUSES)
def test_no_email_uses_a_feature_major_clients_drop(
    renderer: Renderer, status: str, locale: str
) -> None:
    """With full and with long sample data, no element is styled with a dropped property, the
    only ``<style>`` is inside Outlook's conditional comment, and ``<body>`` has no attributes."""
    for event in (sample_event(status, locale), long_sample_event(status, locale)):
        elements = parsed(renderer.email(event).html)
        tags = [tag for tag, _ in elements.tags]
        assert "style" not in tags
        assert tags.count("body") == 1
        assert dict(elements.tags)["body"] == {}
        for tag, attrs in elements.tags:
            used = properties(attrs.get("style", ""))
            assert not used & set(DROPPED), f"{tag} uses {sorted(used & set(DROPPED))}"
            assert "class" not in attrs  # nothing left for a <style> block to select
        conditional = [c for c in elements.comments if c.startswith("[if mso]")]
        assert all("@media" not in comment for comment in conditional)


def test_the_layout_is_fluid_up_to_600px_with_a_fixed_table_for_outlook_only(
    renderer: Renderer,
) -> None:
    """The card and the footer are 100% wide with ``max-width:600px``; the only fixed width
    of 600 is the table inside Outlook's conditional comment; no other element has a width
    in pixels that a phone would have to scroll."""
    elements = parsed(renderer.email(sample_event("delivered", "en")).html)
    fluid = [
        attrs
        for tag, attrs in elements.tags
        if tag == "table" and "max-width:600px" in attrs.get("style", "")
    ]
    assert len(fluid) == 2
    assert all(attrs["width"] == "100%" for attrs in fluid)
    widths = {attrs.get("width") for _, attrs in elements.tags if "width" in attrs}
    assert widths == {"100%"}
    assert any('width="600"' in comment for comment in elements.comments)
