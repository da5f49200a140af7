"""Deduplication and ordering: what the worker remembers about events and shipments.

``rules`` decides (purely) whether an event may notify given what is remembered; the stores
remember it across restarts. ``open_store(url)`` picks a store by ``DEDUP_URL``:
``sqlite:///path`` (default, no other service), ``redis://host:port/db`` (shared by replicas)
or ``memory://`` (tests).
"""

from __future__ import annotations

from worker.dedup.store import DedupStore, EventRecord, ShipmentState, Snapshot, open_store

__all__ = ["DedupStore", "EventRecord", "ShipmentState", "Snapshot", "open_store"]
