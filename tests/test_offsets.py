"""Completion watermarks: the committable offset never passes a record that is still running."""

from __future__ import annotations

import pytest

from worker.offsets import Watermark


def started(*offsets: int) -> Watermark:
    mark = Watermark()
    for offset in offsets:
        mark.start(offset)
    return mark


def test_nothing_is_committable_before_anything_finishes() -> None:
    """A fresh or merely started partition has no committable offset."""
    assert Watermark().committable is None
    assert started(0, 1).committable is None


def test_in_order_finishes_advance_one_past_the_last() -> None:
    """Finishing 5, 6, 7 in order makes 6, 7 and then 8 committable."""
    mark = started(5, 6, 7)
    seen = []
    for offset in (5, 6, 7):
        mark.finish(offset)
        seen.append(mark.committable)
    assert seen == [6, 7, 8]


def test_a_gap_holds_the_watermark_until_it_is_filled() -> None:
    """With 10 still running, finishing 11 and 12 commits nothing; finishing 10 jumps to 13."""
    mark = started(10, 11, 12)
    mark.finish(12)
    mark.finish(11)
    assert mark.committable is None
    mark.finish(10)
    assert mark.committable == 13


def test_the_watermark_stops_below_the_first_unfinished_record() -> None:
    """Finishing 20 and 22 of 20..23 commits 21, one past the contiguous run."""
    mark = started(20, 21, 22, 23)
    mark.finish(22)
    mark.finish(20)
    assert mark.committable == 21
    mark.finish(23)
    assert mark.committable == 21
    mark.finish(21)
    assert mark.committable == 24


def test_offsets_may_skip_numbers() -> None:
    """Compacted or transactional partitions skip offsets; the watermark follows what started."""
    mark = started(3, 7, 42)
    mark.finish(3)
    mark.finish(7)
    assert mark.committable == 8
    mark.finish(42)
    assert mark.committable == 43


@pytest.mark.parametrize("offset", [4, 5])
def test_starting_an_offset_not_above_the_last_raises(offset: int) -> None:
    """Offsets of a partition start in increasing order; a repeat or a lower one is a bug."""
    mark = started(3, 5)
    with pytest.raises(ValueError, match=rf"^offset {offset} started after 5$"):
        mark.start(offset)
    assert mark.in_flight == 2


def test_starting_below_a_finished_offset_raises_once_all_are_done() -> None:
    """Also after every started record finished, a lower offset cannot start again."""
    mark = started(5, 6)
    mark.finish(5)
    mark.finish(6)
    with pytest.raises(ValueError, match=r"^offset 4 started after 6$"):
        mark.start(4)
    assert mark.committable == 7


def test_in_flight_counts_started_records_not_yet_below_the_watermark() -> None:
    """in_flight counts records that started and are not yet covered by the watermark."""
    mark = Watermark()
    assert mark.in_flight == 0
    mark.start(0)
    mark.start(1)
    mark.start(2)
    assert mark.in_flight == 3
    mark.finish(1)
    assert mark.in_flight == 3
    mark.finish(0)
    assert mark.in_flight == 1
    mark.finish(2)
    assert mark.in_flight == 0
