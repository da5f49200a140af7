"""The ordering rules, as one pure function.

An event that is not a redelivery may notify unless, compared with the newest event already
accepted for its shipment, it is
- ``stale``: it happened earlier (an "in transit" must never follow "delivered");
- ``after_terminal``: the shipment already reached delivered/returned/cancelled, and only
  ``returned`` may still follow;
- ``repeated_status``: it repeats the status the shipment already has (carriers re-send).
A status that comes back after a different one is a new fact and notifies again.
"""

from __future__ import annotations

from worker.dedup.store import ShipmentState
from worker.events import TERMINAL_STATUSES, Event


def skip_reason(event: Event, shipment: ShipmentState | None) -> str | None:
    """The rule that skips ``event``, or None when it may notify."""
    if shipment is None:
        return None
    if event.occurred_at.timestamp() < shipment.occurred_at:
        return "stale"
    if shipment.status in TERMINAL_STATUSES and not (
        event.status == "returned" and shipment.status != "returned"
    ):
        return "repeated_status" if event.status == shipment.status else "after_terminal"
    if event.status == shipment.status:
        return "repeated_status"
    return None
