"""CloudEvents 1.0 in the Kafka protocol binding: how a record that carries a CloudEvent becomes
an ``Event``. The headers say which of three shapes a record has:

    content-type: application/cloudevents+json   structured: the value is the CloudEvent, its
                                                  attributes and ``data`` (or ``data_base64``)
    any ``ce_*`` header                           binary: the attributes are ``ce_*`` headers,
                                                  the value is the data, ``content-type`` its
                                                  datacontenttype
    neither                                       plain: the value is the event (events.decode)

The data is an ``events.Event``. The attributes fill only what it leaves out (absent or null):
``id`` gives ``event_id``, ``time`` gives ``occurred_at``; where the data has the field, the
data wins. A record whose CloudEvent is malformed (not specversion 1.0, a required attribute
missing, a header that is not UTF-8, data that is not JSON) is invalid as ``bad_cloudevent``;
a well-formed one of a type the worker was not told to accept (``CLOUDEVENTS_TYPES``) as
``unexpected_ce_type``. Both are dead-lettered like any invalid record, with the reason.

Not the ``cloudevents`` SDK: on the way in it invents an ``id`` and a ``time`` that a record
lacks (a random ``event_id`` would defeat deduplication) and raises on header bytes or keys
that are not UTF-8. The tests publish with the SDK, so both modes are checked against it.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Annotated

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
)

from worker import events
from worker.envelope import Envelope
from worker.events import Event, InvalidEvent, TimestampText

BAD_CLOUDEVENT = "bad_cloudevent"
UNEXPECTED_TYPE = "unexpected_ce_type"
DEFAULT_TYPES = ("shipment.status.changed",)

CONTENT_TYPE = "content-type"
HEADER_PREFIX = "ce_"
STRUCTURED_JSON = "application/cloudevents+json"
SPECVERSION = "1.0"
_JSON_TYPES = ("application/json", "text/json")
# how an attribute is named to the producer: ``ce_id`` in binary mode, ``id`` in structured
_Namer = Callable[[str], str]


@dataclass(frozen=True, slots=True)
class AcceptedTypes:
    """The CloudEvent types the worker takes: exact names or shell-style patterns
    (``com.shop.shipment.*``)."""

    patterns: tuple[str, ...] = DEFAULT_TYPES

    def __contains__(self, event_type: object) -> bool:
        return isinstance(event_type, str) and any(
            fnmatchcase(event_type, p) for p in self.patterns
        )

    def __str__(self) -> str:
        return ",".join(self.patterns)


def _version_one(value: str) -> str:
    if value != SPECVERSION:
        raise ValueError(f"{value[:20]!r} is not supported: the worker reads CloudEvents 1.0")
    return value


NonEmpty = Annotated[str, StringConstraints(min_length=1)]


class Attributes(BaseModel):
    """The context attributes the worker reads; others (extensions among them) are ignored."""

    model_config = ConfigDict(extra="ignore", frozen=True, title="CloudEventAttributes")

    specversion: Annotated[str, AfterValidator(_version_one)] = Field(
        json_schema_extra={"const": SPECVERSION}
    )
    id: NonEmpty
    source: NonEmpty
    type: NonEmpty
    time: TimestampText | None = Field(None, json_schema_extra={"format": "date-time"})
    datacontenttype: NonEmpty | None = None
    subject: NonEmpty | None = None


@dataclass(frozen=True, slots=True)
class Decoder:
    """A record of the main or the retry topic to its event, whichever shape it has."""

    accepted: AcceptedTypes = AcceptedTypes()

    def __call__(self, envelope: Envelope, now: float | None = None) -> Event | InvalidEvent:
        content_type = envelope.header(CONTENT_TYPE)
        if content_type is not None and _is_structured(content_type):
            return self._structured(envelope.value, content_type, now)
        if any(name.startswith(HEADER_PREFIX) for name, _ in envelope.headers):
            return self._binary(envelope, now)
        return events.decode(envelope.value, now)

    def _binary(self, envelope: Envelope, now: float | None) -> Event | InvalidEvent:
        fields = _binary_fields(envelope.headers)
        if isinstance(fields, InvalidEvent):
            return fields
        attributes = self._checked(fields, "binary CloudEvent", header_name)
        if isinstance(attributes, InvalidEvent):
            return attributes
        data = events.read_json(envelope.value)
        return data if isinstance(data, InvalidEvent) else _event(data, attributes, now)

    def _structured(
        self, value: bytes | None, content_type: bytes, now: float | None
    ) -> Event | InvalidEvent:
        media = _media_type(content_type)
        if media != STRUCTURED_JSON:  # a batch, or a format other than JSON (Avro, Protobuf)
            return _bad(f"content-type {media[:100]!r} is not supported: use {STRUCTURED_JSON}")
        document = events.read_json(value)
        if isinstance(document, InvalidEvent):
            return document
        if not isinstance(document, dict):
            return _bad("structured CloudEvent: the value must be a JSON object")
        attributes = self._checked(document, "structured CloudEvent", str)
        if isinstance(attributes, InvalidEvent):
            return attributes
        data = _structured_data(document)
        return data if isinstance(data, InvalidEvent) else _event(data, attributes, now)

    def _checked(
        self, fields: Mapping[str, object], mode: str, name_of: _Namer
    ) -> Attributes | InvalidEvent:
        """The attributes, if they make a CloudEvent 1.0 of an accepted type whose data is
        JSON."""
        try:
            attributes = Attributes.model_validate(fields)
        except ValidationError as exc:
            return _bad(f"{mode}: {_summarize(exc, name_of)}")
        if attributes.type not in self.accepted:
            return InvalidEvent(
                UNEXPECTED_TYPE,
                f"{name_of('type')} {attributes.type[:200]!r} is not accepted "
                f"(CLOUDEVENTS_TYPES={self.accepted})",
            )
        content_type = attributes.datacontenttype
        if content_type is not None and not _is_json(content_type):
            return _bad(
                f"{mode}: {name_of('datacontenttype')} {content_type[:100]!r} is not JSON, "
                "the worker reads JSON events"
            )
        return attributes


def header_name(attribute: str) -> str:
    return CONTENT_TYPE if attribute == "datacontenttype" else HEADER_PREFIX + attribute


def _binary_fields(headers: Iterable[tuple[str, bytes]]) -> dict[str, str] | InvalidEvent:
    """The attributes in a binary-mode record's headers; a repeated header's last value counts,
    as everywhere (``Envelope.header``)."""
    fields: dict[str, str] = {}
    for name, raw in headers:
        if name.startswith(HEADER_PREFIX):
            attribute = name.removeprefix(HEADER_PREFIX)
        elif name == CONTENT_TYPE:
            attribute = "datacontenttype"
        else:
            continue
        try:
            fields[attribute] = raw.decode("utf-8")
        except UnicodeDecodeError:
            return _bad(f"binary CloudEvent: header {name[:100]} is not UTF-8")
    return fields


def _structured_data(document: dict[str, object]) -> object:
    """The data of a structured CloudEvent, parsed: ``data`` as it is, ``data_base64`` decoded
    and read as a JSON value; or why there is none."""
    if "data" in document and "data_base64" in document:
        return _bad("structured CloudEvent: has both data and data_base64")
    if "data" in document:
        return document["data"]
    encoded = document.get("data_base64")
    if not isinstance(encoded, str):
        return _bad("structured CloudEvent: has no data (nor data_base64 as a string)")
    try:
        raw = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as exc:
        return _bad(f"structured CloudEvent: data_base64 is not base64: {exc}")
    return events.read_json(raw)


def _event(data: object, attributes: Attributes, now: float | None) -> Event | InvalidEvent:
    """The event in ``data``, with what it leaves out taken from the attributes."""
    if isinstance(data, dict):
        data = dict(data)
        if data.get("event_id") is None:
            data["event_id"] = attributes.id
        if data.get("occurred_at") is None and attributes.time is not None:
            data["occurred_at"] = attributes.time
    return events.validate(data, now)


def _is_structured(content_type: bytes) -> bool:
    return _media_type(content_type).startswith("application/cloudevents")


def _is_json(content_type: str) -> bool:
    media = _media_type(content_type)
    return media in _JSON_TYPES or media.endswith("+json")


def _media_type(content_type: bytes | str) -> str:
    """``application/json`` of ``Application/JSON; charset=utf-8``, whatever bytes it holds."""
    if isinstance(content_type, bytes):
        content_type = content_type.decode("utf-8", "replace")
    return content_type.split(";", 1)[0].strip().lower()


def _summarize(exc: ValidationError, name_of: _Namer) -> str:
    parts = []
    for error in exc.errors(include_url=False, include_input=False)[:5]:
        where = name_of(str(error["loc"][0])) if error["loc"] else "attributes"
        parts.append(f"{where}: {error['msg'].removeprefix('Value error, ')}")
    return "; ".join(parts)


def _bad(message: str) -> InvalidEvent:
    return InvalidEvent(BAD_CLOUDEVENT, message)
