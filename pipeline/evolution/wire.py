"""The Confluent wire format for Avro values: magic byte 0, 4-byte big-endian schema id,
Avro binary body (no container, no embedded schema).

Each schema id names the change-event envelope of one table version (``schemas/ids.yaml``).
``decode`` reads the body with that version's schema as the writer schema and, as reader
schema, the newest version it can reach through Avro resolution alone (steps whose new fields
all have defaults): additive evolution thus happens here, and the returned ``version`` tells
the upcasters where the rest of the chain starts.
"""

from __future__ import annotations

import io
import struct
from typing import Any, NamedTuple

from fastavro import schemaless_reader, schemaless_writer

from pipeline.events import ChangeEvent, envelope
from pipeline.evolution.errors import WireEncodeError, WireFormatError
from pipeline.evolution.schemas import SchemaSet, TableVersion

MAGIC_BYTE = 0
_HEADER = struct.Struct(">BI")


def is_avro_wire(value: bytes | None) -> bool:
    """True when a raw Kafka value is in the Avro wire format (first byte 0); JSON starts with
    ``{`` (or whitespace) and can never start with a NUL byte."""
    return bool(value) and value[0] == MAGIC_BYTE  # type: ignore[index]


class WireRecord(NamedTuple):
    """A decoded payload: the id it carried, the version its record now has, the record."""

    schema_id: int
    version: int
    record: dict[str, Any]


class AvroWireFormat:
    """Encodes and decodes wire-format payloads with the schemas of one ``SchemaSet``."""

    def __init__(self, schema_set: SchemaSet) -> None:
        self.schema_set = schema_set
        self._readers: dict[int, TableVersion] = {}

    def encode(self, schema_id: int, record: dict[str, Any]) -> bytes:
        """The payload for ``record`` (an envelope dict) written with schema ``schema_id``."""
        writer = self.schema_set.by_id(schema_id)
        out = io.BytesIO()
        out.write(_HEADER.pack(MAGIC_BYTE, schema_id))
        try:
            schemaless_writer(out, writer.parsed_envelope, record)
        except (
            ValueError,
            TypeError,
            AttributeError,
            KeyError,
            OverflowError,
            struct.error,
        ) as exc:
            raise WireEncodeError(
                f"record does not fit {writer.table} v{writer.version} "
                f"(schema id {schema_id}): {type(exc).__name__}: {exc}"
            ) from exc
        return out.getvalue()

    def encode_event(self, event: ChangeEvent, version: int | None = None) -> bytes:
        """``event`` as a payload of its table's ``version`` (default: the current one)."""
        table = event.table_id
        if version is None:
            version = self.schema_set.current_version(table)
        return self.encode(self.schema_set.schema_id(table, version), envelope(event))

    def decode(self, payload: bytes) -> WireRecord:
        """Read one payload. Raises WireFormatError (bad header or body) or
        UnknownSchemaIdError; both are EventDecodeErrors (bad data)."""
        if len(payload) < _HEADER.size:
            raise WireFormatError(f"{len(payload)}-byte Avro payload is shorter than its header")
        magic, schema_id = _HEADER.unpack_from(payload)
        if magic != MAGIC_BYTE:
            raise WireFormatError(f"magic byte {magic} is not {MAGIC_BYTE}")
        return self.read(payload, schema_id, self.schema_set.by_id(schema_id))

    def read(self, payload: bytes, schema_id: int, writer: TableVersion) -> WireRecord:
        """The body of ``payload`` (header already checked) as written with ``writer``."""
        reader = self._reader_for(writer)
        body = io.BytesIO(payload)
        body.seek(_HEADER.size)
        try:
            record = schemaless_reader(
                body,
                writer.parsed_envelope,
                None if reader is writer else reader.parsed_envelope,
            )
        # The body is untrusted input: whatever the decoder raises on it is bad data.
        except Exception as exc:
            raise WireFormatError(
                f"Avro body unreadable as {writer.table} v{writer.version} "
                f"(schema id {schema_id}): {type(exc).__name__}: {exc}"
            ) from exc
        if body.tell() != len(payload):
            raise WireFormatError(
                f"{len(payload) - body.tell()} bytes left after the Avro body "
                f"(schema id {schema_id}): not written with {writer.table} v{writer.version}"
            )
        if not isinstance(record, dict):
            raise WireFormatError(f"schema id {schema_id} did not decode to a record")
        return WireRecord(schema_id, reader.version, record)

    def _reader_for(self, writer: TableVersion) -> TableVersion:
        """The newest version reachable from ``writer`` by steps that need no upcaster."""
        reader = self._readers.get(writer.schema_id)
        if reader is None:
            schemas, table = self.schema_set, writer.table
            version, current = writer.version, schemas.current_version(table)
            while version < current and schemas.upcaster_needed(table, version) is None:
                version += 1
            reader = self._readers[writer.schema_id] = schemas.get(table, version)
        return reader
