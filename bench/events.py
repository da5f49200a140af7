"""Synthetic shipment events for the benchmark, what the default policy says they must send,
and publishing them to Kafka (as fast as possible, or at a steady rate with send times kept).

Events are realistic in size and mix: locales en/vi/ko/de with regional tags, every status
(weighted like a real shop: many confirmations and deliveries, few returns), shop and shipment
details, some customers without a phone or who opted out of SMS. Each event has its own
shipment, so the ordering rules never skip one: every planned notification must arrive.
Phone numbers come from a pool of 48 valid ones per market (drawing and validating a fresh one
per event would slow the producer): a worker-side cache keyed on the number would hit here far
more often than in a shop, whose customers get their next status hours later.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from worker.policy import DEFAULT_POLICY, normalize_phone

STATUS_WEIGHTS = {
    "order_confirmed": 16,
    "processing": 5,
    "shipped": 15,
    "in_transit": 10,
    "out_for_delivery": 14,
    "delivered": 18,
    "delayed": 5,
    "delivery_failed": 3,
    "available_for_pickup": 4,
    "returned": 2,
    "cancelled": 3,
    "exception": 5,
}
EMAIL_STATUSES = tuple(s for s, channels in DEFAULT_POLICY.items() if "email" in channels)


@dataclass(frozen=True)
class Market:
    locales: tuple[str, ...]
    names: tuple[str, ...]
    phone_patterns: tuple[str, ...]  # '#' is a random digit
    carriers: tuple[str, ...]
    cities: tuple[str, ...]
    shop: str
    weight: int


MARKETS = (
    Market(
        ("en-US", "en-GB", "en"),
        ("Emily Johnson", "Michael O'Brien", "Sarah Williams", "James Smith", "Olivia Brown"),
        ("(212) 555-01##", "+1 415 2## ####", "+44 7911 1#####"),
        ("UPS", "FedEx", "Royal Mail", "USPS"),
        ("New York, NY", "London", "Austin, TX", "Manchester"),
        "Northwind Outfitters",
        30,
    ),
    Market(
        ("vi-VN", "vi"),
        ("Nguyễn Thị Lan", "Trần Văn Hùng", "Lê Minh Châu", "Phạm Quốc Bảo", "Đặng Thu Hà"),
        ("090 ### ####", "091 ### ####", "+84 98 ### ####"),
        ("Giao Hàng Nhanh", "Viettel Post", "J&T Express"),
        ("Hà Nội", "Thành phố Hồ Chí Minh", "Đà Nẵng", "Hải Phòng"),
        "Cửa hàng Sen",
        25,
    ),
    Market(
        ("ko-KR", "ko"),
        ("김민준", "이서연", "박지훈", "최수아", "정예준"),
        ("010-####-####", "+82 10 #### ####"),
        ("CJ대한통운", "한진택배", "우체국택배"),
        ("서울특별시", "부산광역시", "인천광역시", "대구광역시"),
        "한빛 스토어",
        20,
    ),
    Market(
        ("de-DE", "de-AT", "de"),
        ("Jürgen Müller", "Anna Schäfer", "Lukas Weiß", "Sophie Groß", "Matthias Köhler"),
        ("0151 ########", "030 #######", "+43 664 #######"),
        ("DHL", "Hermes", "DPD", "Österreichische Post"),
        ("Berlin", "München", "Köln", "Wien"),
        "Grüne Wiese GmbH",
        25,
    ),
)
DETAILS = (
    "The parcel was held at the sorting centre because of severe weather.",
    "Địa chỉ giao hàng chưa đầy đủ, vui lòng liên hệ bộ phận hỗ trợ.",
    "수령인이 부재하여 배송이 지연되었습니다.",
    "Die Sendung konnte wegen einer Straßensperrung nicht zugestellt werden.",
)


@dataclass
class Expected:
    """What the default policy must send for a batch of events."""

    records: int = 0
    emails: int = 0
    sms: int = 0

    @property
    def notifications(self) -> int:
        return self.emails + self.sms

    def add(self, other: Expected) -> None:
        self.records += other.records
        self.emails += other.emails
        self.sms += other.sms


class EventFactory:
    """Deterministic (seeded) events; ``make(i)`` also returns what it must send."""

    def __init__(self, run_id: str, seed: int = 42) -> None:
        self._run_id = run_id
        self._rng = random.Random(seed)
        # recent, in the past: the worker refuses events from the far future
        self._base_time = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)
        self._phones = {m.shop: self._phone_pool(m) for m in MARKETS}
        self._statuses = list(STATUS_WEIGHTS)
        self._status_weights = list(STATUS_WEIGHTS.values())

    def _phone_pool(self, market: Market) -> list[tuple[str, str]]:
        """(number as typed, locale) pairs that the worker's normaliser accepts."""
        pool: list[tuple[str, str]] = []
        while len(pool) < 48:
            pattern = self._rng.choice(market.phone_patterns)
            locale = self._rng.choice(market.locales)
            number = "".join(str(self._rng.randrange(10)) if c == "#" else c for c in pattern)
            if normalize_phone(number, locale):
                pool.append((number, locale))
        return pool

    def make(self, i: int, status: str | None = None) -> tuple[dict[str, object], Expected]:
        rng = self._rng
        market = rng.choices(MARKETS, weights=[m.weight for m in MARKETS])[0]
        status = status or rng.choices(self._statuses, weights=self._status_weights)[0]
        phone, locale = rng.choice(self._phones[market.shop])
        has_phone = rng.random() < 0.85
        channels = ["email"] if rng.random() < 0.05 else None
        name = rng.choice(market.names)
        tracking = f"{market.carriers[0][:2].upper()}{rng.randrange(10**9, 10**10)}"
        event: dict[str, object] = {
            "event_id": f"{self._run_id}-{i:08d}",
            "occurred_at": (self._base_time + timedelta(seconds=i % 3600)).isoformat(),
            "status": status,
            "shipment": {
                "id": f"SHP-{self._run_id}-{i:08d}",
                "order_id": f"ORD-{rng.randrange(10**6, 10**7)}",
                "tracking_number": tracking,
                "carrier": rng.choice(market.carriers),
                "tracking_url": f"https://track.example/{tracking}",
                "location": rng.choice(market.cities),
                "estimated_delivery": (
                    self._base_time.date() + timedelta(days=2 + i % 5)
                ).isoformat(),
                **({"detail": rng.choice(DETAILS)} if status in ("delayed", "exception") else {}),
            },
            "customer": {
                "name": name,
                "email": f"customer.{i}@mail.example",
                **({"phone": phone} if has_phone else {}),
                "locale": locale,
                **({"channels": channels} if channels else {}),
            },
            "shop": {
                "name": market.shop,
                "url": "https://shop.example",
                "support_email": "help@shop.example",
            },
        }
        wanted = DEFAULT_POLICY[status]
        sms = "sms" in wanted and has_phone and channels is None
        return event, Expected(records=1, emails=int("email" in wanted), sms=int(sms))

    def batch(self, start: int, count: int) -> tuple[list[tuple[bytes, bytes]], Expected]:
        """``count`` encoded (key, value) records and what they must send."""
        expected = Expected()
        records = []
        for i in range(start, start + count):
            event, exp = self.make(i)
            expected.add(exp)
            records.append(_encode(event))
        return records, expected


