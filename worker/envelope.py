"""A Kafka record as the pipeline sees it: plain data, no Kafka client types."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from worker import headers

_OFFSET = re.compile(rb"[0-9]{1,19}\Z")  # a partition or an offset: a non-negative int64


@dataclass(frozen=True, slots=True)
class Envelope:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()
    timestamp: float | None = None  # the record's time (POSIX seconds), when the broker has one
    # why the consumer could not read the record as Kafka sent it (e.g. a header name that is
    # not UTF-8): the pipeline dead-letters it with what could be kept
    fault: str | None = None

    def header(self, name: str) -> bytes | None:
        """The last value of header ``name`` (Kafka allows repeats; the newest counts)."""
        found = None
        for key, value in self.headers:
            if key == name:
                found = value
        return found

    def from_producer(self) -> Envelope:
        """This record without the worker's own headers: on the main topic, where producers
        write, they were not set by the worker and are not trusted."""
        if not any(headers.is_ours(name) for name, _ in self.headers):
            return self
        kept = tuple((k, v) for k, v in self.headers if not headers.is_ours(k))
        return replace(self, headers=kept)

    def origin(self) -> tuple[str, int, int]:
        """Topic, partition and offset of the main-topic record this one stems from: itself,
        unless it is a retry that carries well-formed ``original.*`` headers."""
        topic = self.header(headers.ORIGINAL_TOPIC)
        partition = self.header(headers.ORIGINAL_PARTITION)
        offset = self.header(headers.ORIGINAL_OFFSET)
        if topic is None or partition is None or offset is None:
            return self.topic, self.partition, self.offset
        if not (_OFFSET.match(partition) and _OFFSET.match(offset)):
            return self.topic, self.partition, self.offset
        return topic.decode("utf-8", "replace"), int(partition), int(offset)

    def origin_timestamp(self) -> float | None:
        """The timestamp (POSIX seconds) of the main-topic record this one stems from: its
        own, unless it carries a well-formed ``original.timestamp`` header."""
        value = self.header(headers.ORIGINAL_TIMESTAMP)
        if value is None or not _OFFSET.match(value):
            return self.timestamp
        return int(value) / 1000

    @property
    def key_text(self) -> str | None:
        return self.key.decode("utf-8", "replace") if self.key is not None else None
