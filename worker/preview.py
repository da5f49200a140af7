"""Looking at templates without Kafka: render every combination (``check``) or one (``preview``)
with sample data."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from worker.events import Event
from worker.policy import CHANNELS, STATUSES
from worker.render import Renderer, RenderError

_FULL: dict[str, Any] = {
    "event_id": "evt-preview",
    "occurred_at": "2026-11-21T08:15:00+07:00",
    "shipment": {
        "id": "SHP-1001",
        "order_id": "ORD-5521",
        "tracking_number": "VN123456789",
        "carrier": "Giao Hàng Nhanh",
        "tracking_url": "https://track.example/VN123456789",
        "location": "Hà Nội",
        "estimated_delivery": "2026-11-23",
        "detail": "Customs cleared",
    },
    "customer": {"name": "Nguyễn Văn An", "email": "an@example.com", "phone": "+84901234567"},
    "shop": {
        "name": "Cửa hàng Sen",
        "url": "https://shop.example",
        "support_email": "help@shop.example",
    },
}
_MINIMAL: dict[str, Any] = {
    "event_id": "evt-preview-minimal",
    "occurred_at": "2026-11-21T08:15:00Z",
    "shipment": {"id": "SHP-1002", "order_id": "ORD-5522"},
}


def sample_event(status: str, locale: str, *, minimal: bool = False) -> Event:
    data = dict(_MINIMAL if minimal else _FULL, status=status)
    data["customer"] = {**data.get("customer", {}), "locale": locale}
    return Event.model_validate(data)


@dataclass(frozen=True, slots=True)
class CheckFailure:
    locale: str
    status: str
    channel: str
    data: str  # full | minimal
    error: str


def check(renderer: Renderer) -> tuple[int, list[CheckFailure]]:
    """Render every locale x status x channel with full and with minimal sample data; return
    how many renders ran and which failed."""
    count = 0
    failures = []
    for locale, status, channel, minimal in _combinations(renderer):
        count += 1
        event = sample_event(status, locale, minimal=minimal)
        try:
            rendered = renderer.email(event) if channel == "email" else renderer.sms(event)
        except RenderError as exc:
            failures.append(CheckFailure(locale, status, channel, _data(minimal), str(exc)))
            continue
        problem = _looks_wrong(
            vars(rendered) if hasattr(rendered, "__dict__") else _fields(rendered)
        )
        if problem:
            failures.append(CheckFailure(locale, status, channel, _data(minimal), problem))
    return count, failures


def _combinations(renderer: Renderer) -> Iterator[tuple[str, str, str, bool]]:
    for locale in sorted(renderer.locales):
        for status in STATUSES:
            for channel in CHANNELS:
                for minimal in (False, True):
                    yield locale, status, channel, minimal


def _fields(rendered: Any) -> dict[str, str]:
    return {name: getattr(rendered, name) for name in rendered.__slots__}


def _looks_wrong(parts: dict[str, str]) -> str | None:
    """Mistakes StrictUndefined cannot see: an empty part, or a None printed into the text."""
    for name, value in parts.items():
        if not value.strip():
            return f"{name} is empty"
        if "None" in value:
            return f"{name} contains 'None'"
    return None


def _data(minimal: bool) -> str:
    return "minimal" if minimal else "full"
