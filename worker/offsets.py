"""Completion watermarks: which offset of a partition may be committed.

Records of one partition finish out of order (different shipments run concurrently), but Kafka
only stores one committed offset per partition. The committable offset is one past the highest
offset below which every started record has finished; anything above a gap waits.
"""

from __future__ import annotations

from collections import deque


class Watermark:
    """Started and finished offsets of one partition."""

    def __init__(self) -> None:
        self._started: deque[int] = deque()
        self._finished: set[int] = set()
        self._committable: int | None = None
        self._last_started: int | None = None

    def start(self, offset: int) -> None:
        if self._last_started is not None and offset <= self._last_started:
            raise ValueError(f"offset {offset} started after {self._last_started}")
        self._started.append(offset)
        self._last_started = offset

    def finish(self, offset: int) -> None:
        self._finished.add(offset)
        while self._started and self._started[0] in self._finished:
            done = self._started.popleft()
            self._finished.discard(done)
            self._committable = done + 1

    @property
    def committable(self) -> int | None:
        """The offset to commit (next to read), or None while nothing has finished."""
        return self._committable

    @property
    def in_flight(self) -> int:
        return len(self._started)
