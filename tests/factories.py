"""Event builders for tests: a valid event with overrides, encoded as producers send it."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.record.default_records import _DefaultRecordBatchBuilderPy

BASE_TIME = datetime(2026, 11, 21, 8, 15, tzinfo=UTC)


def event(
    event_id: str,
    status: str,
    *,
    shipment_id: str = "SHP-1",
    minutes: int = 0,
    customer: dict[str, Any] | None = None,
    shipment: dict[str, Any] | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """A valid event ``minutes`` after BASE_TIME; ``customer``/``shipment`` entries override."""
    return {
        "event_id": event_id,
        "occurred_at": (BASE_TIME + timedelta(minutes=minutes)).isoformat(),
        "status": status,
        "shipment": {
            "id": shipment_id,
            "order_id": "ORD-5521",
            "tracking_number": "VN123456789",
            "carrier": "Giao Hàng Nhanh",
            "tracking_url": "https://track.example/VN123456789",
            "estimated_delivery": "2026-11-25",
            **(shipment or {}),
        },
        "customer": {
            "name": "Nguyễn Văn An",
            "email": "an@example.com",
            "phone": "+84 90 123 4567",
            "locale": "vi-VN",
            **(customer or {}),
        },
        **fields,
    }


def record(data: dict[str, Any]) -> tuple[bytes, bytes]:
    """(key, value) as a producer keys it: by shipment id."""
    return data["shipment"]["id"].encode(), json.dumps(data, ensure_ascii=False).encode()


class RawHeaderName(str):
    """A header name that the pure-Python batch builder writes as the given bytes: aiokafka's
    producer only takes ``str`` names and encodes them as UTF-8 itself."""

    raw: bytes

    def __new__(cls, raw: bytes) -> RawHeaderName:
        name = super().__new__(cls, raw.decode("latin-1"))
        name.raw = raw
        return name

    def encode(self, encoding: str = "utf-8", errors: str = "strict") -> bytes:
        return self.raw


BAD_HEADERS = [(RawHeaderName(b"\xffname"), b"x"), ("trace-id", b"t-1")]


def python_batch(producer: AIOKafkaProducer) -> Any:
    batch = producer.create_batch()
    # the C builder encodes names itself; the pure-Python one asks the name for its bytes
    batch._builder = _DefaultRecordBatchBuilderPy(
        2, 0, is_transactional=0, producer_id=-1, producer_epoch=-1, base_sequence=0,
        batch_size=16384,
    )  # fmt: skip
    return batch
