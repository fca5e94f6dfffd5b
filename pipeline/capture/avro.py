"""Capture in Avro (``kafka.value_format: avro``): change-event values in Confluent's wire
format, their schemas registered in a schema registry under ``<topic>-value``.

Every source writes its JSON envelope as usual; ``AvroPublisher`` wraps the publisher and
re-encodes the values of row-change topics (``<topic_prefix>.<schema>.<table>``, the topic of
the table the envelope's ``source`` names) before they reach Kafka. Other records (outbox
events, logical decoding messages, tombstones) pass unchanged.

Which schema an event is written with (``AvroEnvelopeSchemas``):

* the envelope of the version of ``schemas/`` whose fields are exactly the row's columns
  (the versions we own, typed as their .avsc files say);
* otherwise, and whenever a row does not fit that version (a key-only ``before`` image
  with nulls in non-null fields), an envelope *inferred* from the row's column names, each
  column an optional union of the JSON scalar types and arrays of them. A column added by
  ``ALTER TABLE`` thus registers a new version of the subject at its first row; adding its
  ``v<N+1>.avsc`` to ``schemas/`` gives it proper types from then on.

Events without a row (truncate) use the schema their topic was last written with.
"""

from __future__ import annotations

import io
import logging
import struct
from typing import Any

import orjson
from fastavro import parse_schema, schemaless_writer

from pipeline.capture.publisher import DeliveryCallback, EventPublisher
from pipeline.capture.source import Headers
from pipeline.config import KafkaSettings
from pipeline.errors import PermanentError
from pipeline.evolution.registry import SchemaRegistry, value_subject
from pipeline.evolution.schemas import ROW_TYPE_NAME, SchemaSet, envelope_schema
from pipeline.evolution.wire import _HEADER, MAGIC_BYTE

log = logging.getLogger(__name__)

Schema = dict[str, Any]

_SCALARS: list[Any] = ["boolean", "long", "double", "string"]
#: The type of a column no version of ``schemas/`` describes: whatever JSON scalar (or array
#: of scalars) the source's value mapping gives it, or null.
ANY_COLUMN: list[Any] = ["null", *_SCALARS, {"type": "array", "items": ["null", *_SCALARS]}]

_ENCODE_ERRORS = (ValueError, TypeError, AttributeError, KeyError, OverflowError, struct.error)


def inferred_row(table: str, columns: tuple[str, ...]) -> Schema:
    """The row record of ``table`` for ``columns`` when ``schemas/`` has no version of them."""
    return {
        "type": "record",
        "name": ROW_TYPE_NAME,
        "namespace": table,
        "doc": f"{table}: columns inferred by capture (no version in schemas/ has them)",
        "fields": [{"name": c, "type": ANY_COLUMN, "default": None} for c in columns],
    }


class _Writer:
    """One registered schema: its id and fastavro's parse of it."""

    __slots__ = ("header", "parsed", "schema_id")

    def __init__(self, schema_id: int, schema: Schema) -> None:
        self.schema_id = schema_id
        self.parsed = parse_schema(schema)
        self.header = _HEADER.pack(MAGIC_BYTE, schema_id)

    def write(self, envelope: dict[str, Any]) -> bytes:
        out = io.BytesIO()
        out.write(self.header)
        schemaless_writer(out, self.parsed, envelope)
        return out.getvalue()


