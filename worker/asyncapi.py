"""The AsyncAPI 3.0 document of the worker's topics, built from the models that read and write
them: the event (``events.Event``), the CloudEvent attributes (``cloudevents.Attributes``) and
the worker's own headers (``headers``). ``python -m worker asyncapi > docs/asyncapi.json``
writes it; a test fails when the committed file is out of date.

Topic names are the defaults (``KAFKA_TOPIC``, ``<KAFKA_TOPIC>.retry``, ``<KAFKA_TOPIC>.dlq``);
the descriptions name the variables that change them.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from worker import cloudevents, headers
from worker.events import Channel, Event
from worker.settings import KafkaSettings

CONTRACT_VERSION = "1.0.0"  # of the topics' contract: bump on an incompatible change
KAFKA_BINDING = "0.5.0"
_REFS = "#/components/schemas/{model}"
_DIGITS = r"^[0-9]{1,19}$"
_SECONDS = r"^[0-9]+(\.[0-9]+)?$"

Digits = Annotated[str, Field(pattern=_DIGITS)]
Seconds = Annotated[str, Field(pattern=_SECONDS)]


class _Headers(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


class OriginHeaders(_Headers):
    """Where a side-topic record stems from: the main-topic record, also through retries."""

    original_topic: str = Field(alias=headers.ORIGINAL_TOPIC)
    original_partition: Digits = Field(alias=headers.ORIGINAL_PARTITION)
    original_offset: Digits = Field(alias=headers.ORIGINAL_OFFSET)


class RetryHeaders(OriginHeaders):
    """A notification waiting for its next attempt, with the producer's headers unchanged."""

    model_config = ConfigDict(title="RetryHeaders")

    channel: Channel = Field(alias=headers.RETRY_CHANNEL, description="The channel to retry.")
    attempt: Annotated[str, Field(pattern=r"^[1-9][0-9]{0,3}$")] = Field(
        alias=headers.RETRY_ATTEMPT, description="The attempt this record is, from 1."
    )
    due: Seconds = Field(alias=headers.RETRY_DUE, description="POSIX seconds: not run before.")
    first_failed_at: Seconds = Field(
        alias=headers.RETRY_FIRST_FAILED, description="POSIX seconds of the first failure."
    )
    history: str = Field(
        alias=headers.RETRY_HISTORY,
        description='Every failure so far, JSON in ASCII: [{"at": ISO time, "error": text}].',
    )
    error_message: str = Field(alias=headers.ERROR_MESSAGE, description="The last failure.")
    replay_from: str | None = Field(
        None,
        alias=headers.REPLAY_FROM,
        description="Set by `dlq replay`: partition:offset of the dead letter put back.",
    )
    replay_reason: str | None = Field(
        None, alias=headers.REPLAY_REASON, description="Set by `dlq replay`: its error.type."
    )


class DeadLetterHeaders(OriginHeaders):
    """Why a record could not be, or was not, notified, with the producer's headers
    unchanged (ce_* among them)."""

    model_config = ConfigDict(title="DeadLetterHeaders")

    error_type: str = Field(
        alias=headers.ERROR_TYPE,
        description="Why: not_utf8, not_json, too_large, schema, undecodable, bad_cloudevent, "
        "unexpected_ce_type, event_id_conflict, internal_error, permanent, retries_exhausted, "
        "bad_retry_record (docs/events.md, the dead-letter topic).",
    )
    error_message: str = Field(
        alias=headers.ERROR_MESSAGE,
        description="What was wrong, at most 1000 characters, control characters replaced.",
    )
    error_channel: Channel | None = Field(
        None, alias=headers.ERROR_CHANNEL, description="Set for a failed delivery only."
    )
    retry_history: str | None = Field(
        None, alias=headers.RETRY_HISTORY, description="For retries_exhausted: every failure."
    )


