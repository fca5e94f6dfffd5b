"""The worker's evolution step: raw record -> change event in the current schema version.

``EvolutionStage.decode(key, value)`` replaces ``pipeline.events.decode`` in the worker when
evolution is on: it reads JSON (Debezium-compatible) and Avro in the Confluent wire format
alike, then brings the event to the current version of its table. Every failure is a
BadDataError whose ``stage`` ("decode" or "evolution") the dead-letter headers carry.
``decode_batch`` does the same for a batch and returns, per record, the event, None for a
tombstone, or the error, so one bad record never stops the others.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any, Protocol

import orjson

from pipeline.errors import BadDataError, EventDecodeError, NotARowChange
from pipeline.events import ChangeEvent, decode, unreadable
from pipeline.evolution.loader import load_upcasters
from pipeline.evolution.registry import SchemaRegistry
from pipeline.evolution.registry_wire import ForeignRecord, RegistryWireFormat
from pipeline.evolution.schemas import SchemaSet
from pipeline.evolution.upcast import Evolver, Upcasters
from pipeline.evolution.wire import AvroWireFormat, is_avro_wire


class KeyValue(Protocol):
    """A raw record as the worker holds it (``pipeline.deadletter.RawRecord`` is one)."""

    @property
    def key(self) -> bytes | None: ...

    @property
    def value(self) -> bytes | None: ...


class EvolutionStage:
    """``registry``: Avro schema ids are a schema registry's (resolved there, cached), not
    those of ``schemas/ids.yaml``."""

    def __init__(self, schema_set: SchemaSet, upcasters: Upcasters | None = None,
                 registry: SchemaRegistry | None = None) -> None:
        self.schema_set = schema_set
        self.wire = AvroWireFormat(schema_set)
        self.registry_wire = (None if registry is None
                              else RegistryWireFormat(schema_set, registry))
        self.evolver = Evolver(schema_set, upcasters)

    @classmethod
    def from_settings(cls, schemas_dir: str | Path | None, upcasters: str | None,
                      registry: SchemaRegistry | None = None) -> EvolutionStage:
        """Load the schema folder (None: no versions of our own) and the upcaster module;
        ConfigError if either is broken."""
        steps = load_upcasters(upcasters) if upcasters else None
        schemas = SchemaSet([]) if schemas_dir is None else SchemaSet.load(schemas_dir)
        return cls(schemas, steps, registry)

    def decode(self, key: bytes | None, value: bytes | None) -> ChangeEvent | None:
        """One raw record as an event in its table's current shape (None for a tombstone)."""
        if is_avro_wire(value):
            assert value is not None
            return self._decode_avro(key, value)
        event = decode(key, value)
        return None if event is None else self.evolver.evolve(event)

    def decode_batch(
        self, records: Sequence[KeyValue]
    ) -> list[ChangeEvent | None | BadDataError | NotARowChange]:
        out: list[ChangeEvent | None | BadDataError | NotARowChange] = []
        for record in records:
            try:
                out.append(self.decode(record.key, record.value))
            except (BadDataError, NotARowChange) as exc:
                out.append(exc)
            except Exception as exc:  # noqa: BLE001 - see pipeline.events.unreadable
                out.append(unreadable(exc))
        return out

    def _decode_avro(self, key: bytes | None, value: bytes) -> ChangeEvent:
        if is_avro_wire(key):
            raise EventDecodeError(
                "Avro record keys are not supported: write keys as JSON "
                "(key.converter=JsonConverter)"
            )
        if self.registry_wire is not None:
            found = self.registry_wire.decode(value)
            if isinstance(found, ForeignRecord):
                # A writer that is not ours: the row's columns tell its version, as for JSON.
                event = decode(key, _json(found.record))
                assert event is not None
                return self.evolver.evolve(event)
            decoded, table = found, self.registry_wire.writer(found.schema_id).table
        else:
            decoded = self.wire.decode(value)
            table = self.schema_set.by_id(decoded.schema_id).table
        # The envelope validation of pipeline.events applies to Avro values too.
        event = decode(key, _json(decoded.record))
        assert event is not None
        if event.table_id != table:
            raise EventDecodeError(
                f"schema id {decoded.schema_id} belongs to {table}, "
                f"but the event's source is {event.table_id}"
            )
        return self.evolver.evolve(event, decoded.version)


def _json_default(value: Any) -> Any:
    """Values Avro logical types decode to that JSON has no type for, in the value mapping
    of our own JSON (pipeline/sources/postgres/values.py): decimals as exact strings,
    bytes as base64."""
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _json(record: dict[str, Any]) -> bytes:
    try:
        return orjson.dumps(record, default=_json_default)
    except TypeError as exc:
        raise EventDecodeError(f"Avro record has values JSON cannot hold: {exc}") from exc
