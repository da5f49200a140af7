"""A Kafka record as the pipeline sees it: plain data, no Kafka client types."""

from __future__ import annotations

from dataclasses import dataclass

REPLAYED_FROM = "replay.from"  # set by `dlq replay`: the dead-letter record it came from


@dataclass(frozen=True, slots=True)
class Envelope:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()

    def header(self, name: str) -> bytes | None:
        """The last value of header ``name`` (Kafka allows repeats; the newest counts)."""
        found = None
        for key, value in self.headers:
            if key == name:
                found = value
        return found

    def header_map(self) -> dict[str, bytes]:
        return dict(self.headers)

    def origin(self) -> tuple[str, int, int]:
        """Topic, partition and offset of the record this one stems from: itself, unless it
        is a retry or replay that carries ``original.*`` headers."""
        topic, partition, offset = (
            self.header("original.topic"),
            self.header("original.partition"),
            self.header("original.offset"),
        )
        if topic is None or partition is None or offset is None:
            return self.topic, self.partition, self.offset
        return topic.decode(), int(partition), int(offset)

    @property
    def key_text(self) -> str | None:
        return self.key.decode("utf-8", "replace") if self.key is not None else None
