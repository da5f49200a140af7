"""The ordering rules: which remembered shipment state makes an event skip, and why."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

import pytest

from tests.factories import BASE_TIME, event
from worker.dedup import ShipmentState
from worker.dedup.rules import skip_reason
from worker.events import Event

THEN = BASE_TIME.timestamp()
NON_TERMINAL = (
    "order_confirmed",
    "processing",
    "shipped",
    "in_transit",
    "out_for_delivery",
    "delayed",
    "delivery_failed",
    "available_for_pickup",
    "exception",
)

MakeEvent = Callable[..., Event]


@pytest.fixture
def make_event() -> MakeEvent:
    """Factory: a validated event with ``status`` that happened ``seconds`` after BASE_TIME
    (or at ``occurred_at``, an RFC 3339 string)."""

    def make(status: str, seconds: float = 0, occurred_at: str | None = None) -> Event:
        fields: dict[str, Any] = event("evt-1", status)
        when = occurred_at or datetime.fromtimestamp(THEN + seconds, BASE_TIME.tzinfo).isoformat()
        fields["occurred_at"] = when
        return Event.model_validate(fields)

    return make


def test_nothing_remembered_may_notify(make_event: MakeEvent) -> None:
    """An event for a shipment with no remembered state always may notify."""
    assert skip_reason(make_event("delivered"), None) is None


def test_an_older_event_is_stale(make_event: MakeEvent) -> None:
    """An event that happened one second before the remembered one is stale."""
    shipment = ShipmentState("delivered", THEN)
    assert skip_reason(make_event("in_transit", seconds=-1), shipment) == "stale"


def test_a_fraction_of_a_second_older_is_stale(make_event: MakeEvent) -> None:
    """Staleness compares sub-second times: 1 ms earlier is already stale."""
    shipment = ShipmentState("shipped", THEN + 0.5)
    assert skip_reason(make_event("in_transit", seconds=0.499), shipment) == "stale"


def test_staleness_wins_over_the_terminal_rule(make_event: MakeEvent) -> None:
    """An older ``returned`` after ``delivered`` is stale, not a permitted return."""
    shipment = ShipmentState("delivered", THEN)
    assert skip_reason(make_event("returned", seconds=-60), shipment) == "stale"


def test_same_time_with_a_different_status_is_not_stale(make_event: MakeEvent) -> None:
    """Stale means strictly older: the same instant with a new status may notify."""
    shipment = ShipmentState("shipped", THEN)
    assert skip_reason(make_event("in_transit"), shipment) is None


def test_same_time_with_the_same_status_is_a_repeat(make_event: MakeEvent) -> None:
    """The same status at the same instant is a carrier re-send."""
    shipment = ShipmentState("in_transit", THEN)
    assert skip_reason(make_event("in_transit"), shipment) == "repeated_status"


def test_a_later_event_with_the_same_status_is_a_repeat(make_event: MakeEvent) -> None:
    """A status the shipment already has is skipped even when the event is newer."""
    shipment = ShipmentState("in_transit", THEN)
    assert skip_reason(make_event("in_transit", seconds=3600), shipment) == "repeated_status"


def test_a_later_event_with_a_new_status_may_notify(make_event: MakeEvent) -> None:
    """A newer event with a different, non-terminal predecessor may notify."""
    shipment = ShipmentState("in_transit", THEN)
    assert skip_reason(make_event("out_for_delivery", seconds=60), shipment) is None


def test_a_status_returning_after_a_different_one_notifies_again(make_event: MakeEvent) -> None:
    """in_transit -> delayed -> in_transit: the second in_transit is a new fact."""
    shipment = ShipmentState("delayed", THEN)
    assert skip_reason(make_event("in_transit", seconds=60), shipment) is None


@pytest.mark.parametrize("terminal", ["delivered", "returned", "cancelled"])
@pytest.mark.parametrize("status", NON_TERMINAL)
def test_nothing_but_returned_follows_a_terminal_status(
    make_event: MakeEvent, terminal: str, status: str
) -> None:
    """After delivered/returned/cancelled, a newer non-terminal status is after_terminal."""
    shipment = ShipmentState(terminal, THEN)
    assert skip_reason(make_event(status, seconds=60), shipment) == "after_terminal"


@pytest.mark.parametrize(
    ("terminal", "status"),
    [("delivered", "cancelled"), ("cancelled", "delivered")],
)
def test_one_terminal_status_does_not_follow_another(
    make_event: MakeEvent, terminal: str, status: str
) -> None:
    """A different terminal status other than returned is after_terminal too."""
    shipment = ShipmentState(terminal, THEN)
    assert skip_reason(make_event(status, seconds=60), shipment) == "after_terminal"


@pytest.mark.parametrize("terminal", ["delivered", "cancelled"])
def test_returned_may_follow_delivered_or_cancelled(make_event: MakeEvent, terminal: str) -> None:
    """``returned`` is the one status that still notifies after a terminal one."""
    shipment = ShipmentState(terminal, THEN)
    assert skip_reason(make_event("returned", seconds=60), shipment) is None


@pytest.mark.parametrize("terminal", ["delivered", "returned", "cancelled"])
def test_a_terminal_status_repeated_is_a_repeat(make_event: MakeEvent, terminal: str) -> None:
    """A terminal status that comes again (including returned after returned) is a repeat."""
    shipment = ShipmentState(terminal, THEN)
    assert skip_reason(make_event(terminal, seconds=60), shipment) == "repeated_status"


def test_the_same_instant_in_another_zone_is_not_stale(make_event: MakeEvent) -> None:
    """09:00+07:00 and 02:00Z are the same instant, so a new status then may notify."""
    shipment = ShipmentState("shipped", datetime.fromisoformat("2026-11-21T02:00:00Z").timestamp())
    later = make_event("in_transit", occurred_at="2026-11-21T09:00:00+07:00")
    assert skip_reason(later, shipment) is None


def test_a_later_wall_clock_in_an_eastern_zone_can_still_be_stale(make_event: MakeEvent) -> None:
    """08:00+07:00 reads later than 02:00Z but is 01:00Z, an hour earlier: stale."""
    shipment = ShipmentState("shipped", datetime.fromisoformat("2026-11-21T02:00:00Z").timestamp())
    earlier = make_event("in_transit", occurred_at="2026-11-21T08:00:00+07:00")
    assert skip_reason(earlier, shipment) == "stale"