def _encode(event: dict[str, object]) -> tuple[bytes, bytes]:
    shipment = event["shipment"]
    assert isinstance(shipment, dict)
    return str(shipment["id"]).encode(), json.dumps(event, ensure_ascii=False).encode()


async def create_topic(bootstrap: str, topic: str, partitions: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, replication_factor=1)])
    finally:
        await admin.close()


def _producer(bootstrap: str, linger_ms: int) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks=1,
        linger_ms=linger_ms,
        max_batch_size=512 * 1024,
        max_request_size=4 * 1024 * 1024,
    )


async def fill_topic(
    bootstrap: str, topic: str, factory: EventFactory, count: int, chunk: int = 5000
) -> Expected:
    """Publish ``count`` events as fast as the broker takes them; wait for every ack."""
    expected = Expected()
    producer = _producer(bootstrap, linger_ms=20)
    await producer.start()
    try:
        for start in range(0, count, chunk):
            records, exp = factory.batch(start, min(chunk, count - start))
            expected.add(exp)
            futures = [await producer.send(topic, value, key=key) for key, value in records]
            await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return expected


def email_events(
    factory: EventFactory, start: int, count: int
) -> tuple[list[dict[str, object]], Expected]:
    """Events whose status always asks for an email (for the latency figure)."""
    events, expected = [], Expected()
    for i in range(start, start + count):
        event, exp = factory.make(i, EMAIL_STATUSES[i % len(EMAIL_STATUSES)])
        events.append(event)
        expected.add(exp)
    return events, expected


async def produce_steady(
    bootstrap: str, topic: str, events: list[dict[str, object]], rate: float
) -> dict[str, float]:
    """Publish ``events`` at ``rate`` per second; return event_id -> wall-clock send time."""
    sent_at: dict[str, float] = {}
    producer = _producer(bootstrap, linger_ms=0)
    await producer.start()
    try:
        futures = []
        started = time.monotonic()
        for n, event in enumerate(events):
            delay = started + n / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            key, value = _encode(event)
            sent_at[str(event["event_id"])] = time.time()
            futures.append(await producer.send(topic, value, key=key))
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return sent_at