class AvroEnvelopeSchemas:
    """Chooses, registers (once) and applies the schema of each change event."""

    def __init__(self, schema_set: SchemaSet, registry: SchemaRegistry) -> None:
        if schema_set.envelope_template is None:
            raise ValueError("the schema set has no envelope template (schemas/envelope.avsc)")
        self.schema_set = schema_set
        self.template = schema_set.envelope_template
        self.registry = registry
        self._writers: dict[tuple[str, tuple[str, ...] | None, bool], _Writer] = {}
        self._last: dict[str, _Writer] = {}
        self._warned: set[tuple[str, tuple[str, ...] | None]] = set()

    def encode(self, topic: str, table: str, envelope: dict[str, Any]) -> bytes:
        """``envelope`` in the wire format, with the id the registry gave its schema."""
        row = envelope.get("after") or envelope.get("before")
        columns = tuple(row) if isinstance(row, dict) else None
        if columns is None and topic in self._last:
            return self._write(self._last[topic], topic, table, envelope)
        owned = self._writer(topic, table, columns, owned=True)
        if owned is not None:
            try:
                return self._write(owned, topic, table, envelope)
            except PermanentError as exc:  # e.g. a key-only before image with nulls
                if (topic, columns) not in self._warned:
                    self._warned.add((topic, columns))
                    log.warning("%s; written with the schema inferred from its columns "
                                "instead (said once per topic and column set)", exc)
        inferred = self._writer(topic, table, columns, owned=False)
        assert inferred is not None
        return self._write(inferred, topic, table, envelope)

    def _write(self, writer: _Writer, topic: str, table: str,
               envelope: dict[str, Any]) -> bytes:
        try:
            payload = writer.write(envelope)
        except _ENCODE_ERRORS as exc:
            raise PermanentError(
                f"{table}: a change event does not fit the Avro schema registered as id "
                f"{writer.schema_id} for topic {topic}: {type(exc).__name__}: {exc}") from exc
        self._last[topic] = writer
        return payload

    def _writer(self, topic: str, table: str, columns: tuple[str, ...] | None,
                owned: bool) -> _Writer | None:
        key = (topic, columns, owned)
        if key in self._writers:
            return self._writers[key]
        row = self._owned_row(table, columns) if owned else inferred_row(table, columns or ())
        writer = None
        if row is not None:
            schema = envelope_schema(self.template, row)
            try:
                writer = _Writer(self.registry.register(value_subject(topic), schema), schema)
            except ValueError as exc:  # a column name Avro does not allow, for instance
                raise PermanentError(f"{table}: no Avro schema can describe its columns "
                                     f"{list(columns or ())}: {exc}") from exc
        self._writers[key] = writer  # type: ignore[assignment]
        return writer

    def _owned_row(self, table: str, columns: tuple[str, ...] | None) -> Schema | None:
        if table not in self.schema_set:
            return None
        if columns is None:
            return self.schema_set.current(table).row_schema
        wanted = frozenset(columns)
        matches = [tv for tv in self.schema_set if tv.table == table and tv.field_set == wanted]
        return matches[-1].row_schema if matches else None


class AvroPublisher(EventPublisher):
    """An ``EventPublisher`` whose row-change values go out in Avro (see the module doc)."""

    def __init__(self, kafka: KafkaSettings, schemas: AvroEnvelopeSchemas,
                 client_id: str = "cdc-capture", refusals_only: bool = False) -> None:
        super().__init__(kafka, client_id, refusals_only)
        self._kafka = kafka
        self._schemas = schemas

    def _bind(self) -> None:
        self.produce = self._produce_encoded  # the capture loop's path re-encodes too

    def _produce_encoded(self, topic: str, value: bytes | None, key: bytes | None,
                         partition: int, on_delivery: DeliveryCallback) -> None:
        self._produce(topic, None if value is None else self.encode(topic, value), key,
                      partition, on_delivery)

    def publish(
        self, topic: str, key: bytes | None, value: bytes | None, on_delivery: DeliveryCallback,
        partition: int = -1, headers: Headers | None = None,
    ) -> None:
        if value is not None:
            value = self.encode(topic, value)
        super().publish(topic, key, value, on_delivery, partition, headers)

    def encode(self, topic: str, value: bytes) -> bytes:
        """``value`` in Avro when it is a row change of ``topic``'s table, else as it is."""
        try:
            envelope = orjson.loads(value)
        except orjson.JSONDecodeError:
            return value  # not an envelope (an outbox payload, say): not ours to re-encode
        source = envelope.get("source") if isinstance(envelope, dict) else None
        if not isinstance(source, dict):
            return value
        table = f"{source.get('schema')}.{source.get('table')}"
        if topic != self._kafka.raw_topic(table) or envelope.get("op") not in _ROW_OPS:
            return value
        return self._schemas.encode(topic, table, envelope)


_ROW_OPS = frozenset({"c", "u", "d", "r", "t"})
