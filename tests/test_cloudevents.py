"""The CloudEvents mapping (worker/cloudevents.py), without a broker: records as the
``cloudevents`` SDK writes them in binary and structured mode, and as producers get them wrong.
The real-broker twin is tests/test_cloudevents_kafka.py."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from cloudevents.core.bindings import kafka
from cloudevents.core.v1.event import CloudEvent
from hypothesis import given
from hypothesis import strategies as st

from tests.factories import event
from worker.cloudevents import (
    BAD_CLOUDEVENT,
    DEFAULT_TYPES,
    UNEXPECTED_TYPE,
    AcceptedTypes,
    Decoder,
)
from worker.envelope import Envelope
from worker.events import Event, InvalidEvent, decode
from worker.settings import AppSettings, ConfigError, load_settings

TYPE = "shipment.status.changed"
CE_TIME = datetime(2026, 11, 21, 9, 30, tzinfo=UTC)
decoder = Decoder()


def data(**overrides: Any) -> dict[str, Any]:
    """An event without the fields the attributes can give (``event_id``, ``occurred_at``)."""
    body = event("unused", "shipped")
    del body["event_id"], body["occurred_at"]
    return {**body, **overrides}


def cloudevent(body: Any, **attributes: Any) -> CloudEvent:
    return CloudEvent(
        {"id": "ce-1", "source": "/wms", "type": TYPE, "time": CE_TIME, **attributes}, body
    )


def envelope(message: kafka.KafkaMessage) -> Envelope:
    key = message.key.encode() if isinstance(message.key, str) else message.key
    return Envelope("t", 0, 0, key, message.value, tuple(message.headers.items()))


def binary(body: Any, **attributes: Any) -> Envelope:
    return envelope(kafka.to_binary_event(cloudevent(body, **attributes)))


def structured(body: Any, **attributes: Any) -> Envelope:
    return envelope(kafka.to_structured_event(cloudevent(body, **attributes)))


def raw(value: bytes | None, *headers: tuple[str, bytes]) -> Envelope:
    return Envelope("t", 0, 0, b"SHP-1", value, headers)


BINARY = (
    ("ce_specversion", b"1.0"),
    ("ce_id", b"ce-1"),
    ("ce_source", b"/wms"),
    ("ce_type", TYPE.encode()),
)
VALUE = json.dumps(data()).encode()


def valid(got: Event | InvalidEvent) -> Event:
    assert isinstance(got, Event), got
    return got


@pytest.mark.parametrize("mode", [binary, structured], ids=["binary", "structured"])
def test_id_and_time_give_event_id_and_occurred_at_when_the_data_has_none(mode: Any) -> None:
    """A CloudEvent whose data lacks event_id and occurred_at gets them from id and time."""
    got = valid(decoder(mode(data(), datacontenttype="application/json")))
    assert got.event_id == "ce-1"
    assert got.occurred_at == CE_TIME
    assert (got.status, got.shipment.id) == ("shipped", "SHP-1")


@pytest.mark.parametrize("mode", [binary, structured], ids=["binary", "structured"])
def test_the_data_wins_over_the_attributes(mode: Any) -> None:
    """Where the data has event_id or occurred_at, the data's value counts, not id or time."""
    body = data(event_id="evt-data", occurred_at="2026-11-21T08:15:00+07:00")
    got = valid(decoder(mode(body)))
    assert got.event_id == "evt-data"
    assert got.occurred_at == datetime(2026, 11, 21, 1, 15, tzinfo=UTC)


def test_a_null_field_in_the_data_is_filled_like_an_absent_one() -> None:
    """``"event_id": null`` in the data is taken as absent: ce_id gives it."""
    assert valid(decoder(binary(data(event_id=None, occurred_at=None)))).event_id == "ce-1"


def test_structured_data_base64_is_read_as_the_json_it_encodes() -> None:
    """A structured CloudEvent with data_base64 (the SDK writes bytes data that way) carries
    its JSON event base64-encoded."""
    message = structured(json.dumps(data()).encode())
    assert b'"data_base64"' in (message.value or b"")
    assert valid(decoder(message)).event_id == "ce-1"


def test_a_plain_json_event_reads_as_before() -> None:
    """Without ce_* headers or a CloudEvents content-type the value is read by events.decode,
    a JSON content-type header or not."""
    value = json.dumps(event("evt-1", "shipped")).encode()
    assert decoder(raw(value)) == decode(value)
    assert decoder(raw(value, ("content-type", b"application/json"))) == decode(value)
    assert decoder(raw(b"{not json", ("content-type", b"text/plain"))) == decode(b"{not json")


