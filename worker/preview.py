"""Looking at templates without Kafka: render every combination (``check``) or one (``preview``)
with sample data, and what each SMS template costs with long fields (``sms_costs``)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from worker.events import Event
from worker.policy import CHANNELS, STATUSES
from worker.render import RenderedEmail, RenderedSms, Renderer, RenderError
from worker.sms_text import Encoding

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


# Long values each field realistically takes in a shop of each language (a shop's long name, a
# sorting centre's full name, a carrier's note of one sentence, up to 60 characters): what
# ``sms_costs`` renders every SMS template with. A locale not listed uses "en".
_LONG: dict[str, dict[str, Any]] = {
    "en": {
        "shop": "Northwind Outdoor Supply Co.",
        "support_email": "customer.care@northwind-outdoor.example",
        "tracking_number": "1Z999AA10123456784",
        "carrier": "United Parcel Service",
        "location": "Louisville Worldport Hub, Kentucky",
        "detail": "Recipient not available, a notice was left. Next try tomorrow",
    },
    "de": {
        "shop": "Bergsport Huber Outdoor GmbH",
        "support_email": "kundenservice@bergsport-huber.example",
        "tracking_number": "00340434161094042557",
        "carrier": "DHL Paket",
        "location": "Paketzentrum Köln-Eifeltor",
        "detail": "Empfänger nicht angetroffen, neuer Zustellversuch morgen",
    },
    "ko": {
        "shop": "한빛아웃도어 공식 온라인몰",
        "support_email": "cs@hanbit-outdoor.example",
        "tracking_number": "685412349876",
        "carrier": "CJ대한통운",
        "location": "경기 광주 곤지암메가허브터미널",
        "detail": "수령인 부재로 경비실 보관이 불가하여 내일 재배송 예정입니다",
    },
    "vi": {
        "shop": "Cửa hàng Thời trang Sen Việt",
        "support_email": "cskh@thoitrangsenviet.example",
        "tracking_number": "S21845123.SG01.H12.123456789",
        "carrier": "Giao Hàng Tiết Kiệm",
        "location": "Bưu cục Cầu Giấy, Quận Cầu Giấy, Hà Nội",
        "detail": "Người nhận không nghe máy, bưu tá sẽ giao lại vào ngày mai",
    },
}


def long_sample_event(status: str, locale: str) -> Event:
    """The full sample event with ``_LONG``'s values for ``locale``."""
    long = _LONG.get(locale, _LONG["en"])
    order = "ORD-2026-0051234"
    data = dict(_FULL, status=status)
    data["shipment"] = {
        **_FULL["shipment"],
        "order_id": order,
        "tracking_url": f"https://track.shop.example/{long['tracking_number']}",
        **{key: long[key] for key in ("tracking_number", "carrier", "location", "detail")},
    }
    data["shop"] = {**_FULL["shop"], "name": long["shop"], "support_email": long["support_email"]}
    data["customer"] = {**_FULL["customer"], "locale": locale}
    return Event.model_validate(data)


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
        problem = _looks_wrong(_parts(rendered))
        if problem:
            failures.append(CheckFailure(locale, status, channel, _data(minimal), problem))
    return count, failures


def _combinations(renderer: Renderer) -> Iterator[tuple[str, str, str, bool]]:
    for locale in sorted(renderer.locales):
        for status in STATUSES:
            for channel in CHANNELS:
                for minimal in (False, True):
                    yield locale, status, channel, minimal


def _parts(rendered: RenderedEmail | RenderedSms) -> dict[str, str]:
    if isinstance(rendered, RenderedSms):
        return {"text": rendered.text}
    return {"subject": rendered.subject, "text": rendered.text, "html": rendered.html}


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


@dataclass(frozen=True, slots=True)
class SmsCostRow:
    locale: str
    status: str
    encoding: Encoding
    segments: int


def sms_costs(renderer: Renderer) -> list[SmsCostRow]:
    """Every locale's SMS templates rendered with ``long_sample_event`` and every field whole
    (what the customer gets unless the budget shortens it): their encoding and segments."""
    rows = []
    for locale in sorted(renderer.locales):
        for status in STATUSES:
            rendered = renderer.sms_as_written(long_sample_event(status, locale))
            rows.append(SmsCostRow(locale, status, rendered.encoding, rendered.segments))
    return rows