def document() -> dict[str, Any]:
    """The AsyncAPI 3.0 document, as JSON-ready data."""
    kafka = KafkaSettings.model_construct()  # only the defaults: no environment is read
    main, retry, dead = kafka.topic, kafka.retries_topic, kafka.dead_letter_topic
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "Shipment notifier topics",
            "version": CONTRACT_VERSION,
            "description": "Shipment-status events in, retries and dead letters out. "
            "docs/events.md is the prose of this contract.",
        },
        "defaultContentType": "application/json",
        "channels": {
            "shipmentStatus": _channel(
                main,
                "Shipment-status events from producers (KAFKA_TOPIC), as plain JSON or as "
                "CloudEvents 1.0 in binary or structured mode.",
                ["shipmentStatusEvent", "cloudEventBinary", "cloudEventStructured"],
            ),
            "retry": _channel(
                retry,
                "Notifications waiting for their next attempt (KAFKA_RETRY_TOPIC): written and "
                "read by the worker, and by `dlq replay`.",
                ["retryRecord"],
            ),
            "deadLetter": _channel(
                dead,
                "Records that cannot be, or were not, notified (KAFKA_DLQ_TOPIC).",
                ["deadLetter"],
            ),
        },
        "operations": {
            "receiveShipmentStatus": _operation(
                "receive", "shipmentStatus", "The worker consumes the events."
            ),
            "sendRetry": _operation("send", "retry", "A transient failure is retried later."),
            "receiveRetry": _operation(
                "receive", "retry", "Read in the same group as the events, each when due."
            ),
            "sendDeadLetter": _operation("send", "deadLetter", "A record is dead-lettered."),
        },
        "components": {"schemas": _schemas(), "messages": _messages()},
    }


def _channel(address: str, description: str, messages: list[str]) -> dict[str, Any]:
    return {
        "address": address,
        "description": description,
        "messages": {name: {"$ref": f"#/components/messages/{name}"} for name in messages},
        "bindings": {"kafka": {"topic": address, "bindingVersion": KAFKA_BINDING}},
    }


def _operation(action: str, channel: str, summary: str) -> dict[str, Any]:
    return {
        "action": action,
        "channel": {"$ref": f"#/channels/{channel}"},
        "summary": summary,
    }


def _schemas() -> dict[str, Any]:
    schemas: dict[str, Any] = {}
    event = _hoisted(Event.model_json_schema(ref_template=_REFS), schemas)
    schemas["ShipmentStatusEvent"] = event
    schemas["CloudEventData"] = {
        **event,
        "title": "CloudEventData",
        "description": "The event as a CloudEvent's data: event_id and occurred_at may be left "
        "out, the id and time attributes give them (the data wins when it has them).",
        "required": [f for f in event["required"] if f not in ("event_id", "occurred_at")],
    }
    attributes = _hoisted(cloudevents.Attributes.model_json_schema(ref_template=_REFS), schemas)
    schemas["StructuredCloudEvent"] = _structured(attributes)
    schemas["CloudEventBinaryHeaders"] = _binary_headers(attributes)
    for model in (RetryHeaders, DeadLetterHeaders):
        schema = model.model_json_schema(by_alias=True, ref_template=_REFS)
        schemas[model.__name__] = {**schema, "properties": _present(schema["properties"])}
    return schemas


def _present(properties: dict[str, Any]) -> dict[str, Any]:
    """Properties as a record carries them: an optional header or attribute is left out, never
    null, and the generated titles (``Retry.Due``) say nothing the name does not."""
    present = {}
    for name, schema in properties.items():
        branches = [b for b in schema.get("anyOf", ()) if b != {"type": "null"}]
        kept = {k: v for k, v in schema.items() if k not in ("title", "anyOf", "default")}
        if len(branches) == 1:
            kept = {**branches[0], **kept}
        elif branches:
            kept["anyOf"] = branches
        present[name] = kept
    return present


def _hoisted(schema: dict[str, Any], into: dict[str, Any]) -> dict[str, Any]:
    """``schema`` without its ``$defs``, which go to the components (refs point there)."""
    into.update(schema.pop("$defs", {}))
    return schema


