"""The dead-letter topic: where records that cannot be (or were not) notified are kept, unchanged
(same key, value and headers), with headers that say why and where they came from."""

from __future__ import annotations

from aiokafka import AIOKafkaProducer

from worker.pipeline import Envelope
from worker.settings import KafkaSettings

MAX_ERROR_MESSAGE = 1000


def build_producer(settings: KafkaSettings) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        bootstrap_servers=settings.bootstrap_servers,
        client_id=f"{settings.client_id}-dlq",
        acks="all",
        enable_idempotence=True,
    )


def dead_letter_headers(
    envelope: Envelope, error_type: str, message: str, channel: str | None
) -> list[tuple[str, bytes]]:
    reason = [
        ("error.type", error_type.encode()),
        ("error.message", message[:MAX_ERROR_MESSAGE].encode("utf-8", "replace")),
        ("original.topic", envelope.topic.encode()),
        ("original.partition", str(envelope.partition).encode()),
        ("original.offset", str(envelope.offset).encode()),
    ]
    if channel is not None:
        reason.append(("error.channel", channel.encode()))
    kept = [(k, v) for k, v in envelope.headers if not k.startswith(("error.", "original."))]
    return kept + reason


class KafkaDeadLetters:
    def __init__(self, producer: AIOKafkaProducer, topic: str) -> None:
        self._producer = producer
        self.topic = topic

    async def publish(
        self, envelope: Envelope, error_type: str, message: str, channel: str | None = None
    ) -> None:
        await self._producer.send_and_wait(
            self.topic,
            envelope.value,
            key=envelope.key,
            headers=dead_letter_headers(envelope, error_type, message, channel),
        )
