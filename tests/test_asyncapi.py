"""The AsyncAPI document (docs/asyncapi.json): generated from the models, never stale, every
reference resolves, and what the worker and the ``cloudevents`` SDK really write validates
against the schemas it gives for each topic."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cloudevents.core.bindings import kafka
from cloudevents.core.v1.event import CloudEvent
from jsonschema import Draft7Validator

from tests.factories import event
from tests.test_preview_cli import worker_cli
from worker.envelope import Envelope
from worker.retry import RetryState
from worker.sidetopics import dead_letter_headers, origin_headers

ROOT = Path(__file__).resolve().parent.parent
DOCUMENT = json.loads((ROOT / "docs" / "asyncapi.json").read_text(encoding="utf-8"))


def test_asyncapi_matches_the_committed_file() -> None:
    """``python -m worker asyncapi`` prints exactly docs/asyncapi.json, so it cannot go stale."""
    result = worker_cli("asyncapi")
    assert (result.returncode, result.stderr) == (0, "")
    committed = (ROOT / "docs" / "asyncapi.json").read_text(encoding="utf-8")
    assert result.stdout == committed
    assert DOCUMENT["asyncapi"] == "3.0.0"


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        if isinstance(node.get("$ref"), str):
            yield node["$ref"]
        for value in node.values():
            yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def test_every_reference_resolves_inside_the_document() -> None:
    """Each ``$ref`` is a local JSON pointer to something the document holds (the pydantic
    ``$defs`` were moved to the components, none left behind)."""
    refs = set(_refs(DOCUMENT))
    assert "#/components/schemas/Shipment" in refs
    for ref in refs:
        node = DOCUMENT
        for part in ref.removeprefix("#/").split("/"):
            node = node[part]


def test_the_three_topics_carry_their_messages() -> None:
    """The main topic takes plain JSON and both CloudEvents modes; the side topics are named
    after it, as the worker names them by default."""
    channels = DOCUMENT["channels"]
    assert channels["shipmentStatus"]["address"] == "shipment-status"
    assert set(channels["shipmentStatus"]["messages"]) == {
        "shipmentStatusEvent",
        "cloudEventBinary",
        "cloudEventStructured",
    }
    assert channels["retry"]["address"] == "shipment-status.retry"
    assert channels["deadLetter"]["address"] == "shipment-status.dlq"


def valid_as(schema: dict[str, Any], instance: Any) -> list[str]:
    """What is wrong with ``instance`` under ``schema`` (resolved in the document)."""
    root = {**schema, "components": DOCUMENT["components"]}
    return [e.message for e in Draft7Validator(root).iter_errors(instance)]


def message(name: str) -> dict[str, Any]:
    return dict(DOCUMENT["components"]["messages"][name])


def as_text(headers: Any) -> dict[str, str]:
    items = headers.items() if isinstance(headers, dict) else headers
    return {name: value.decode() for name, value in items}


def cloudevent() -> CloudEvent:
    data = event("unused", "shipped")
    del data["event_id"], data["occurred_at"]
    return CloudEvent({"id": "ce-1", "source": "/wms", "type": "shipment.status.changed"}, data)


def test_what_producers_write_validates_against_the_main_topic_messages() -> None:
    """A plain event, and a CloudEvent written by the SDK in binary and in structured mode,
    validate against the headers and payload of their message."""
    assert valid_as(message("shipmentStatusEvent")["payload"], event("e1", "shipped")) == []
    binary = kafka.to_binary_event(cloudevent())
    spec = message("cloudEventBinary")
    assert valid_as(spec["headers"], as_text(binary.headers)) == []
    assert valid_as(spec["payload"], json.loads(binary.value)) == []
    structured = kafka.to_structured_event(cloudevent())
    spec = message("cloudEventStructured")
    assert valid_as(spec["headers"], as_text(structured.headers)) == []
    assert valid_as(spec["payload"], json.loads(structured.value)) == []


@pytest.mark.parametrize(
    ("name", "instance"),
    [
        ("cloudEventBinary", {"ce_specversion": "0.3", "ce_id": "1", "ce_source": "/s"}),
        ("cloudEventStructured", {"content-type": "application/json"}),
    ],
)
def test_the_headers_the_worker_refuses_do_not_validate(name: str, instance: Any) -> None:
    """The schemas are not empty promises: a wrong specversion, a missing ce_type or a
    structured mode without its content type fail them."""
    assert valid_as(message(name)["headers"], instance) != []


def test_what_the_worker_writes_validates_against_the_side_topic_messages() -> None:
    """The headers the worker writes on a retry record and on a dead letter validate against
    their messages' header schemas."""
    envelope = Envelope("shipment-status", 0, 7, b"SHP-1", b"{}", (("trace-id", b"t"),))
    state = RetryState("sms", 2, 1764800000.5, 1764799000.25, ((1764799000.25, "timeout"),))
    retry = [*origin_headers(envelope), *state.headers(), ("error.message", b"timeout")]
    assert valid_as(message("retryRecord")["headers"], as_text(retry)) == []
    letter = dead_letter_headers(envelope, "permanent", "550 no such user", "email")
    assert valid_as(message("deadLetter")["headers"], as_text(letter)) == []
    assert valid_as(message("deadLetter")["headers"], {"error.type": "x"}) != []