def test_binary_mode_without_ce_time_takes_occurred_at_from_the_data() -> None:
    """ce_time is optional: the data's occurred_at is used; without either, the event is a
    schema error naming occurred_at."""
    body = data(occurred_at="2026-11-21T08:15:00Z")
    assert valid(decoder(raw(json.dumps(body).encode(), *BINARY))).event_id == "ce-1"
    assert decoder(raw(VALUE, *BINARY)) == InvalidEvent("schema", "occurred_at: Field required")


def test_a_type_not_accepted_is_refused_with_the_type_and_the_setting() -> None:
    """A CloudEvent of another type is unexpected_ce_type, naming the type and
    CLOUDEVENTS_TYPES; a pattern accepts the types it matches."""
    other = binary(data(), type="com.example.order.paid")
    assert decoder(other) == InvalidEvent(
        UNEXPECTED_TYPE,
        "ce_type 'com.example.order.paid' is not accepted "
        "(CLOUDEVENTS_TYPES=shipment.status.changed)",
    )
    got = decoder(structured(data(), type="com.example.order.paid"))
    assert isinstance(got, InvalidEvent) and got.message.startswith("type 'com.example.order.")
    wide = Decoder(AcceptedTypes(("com.example.*", "x")))
    assert valid(wide(other)).event_id == "ce-1"
    assert isinstance(wide(binary(data(), type="org.example.x")), InvalidEvent)


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        (
            {"ce_specversion": b"0.3"},
            "binary CloudEvent: ce_specversion: '0.3' is not supported: the worker reads "
            "CloudEvents 1.0",
        ),
        ({"ce_specversion": None}, "binary CloudEvent: ce_specversion: Field required"),
        ({"ce_id": None}, "binary CloudEvent: ce_id: Field required"),
        (
            {"ce_source": b""},
            "binary CloudEvent: ce_source: String should have at least 1 character",
        ),
        (
            {"ce_time": b"1763712900"},
            "binary CloudEvent: ce_time: must be an RFC 3339 timestamp with offset, like "
            "2026-11-21T08:15:00+07:00",
        ),
        ({"ce_id": b"\xffce-1"}, "binary CloudEvent: header ce_id is not UTF-8"),
        (
            {"content-type": b"application/avro"},
            "binary CloudEvent: content-type 'application/avro' is not JSON, the worker reads "
            "JSON events",
        ),
    ],
    ids=["specversion", "no-specversion", "no-id", "empty-source", "epoch-time", "bytes", "avro"],
)
def test_a_malformed_binary_cloudevent_is_bad_with_the_header_named(
    headers: dict[str, bytes | None], message: str
) -> None:
    """A binary-mode record with a wrong or missing required header is bad_cloudevent, and the
    message names the header, even when the data has what the header would give."""
    fields = {**dict(BINARY), "ce_time": b"2026-11-21T09:30:00Z", **headers}
    given = tuple((k, v) for k, v in fields.items() if v is not None)
    body = json.dumps(data(occurred_at="2026-11-21T08:15:00Z")).encode()
    assert decoder(raw(body, *given)) == InvalidEvent(BAD_CLOUDEVENT, message)


def _structured_raw(document: Any, content_type: bytes = b"application/cloudevents+json") -> Any:
    return decoder(raw(json.dumps(document).encode(), ("content-type", content_type)))


ATTRIBUTES = {"specversion": "1.0", "id": "ce-1", "source": "/wms", "type": TYPE}


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({**ATTRIBUTES, "specversion": "0.3", "data": data()}, "structured CloudEvent: "
         "specversion: '0.3' is not supported: the worker reads CloudEvents 1.0"),
        ({**ATTRIBUTES, "id": 7, "data": data()},
         "structured CloudEvent: id: Input should be a valid string"),
        (ATTRIBUTES, "structured CloudEvent: has no data (nor data_base64 as a string)"),
        ({**ATTRIBUTES, "data": data(), "data_base64": "e30="},
         "structured CloudEvent: has both data and data_base64"),
        ({**ATTRIBUTES, "data_base64": "not base64!"}, "structured CloudEvent: data_base64 is "
         "not base64: Only base64 data is allowed"),
        ({**ATTRIBUTES, "datacontenttype": "text/xml", "data": "<e/>"}, "structured CloudEvent:"
         " datacontenttype 'text/xml' is not JSON, the worker reads JSON events"),
        ([ATTRIBUTES], "structured CloudEvent: the value must be a JSON object"),
    ],
    ids=["specversion", "id-number", "no-data", "both-data", "bad-base64", "xml", "batch-body"],
)  # fmt: skip
def test_a_malformed_structured_cloudevent_is_bad_with_the_attribute_named(
    document: Any, message: str
) -> None:
    """A structured CloudEvent with a wrong or missing attribute, or without usable data, is
    bad_cloudevent naming what is wrong."""
    assert _structured_raw(document) == InvalidEvent(BAD_CLOUDEVENT, message)


