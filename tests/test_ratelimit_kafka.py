"""Provider rate limits through the real path: Kafka, the SMTP sink and an HTTP SMS sink that
answers 429 (with Retry-After) above 1 message a wall-clock second, the worker in this
process. What the sink received per second, and what went to the retry and dead-letter
topics, are counted."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from itertools import pairwise
from typing import Any

from tests.conftest import MakeTopic, Produce
from tests.factories import event, record
from tests.processes import end_offsets
from tests.sinks import SmsSink, SmtpSink
from tests.test_pipeline_kafka import wait_committed

Env = Callable[..., dict[str, str]]


async def side_topic_sizes(bootstrap: str, topic: str) -> tuple[int, int]:
    """Records on the retry and the dead-letter topic of main topic ``topic``."""
    retry = await end_offsets(bootstrap, f"{topic}.retry", 1)
    dead = await end_offsets(bootstrap, f"{topic}.dlq", 1)
    return sum(retry.values()), sum(dead.values())


def per_second(arrivals: list[tuple[float, int]]) -> list[int]:
    """How many requests the sink received in each wall-clock second, first to last."""
    counts = Counter(int(at) for at, _ in arrivals)
    first, last = min(counts), max(counts)
    return [counts.get(second, 0) for second in range(first, last + 1)]


async def burst(
    kafka_bootstrap: str,
    new_topic: MakeTopic,
    produce: Produce,
    worker_env: Env,
    run_worker: Any,
    sms_sink: SmsSink,
    count: int,
    **settings: str,
) -> tuple[str, float]:
    """``count`` shipped events (an email and an SMS each) produced at once, run until every
    SMS arrived and the offsets are committed; the topic and the seconds it took."""
    topic = await new_topic(partitions=1)
    env = worker_env(topic, SMS_PROVIDER="webhook", SMS_WEBHOOK_URL=sms_sink.url, **settings)
    phones = [f"+84 90 100 {n:04d}" for n in range(count)]
    events = [
        event(f"e{n}", "shipped", shipment_id=f"SHP-{n}", customer={"phone": phone})
        for n, phone in enumerate(phones)
    ]
    await produce(topic, [record(e) for e in events])
    async with run_worker(env):
        started = time.monotonic()
        await sms_sink.wait_for(count, timeout=90)
        took = time.monotonic() - started
        await wait_committed(kafka_bootstrap, env, {0: count})
        await asyncio.sleep(1.0)  # a late duplicate would follow
    return topic, took


async def test_a_burst_under_a_rate_limit_goes_out_at_the_rate_without_429s(
    kafka_bootstrap: str,
    new_topic: MakeTopic,
    produce: Produce,
    worker_env: Env,
    run_worker: Any,
    smtp_sink: SmtpSink,
    sms_sink: SmsSink,
) -> None:
    """SMS_RATE_LIMIT=1 against a provider allowing 1 a wall-clock second: a burst of 10 SMS
    leaves a second apart, each once, and nothing lands on the retry or the dead-letter topic.
    Sends start at least 1 s apart, but arrive with the machine's jitter (tens of ms under
    load), so two may now and then land in one second: that 429 pauses the channel for its
    Retry-After and the SMS goes on the next try, still in process."""
    sms_sink.per_second = 1
    topic, took = await burst(
        kafka_bootstrap,
        new_topic,
        produce,
        worker_env,
        run_worker,
        sms_sink,
        10,
        SMS_RATE_LIMIT="1",
    )
    seconds = per_second(sms_sink.arrivals)
    retried, dead = await side_topic_sizes(kafka_bootstrap, topic)
    gaps = [b - a for (a, _), (b, _) in pairwise(sms_sink.arrivals)]
    print(f"\nrate 1/s, burst 10: took {took:.1f} s; received per second {seconds};")
    print(f"429s {sms_sink.rejected}; smallest gap {min(gaps):.3f} s; retry {retried}; dlq {dead}")
    first, last = sms_sink.arrivals[0][0], sms_sink.arrivals[-1][0]
    assert last - first >= 9 * 0.99  # ten sends at 1 a second, not faster on average
    assert sms_sink.rejected <= 1 and max(seconds) <= 1 + sms_sink.rejected
    assert sorted(r.json["to"] for r in sms_sink.requests) == sorted(
        f"+8490100{n:04d}" for n in range(10)
    )
    assert (retried, dead) == (0, 0)
    assert len(smtp_sink.messages) == 10


async def test_a_429_pauses_the_channel_for_its_retry_after(
    kafka_bootstrap: str,
    new_topic: MakeTopic,
    produce: Produce,
    worker_env: Env,
    run_worker: Any,
    smtp_sink: SmtpSink,
    sms_sink: SmsSink,
) -> None:
    """No rate configured, a provider allowing 1 a second and asking for 2 s after a 429: after
    each 429 no SMS reaches it for the 2 s it asked (bar those already on their way); every SMS
    arrives once, and none is dead-lettered."""
    sms_sink.per_second, sms_sink.retry_after = 1, "2"
    topic, took = await burst(
        kafka_bootstrap,
        new_topic,
        produce,
        worker_env,
        run_worker,
        sms_sink,
        3,
        SEND_RETRIES="4",
    )
    retried, dead = await side_topic_sizes(kafka_bootstrap, topic)
    print(f"\nno rate, burst 3: took {took:.1f} s; arrivals {sms_sink.arrivals}; retry {retried}")
    refusals = [at for at, status in sms_sink.arrivals if status == 429]
    assert refusals, "the burst should have met the provider's limit"
    for refused in refusals:
        too_soon = [at for at, _ in sms_sink.arrivals if refused + 0.2 < at < refused + 2.0]
        assert too_soon == [], f"sent within the 2 s asked for after a 429 at {refused}"
    assert len(sms_sink.requests) == 3
    assert dead == 0


async def test_smtp_rate_limit_spaces_the_emails(
    kafka_bootstrap: str,
    new_topic: MakeTopic,
    produce: Produce,
    worker_env: Env,
    run_worker: Any,
) -> None:
    """SMTP_RATE_LIMIT=4: a burst of 8 emails reaches the SMTP server about a quarter second
    apart, never much closer, each once. Measured from the second: the first also opens the
    connection, which the second then reuses (one connection)."""
    arrivals: list[float] = []
    sink = SmtpSink(on_mail=lambda mail: arrivals.append(time.time())).start()
    try:
        topic = await new_topic(partitions=1)
        env = worker_env(
            topic,
            SMS_PROVIDER="disabled",
            SMTP_PORT=str(sink.port),
            SMTP_RATE_LIMIT="4",
            SMTP_POOL_SIZE="1",
        )
        await produce(
            topic, [record(event(f"e{n}", "shipped", shipment_id=f"S{n}")) for n in range(8)]
        )
        async with run_worker(env):
            await sink.wait_for(8)
            await wait_committed(kafka_bootstrap, env, {0: 8})
    finally:
        sink.stop()
    gaps = [b - a for a, b in pairwise(sorted(arrivals))]
    print(f"\nSMTP 4/s, burst 8: gaps {[round(g, 3) for g in gaps]}")
    assert len(sink.messages) == 8
    assert arrivals[-1] - arrivals[1] >= 6 * 0.25 - 0.03
    assert min(gaps[1:]) >= 0.2
