"""Publishing to the side topics: the dead-letter topic (records that cannot be, or were not,
notified) and the retry topic (notifications waiting for their next attempt, or held for the
recipient's quiet hours).

Both keep the record unchanged (same key, value and producer headers) and add headers saying
why and where it came from (``original.*`` always names the main-topic record). A publish is
retried until the broker has it: the record's offset is not committed before that, so a broker
outage delays the worker instead of losing the record.
"""

from __future__ import annotations

import asyncio

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from worker import headers, kafka_client
from worker.envelope import Envelope
from worker.logs import get_logger
from worker.metrics import Metrics
from worker.retry import Held, RetryState
from worker.settings import KafkaSettings

log = get_logger(__name__)


def build_producer(settings: KafkaSettings) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        **kafka_client.connection_kwargs(settings),
        client_id=f"{settings.client_id}-side",
        acks="all",
        enable_idempotence=True,
        # a batch per partition is in flight at a time (idempotence); the notification log's
        # records of hundreds of concurrent records wait for it to drain, so it must hold
        # them all: at 16 KiB, each drain woke every waiter to find the next batch full too
        max_batch_size=512 * 1024,
    )


def origin_headers(envelope: Envelope) -> list[tuple[str, bytes]]:
    """The producer's headers, and where the record stems from (the worker's own headers the
    record carried are replaced, never passed on)."""
    topic, partition, offset = envelope.origin()
    kept = [(k, v) for k, v in envelope.headers if not headers.is_ours(k)]
    origin = [
        *kept,
        (headers.ORIGINAL_TOPIC, topic.encode()),
        (headers.ORIGINAL_PARTITION, str(partition).encode()),
        (headers.ORIGINAL_OFFSET, str(offset).encode()),
    ]
    timestamp = envelope.origin_timestamp()
    if timestamp is not None:
        origin.append((headers.ORIGINAL_TIMESTAMP, str(round(timestamp * 1000)).encode()))
    return origin


def dead_letter_headers(
    envelope: Envelope,
    error_type: str,
    message: str,
    channel: str | None,
    extra: list[tuple[str, bytes]] | None = None,
) -> list[tuple[str, bytes]]:
    reason = [
        (headers.ERROR_TYPE, error_type.encode()),
        (headers.ERROR_MESSAGE, headers.text(message)),
    ]
    if channel is not None:
        reason.append((headers.ERROR_CHANNEL, channel.encode()))
    return [*origin_headers(envelope), *reason, *(extra or [])]


class SideTopics:
    """The dead-letter and retry publishers of one worker, sharing one idempotent producer."""

    def __init__(
        self,
        producer: AIOKafkaProducer,
        dead_letter_topic: str,
        retry_topic: str,
        metrics: Metrics | None = None,
    ):
        self._producer = producer
        self.dead_letter_topic = dead_letter_topic
        self.retry_topic = retry_topic
        self._metrics = metrics or Metrics()

    async def publish(
        self,
        envelope: Envelope,
        error_type: str,
        message: str,
        channel: str | None = None,
        extra: list[tuple[str, bytes]] | None = None,
    ) -> None:
        await self._send(
            self.dead_letter_topic,
            envelope,
            dead_letter_headers(envelope, error_type, message, channel, extra),
        )
        self._metrics.dead_letter(error_type)

    async def schedule(self, envelope: Envelope, state: RetryState, error: str) -> None:
        message = (headers.ERROR_MESSAGE, headers.text(error))
        await self._send(
            self.retry_topic, envelope, [*origin_headers(envelope), *state.headers(), message]
        )

    async def hold(self, envelope: Envelope, held: Held) -> None:
        await self._send(self.retry_topic, envelope, [*origin_headers(envelope), *held.headers()])

    async def _send(self, topic: str, envelope: Envelope, fields: list[tuple[str, bytes]]) -> None:
        # Kafka takes no record without both key and value (a keyless tombstone, or a record
        # the client could not read): such a record goes on with an empty value
        value = b"" if envelope.value is None and envelope.key is None else envelope.value
        await send_until_durable(self._producer, topic, value, envelope.key, fields)


async def send_until_durable(
    producer: AIOKafkaProducer,
    topic: str,
    value: bytes | None,
    key: bytes | None,
    fields: list[tuple[str, bytes]],
) -> None:
    """Publish one record, retrying with a growing delay until the broker has it."""
    delay = 0.5
    while True:
        try:
            await producer.send_and_wait(topic, value, key=key, headers=fields)
            return
        except KafkaError as exc:
            log.warning("side_topic_publish_failed", topic=topic, error=repr(exc), retry_in=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)