def test_other_structured_formats_and_batches_are_bad() -> None:
    """Only application/cloudevents+json is read: a batch or another event format is
    bad_cloudevent naming the content type."""
    got = _structured_raw([], b"application/cloudevents-batch+json")
    assert got == InvalidEvent(
        BAD_CLOUDEVENT,
        "content-type 'application/cloudevents-batch+json' is not supported: use "
        "application/cloudevents+json",
    )
    assert isinstance(_structured_raw({}, b"application/cloudevents+avro"), InvalidEvent)


def test_a_structured_value_that_is_not_json_is_refused_as_any_value() -> None:
    """The value of a structured CloudEvent is checked as any value is: not UTF-8, not JSON,
    a tombstone; and data_base64 that is not JSON is not_json."""
    header = ("content-type", b"application/cloudevents+json")
    assert decoder(raw(b"\xff{}", header)) == decode(b"\xff{}")
    assert decoder(raw(b"{", header)) == decode(b"{")
    assert decoder(raw(None, header)) == decode(None)
    not_json = {**ATTRIBUTES, "data_base64": base64.b64encode(b"<e/>").decode()}
    got = _structured_raw(not_json)
    assert isinstance(got, InvalidEvent) and got.kind == "not_json"


def test_structured_mode_ignores_ce_headers() -> None:
    """In structured mode the value holds the attributes: ce_* headers beside it change
    nothing (the binding's rule)."""
    message = structured(data())
    extra = (*message.headers, ("ce_type", b"other"), ("ce_specversion", b"0.3"))
    assert valid(decoder(Envelope("t", 0, 0, None, message.value, extra))).event_id == "ce-1"


def test_an_id_the_event_contract_refuses_is_a_schema_error_of_event_id() -> None:
    """ce_id becomes event_id under event_id's rules (here: at most 200 characters)."""
    got = decoder(binary(data(), id="x" * 201))
    assert got == InvalidEvent("schema", "event_id: String should have at most 200 characters")


def test_repeated_headers_count_by_their_last_value() -> None:
    """Kafka allows a header twice; as everywhere in the worker, the last value counts."""
    got = decoder(raw(VALUE, *BINARY, ("ce_id", b"ce-2"), ("ce_time", b"2026-11-21T09:30:00Z")))
    assert valid(got).event_id == "ce-2"


HEADER_NAMES = st.sampled_from(
    ["ce_id", "ce_type", "ce_source", "ce_specversion", "ce_time", "content-type", "ce_x", "x"]
)


@given(
    st.lists(st.tuples(HEADER_NAMES, st.binary(max_size=40)), max_size=8),
    st.one_of(st.none(), st.binary(max_size=60), st.just(VALUE)),
)
def test_any_header_bytes_give_an_event_or_a_reason_never_an_exception(
    headers: list[tuple[str, bytes]], value: bytes | None
) -> None:
    """Whatever bytes the ce_* and content-type headers and the value hold, decoding returns
    an Event or an InvalidEvent: it never raises."""
    got = decoder(raw(value, *BINARY, *headers))
    assert isinstance(got, Event | InvalidEvent)


def test_cloudevents_types_is_a_comma_separated_list(monkeypatch: pytest.MonkeyPatch) -> None:
    """CLOUDEVENTS_TYPES lists names and patterns separated by commas; unset, the default."""
    monkeypatch.delenv("CLOUDEVENTS_TYPES", raising=False)
    assert AppSettings().cloudevents_types == DEFAULT_TYPES == ("shipment.status.changed",)
    monkeypatch.setenv("CLOUDEVENTS_TYPES", " com.shop.a , com.shop.b.*,")
    assert AppSettings().cloudevents_types == ("com.shop.a", "com.shop.b.*")


def test_cloudevents_types_without_a_type_stops_start_up_naming_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An empty CLOUDEVENTS_TYPES would refuse every CloudEvent: it is a configuration error,
    one line naming the variable."""
    monkeypatch.setenv("CLOUDEVENTS_TYPES", " , ")
    with pytest.raises(ConfigError) as error:
        load_settings()
    assert (
        "CLOUDEVENTS_TYPES: must name at least one CloudEvent type, e.g. shipment.status.changed "
        "(got ' , ')"
    ) in error.value.problems
