"""The Confluent wire format with the schema ids of a schema registry.

With ``kafka.schema_registry_url`` set, the id in a payload is the registry's, not one of
``schemas/ids.yaml``. ``RegistryWireFormat.decode`` asks the registry for the id's schema
(once per id, cached) and then:

* when that schema is the envelope of a version we own (``schemas/``, compared in Avro's
  Parsing Canonical Form, so docs, defaults and key order do not matter), it decodes exactly
  as ``AvroWireFormat`` does with that version: ``version`` says where the upcasters start;
* otherwise (a writer that is not ours: Debezium's AvroConverter, another team's producer,
  a column that ``schemas/`` does not describe yet) it decodes with the registry's schema
  as the writer schema and returns ``version`` None: the evolver then finds the version
  from the row's columns, exactly as for a JSON event.
"""

from __future__ import annotations

import io
from typing import Any

from fastavro import parse_schema, schemaless_reader
from fastavro.schema import to_parsing_canonical_form

from pipeline.evolution.errors import UnknownSchemaIdError, WireFormatError
from pipeline.evolution.registry import SchemaRegistry
from pipeline.evolution.schemas import SchemaSet, TableVersion
from pipeline.evolution.wire import _HEADER, MAGIC_BYTE, AvroWireFormat, WireRecord

Schema = dict[str, Any]


def canonical(schema: Schema) -> str:
    """Avro's Parsing Canonical Form: equal for schemas that read and write alike."""
    return str(to_parsing_canonical_form(parse_schema(schema)))


class _Writer:
    """What one registry id decodes with: its schema, and our version it is, if any."""

    def __init__(self, parsed: Schema, owned: TableVersion | None) -> None:
        self.parsed = parsed
        self.owned = owned

    @property
    def table(self) -> str | None:
        return None if self.owned is None else self.owned.table


class ForeignRecord:
    """A payload written with a schema that is none of our versions."""

    __slots__ = ("record", "schema_id")

    def __init__(self, schema_id: int, record: dict[str, Any]) -> None:
        self.schema_id = schema_id
        self.record = record


class RegistryWireFormat:
    """Decodes wire-format payloads whose ids a schema registry assigns."""

    def __init__(self, schema_set: SchemaSet, registry: SchemaRegistry) -> None:
        self.schema_set = schema_set
        self.registry = registry
        self._owned = AvroWireFormat(schema_set)
        self._by_form = {canonical(tv.parsed_envelope): tv for tv in schema_set}
        self._writers: dict[int, _Writer] = {}

    def writer(self, schema_id: int) -> _Writer:
        """The writer schema of ``schema_id`` (the registry is asked once per id; while it
        cannot be reached this waits, see ``SchemaRegistry.resolve``)."""
        found = self._writers.get(schema_id)
        if found is None:
            schema = self.registry.resolve(schema_id)
            try:
                parsed = parse_schema(schema)
            except Exception as exc:  # the registry's content is input too
                raise UnknownSchemaIdError(
                    schema_id, f"has a schema fastavro cannot parse: {exc}") from exc
            if not isinstance(parsed, dict) or parsed.get("type") != "record":
                raise UnknownSchemaIdError(schema_id, "is not an Avro record schema")
            owned = self._by_form.get(str(to_parsing_canonical_form(parsed)))
            found = self._writers[schema_id] = _Writer(parsed, owned)
        return found


    def decode(self, payload: bytes) -> WireRecord | ForeignRecord:
        """One payload: a ``WireRecord`` for a version we own, a ``ForeignRecord`` otherwise.
        Raises WireFormatError or UnknownSchemaIdError (bad data)."""
        if len(payload) < _HEADER.size:
            raise WireFormatError(f"{len(payload)}-byte Avro payload is shorter than its header")
        magic, schema_id = _HEADER.unpack_from(payload)
        if magic != MAGIC_BYTE:
            raise WireFormatError(f"magic byte {magic} is not {MAGIC_BYTE}")
        writer = self.writer(schema_id)
        if writer.owned is not None:
            return self._owned.read(payload, schema_id, writer.owned)
        body = io.BytesIO(payload)
        body.seek(_HEADER.size)
        try:
            record = schemaless_reader(body, writer.parsed, None)
        except Exception as exc:  # untrusted input: whatever the decoder raises is bad data
            raise WireFormatError(
                f"Avro body unreadable with registry schema id {schema_id}: "
                f"{type(exc).__name__}: {exc}") from exc
        if body.tell() != len(payload):
            raise WireFormatError(f"{len(payload) - body.tell()} bytes left after the Avro "
                                  f"body (registry schema id {schema_id})")
        if not isinstance(record, dict):
            raise WireFormatError(f"schema id {schema_id} did not decode to a record")
        return ForeignRecord(schema_id, record)
