"""Outbox events to Kafka records, with the semantics of Debezium's outbox event router.

An outbox event (a row of the outbox table, or a logical decoding message written by
:func:`pipeline.outbox.emit`) becomes one record:

* topic: ``outbox.topic_template`` with the event's ``{aggregatetype}`` (Debezium's
  ``route.topic.replacement`` ``outbox.event.${routedByValue}``, routed by ``aggregatetype``);
* key: the aggregate id (its UTF-8 text), so one aggregate's events share a partition;
* value: the payload as JSON (Debezium's ``table.expand.json.payload``); a NULL payload is a
  null value (a tombstone);
* headers: ``id`` (the event id: consumers drop repeats by it), the columns
  ``outbox.additional_placement`` puts in headers (``type`` by default), and the event's own
  ``headers`` column, one Kafka header per key.

An event that cannot become a record (a payload that is not JSON, an aggregate type that makes
no topic name, a record larger than ``outbox.max_message_bytes``) raises
:class:`~pipeline.errors.BadOutboxEvent` with the reason: the relay marks it FAILED, the
logical source writes it to the dead-letter topic (:meth:`OutboxRouter.dead_letter`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from pipeline.capture.source import ANY_PARTITION, HeadedRecord, Headers
from pipeline.config import OutboxSettings, is_topic_name, outbox_topic
from pipeline.deadletter import H_CLASS, H_CONNECTOR, H_MESSAGE, H_STAGE, H_TIMESTAMP
from pipeline.errors import BadOutboxEvent
from pipeline.sources.outbox import exact_json

#: The Kafka header carrying the event id (Debezium's ``id`` header).
ID_HEADER = "id"
#: Dead letters of the logical source's outbox routing: where the event came from.
H_OUTBOX_SOURCE = "cdc.outbox.source"
H_OUTBOX_POSITION = "cdc.outbox.position"


@dataclass(frozen=True, slots=True)
class OutboxEvent:
    """One event as read from the database. ``payload`` and ``headers`` are JSON text (a
    ``jsonb`` or ``text`` column) or already parsed (a decoded message); ``extra``: the
    further columns named in ``outbox.additional_placement``."""

    id: str
    aggregate_type: str
    aggregate_id: str
    type: str | None
    payload: Any
    headers: Any = None
    extra: dict[str, Any] = field(default_factory=dict)

    def column(self, name: str) -> Any:
        if name in _COLUMN_ATTRS:
            return getattr(self, _COLUMN_ATTRS[name])
        return self.extra.get(name)


_COLUMN_ATTRS = {"id": "id", "aggregatetype": "aggregate_type", "aggregateid": "aggregate_id",
                 "type": "type", "payload": "payload", "headers": "headers"}


@dataclass(frozen=True, slots=True)
class Placement:
    column: str
    where: str  # header | envelope
    name: str


def placements(settings: OutboxSettings) -> tuple[Placement, ...]:
    out = []
    for entry in settings.additional_placement:
        column, where, *alias = entry.split(":")
        out.append(Placement(column, where, alias[0] if alias else column))
    return tuple(out)


class OutboxRouter:
    """Routes :class:`OutboxEvent` to records; pure, no I/O."""

    def __init__(self, settings: OutboxSettings, dead_letter_topic: str) -> None:
        self.settings = settings
        self.dead_letter_topic = dead_letter_topic
        self.placements = placements(settings)
        self._headers = tuple(p for p in self.placements if p.where == "header")
        self._envelope = tuple(p for p in self.placements if p.where == "envelope")
        self._template = settings.topic_template
        self._max = settings.max_message_bytes

    @property
    def extra_columns(self) -> tuple[str, ...]:
        """Columns beyond the outbox's own that the placements read."""
        return tuple(p.column for p in self.placements if p.column not in _COLUMN_ATTRS)

    def topic(self, event: OutboxEvent) -> str:
        """The event's topic; BadOutboxEvent if it makes no Kafka topic name."""
        fields = {"aggregatetype": event.aggregate_type, "type": event.type or ""}
        topic = outbox_topic(self._template, fields)
        if not is_topic_name(topic):
            raise BadOutboxEvent(
                f"event {event.id}: aggregate type {event.aggregate_type!r} makes topic "
                f"{topic!r}, which is not a valid Kafka topic name (1-249 letters, digits, "
                f"'.', '_', '-'; outbox.topic_template is {self._template!r})")
        return topic

    def route(self, event: OutboxEvent) -> HeadedRecord:
        """The event's record; BadOutboxEvent with the reason if it cannot be one."""
        topic = self.topic(event)
        payload = _json_text(event.payload, event.id)
        headers: Headers = [(ID_HEADER, event.id.encode())]
        for p in self._headers:
            column = event.column(p.column)
            if column is not None:
                headers.append((p.name, _header_value(column, event.id)))
        own = _json(event.headers, event.id, "headers")
        if own is not None:
            if not isinstance(own, dict):
                raise BadOutboxEvent(f"event {event.id}: headers must be a JSON object, "
                                     f"not {type(own).__name__}")
            taken = {name for name, _ in headers}
            clash = sorted(str(k) for k, v in own.items() if v is not None and str(k) in taken)
            if clash:
                raise BadOutboxEvent(
                    f"event {event.id}: its headers set {', '.join(map(repr, clash))}, which "
                    "the relay sets (the event id, outbox.additional_placement headers): a "
                    "consumer would read two values; rename them in the event's headers")
            headers.extend((str(k), _header_value(v, event.id)) for k, v in own.items()
                           if v is not None)
        if self._envelope:
            envelope = {"payload": payload}
            for p in self._envelope:
                envelope[p.name] = event.column(p.column)
            value: bytes | None = exact_json.dumps(envelope, f"event {event.id}")
        else:
            value = None if payload is None else exact_json.dumps(payload, f"event {event.id}")
        key = event.aggregate_id.encode()
        size = len(key) + len(value or b"") + sum(len(k) + len(v or b"") for k, v in headers)
        if size > self._max:
            raise BadOutboxEvent(
                f"event {event.id} is {size} bytes, more than outbox.max_message_bytes "
                f"({self._max}): Kafka would refuse it")
        return topic, key, value, ANY_PARTITION, headers

    def dead_letter(self, source: str, position: str, key: bytes | None, value: bytes | None,
                    error: BadOutboxEvent, connector: str) -> HeadedRecord:
        """A record for the dead-letter topic: the event as read, with the reason in the
        headers the dead-letter tools read (``cdc dlq list|show``; stage ``outbox``). It has
        no original topic, so ``cdc dlq replay --to raw`` leaves it alone."""
        headers: Headers = [
            (H_STAGE, b"outbox"),
            (H_CLASS, f"{type(error).__module__}.{type(error).__qualname__}".encode()),
            (H_MESSAGE, str(error)[:4000].encode()),
            (H_CONNECTOR, connector.encode()),
            (H_TIMESTAMP, datetime.now(UTC).isoformat().encode()),
            (H_OUTBOX_SOURCE, source.encode()),
            (H_OUTBOX_POSITION, position.encode()),
        ]
        return self.dead_letter_topic, key, value, ANY_PARTITION, headers


def _json_text(value: Any, event_id: str) -> Any:
    """The payload column's JSON text, kept as stored (an ``orjson.Fragment``): parsed and
    written again, a number a double cannot hold exactly (``12345678901234567.89``, a
    30-digit id) would be rounded, and one beyond its range (``1e400``, which PostgreSQL
    accepts) refused. None for JSON ``null``; a value not given as text, as it is."""
    if value is None or not isinstance(value, str | bytes):
        return value
    text = value.encode() if isinstance(value, str) else value
    if exact_json.loads(text, f"event {event_id}: payload") is None:
        return None
    return orjson.Fragment(text)


def _json(value: Any, event_id: str, what: str) -> Any:
    """A JSON column's value: parsed if text (numbers exact), as is if already parsed."""
    if value is None or not isinstance(value, str | bytes):
        return value
    return exact_json.loads(value, f"event {event_id}: {what}")


def _header_value(value: Any, event_id: str) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    return exact_json.dumps(value, f"event {event_id}: a header")
