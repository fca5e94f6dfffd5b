"""The worker's evolution step: raw record -> change event in the current schema version.

``EvolutionStage.decode(key, value)`` replaces ``pipeline.events.decode`` in the worker when
evolution is on: it reads JSON (Debezium-compatible) and Avro in the Confluent wire format
alike, then brings the event to the current version of its table. Every failure is a
BadDataError whose ``stage`` ("decode" or "evolution") the dead-letter headers carry.
``decode_batch`` does the same for a batch and returns, per record, the event, None for a
tombstone, or the error, so one bad record never stops the others.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import orjson

from pipeline.errors import BadDataError, EventDecodeError, NotARowChange
from pipeline.events import ChangeEvent, decode, unreadable
from pipeline.evolution.loader import load_upcasters
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
    def __init__(self, schema_set: SchemaSet, upcasters: Upcasters | None = None) -> None:
        self.schema_set = schema_set
        self.wire = AvroWireFormat(schema_set)
        self.evolver = Evolver(schema_set, upcasters)

    @classmethod
    def from_settings(cls, schemas_dir: str | Path, upcasters: str | None) -> EvolutionStage:
        """Load the schema folder and the upcaster module; ConfigError if either is broken."""
        registry = load_upcasters(upcasters) if upcasters else None
        return cls(SchemaSet.load(schemas_dir), registry)

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
        decoded = self.wire.decode(value)
        try:
            # The envelope validation of pipeline.events applies to Avro values too.
            envelope = orjson.dumps(decoded.record)
        except TypeError as exc:
            raise EventDecodeError(f"Avro record has values JSON cannot hold: {exc}") from exc
        event = decode(key, envelope)
        assert event is not None
        table = self.schema_set.by_id(decoded.schema_id).table
        if event.table_id != table:
            raise EventDecodeError(
                f"schema id {decoded.schema_id} belongs to {table}, "
                f"but the event's source is {event.table_id}"
            )
        return self.evolver.evolve(event, decoded.version)