def _structured(attributes: dict[str, Any]) -> dict[str, Any]:
    properties = _present(attributes["properties"])
    properties["data"] = {"$ref": _REFS.format(model="CloudEventData")}
    properties["data_base64"] = {
        "type": "string",
        "contentEncoding": "base64",
        "description": "Instead of data: the event's UTF-8 JSON, base64-encoded.",
    }
    return {
        "title": "StructuredCloudEvent",
        "description": "A CloudEvent 1.0 in the JSON event format, with the event as data or "
        "data_base64 (not both). Other attributes and extensions are ignored.",
        "type": "object",
        "properties": properties,
        "required": attributes["required"],
        "oneOf": [{"required": ["data"]}, {"required": ["data_base64"]}],
    }


def _binary_headers(attributes: dict[str, Any]) -> dict[str, Any]:
    properties = {
        cloudevents.header_name(name): schema
        for name, schema in _present(attributes["properties"]).items()
    }
    required = [cloudevents.header_name(name) for name in attributes["required"]]
    return {
        "title": "CloudEventBinaryHeaders",
        "description": "A CloudEvent 1.0 in binary mode: the attributes as ce_* headers "
        "(UTF-8), content-type as datacontenttype; other headers are the producer's.",
        "type": "object",
        "properties": properties,
        "required": required,
    }


def _messages() -> dict[str, Any]:
    key = {
        "bindings": {
            "kafka": {
                "key": {"type": "string", "description": "The shipment id (shipment.id), UTF-8."},
                "bindingVersion": KAFKA_BINDING,
            }
        }
    }
    event, data = _REFS.format(model="ShipmentStatusEvent"), _REFS.format(model="CloudEventData")
    structured = _REFS.format(model="StructuredCloudEvent")
    return {
        "shipmentStatusEvent": {
            "name": "shipmentStatusEvent",
            "title": "Shipment-status event (plain JSON)",
            "summary": "The event as the record value; no ce_* headers. Headers named "
            f"{', '.join(p + '*' for p in headers.OURS)} are the worker's and are dropped.",
            "contentType": "application/json",
            "payload": {"$ref": event},
            **key,
        },
        "cloudEventBinary": {
            "name": "cloudEventBinary",
            "title": "CloudEvent, binary mode",
            "summary": "Attributes in ce_* headers, the event as the record value.",
            "contentType": "application/json",
            "headers": {"$ref": _REFS.format(model="CloudEventBinaryHeaders")},
            "payload": {"$ref": data},
            **key,
        },
        "cloudEventStructured": {
            "name": "cloudEventStructured",
            "title": "CloudEvent, structured mode",
            "summary": "The whole CloudEvent as the record value.",
            "contentType": cloudevents.STRUCTURED_JSON,
            "headers": {
                "type": "object",
                "properties": {
                    cloudevents.CONTENT_TYPE: {
                        "type": "string",
                        "pattern": "^application/cloudevents\\+json(;.*)?$",
                    }
                },
                "required": [cloudevents.CONTENT_TYPE],
            },
            "payload": {"$ref": structured},
            **key,
        },
        "retryRecord": {
            "name": "retryRecord",
            "title": "Retry record",
            "summary": "The event's record as the producer sent it, with the retry state.",
            "headers": {"$ref": _REFS.format(model="RetryHeaders")},
            "payload": {"anyOf": [{"$ref": event}, {"$ref": data}, {"$ref": structured}]},
            **key,
        },
        "deadLetter": {
            "name": "deadLetter",
            "title": "Dead letter",
            "summary": "The record as the producer sent it (any bytes: it may be why it is "
            "here), with why and where from.",
            "contentType": "application/octet-stream",
            "headers": {"$ref": _REFS.format(model="DeadLetterHeaders")},
            "payload": {"description": "The original record value, unchanged."},
            **key,
        },
    }
