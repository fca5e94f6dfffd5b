"""Schema evolution: Avro schemas per table version (``schemas/``), the Confluent wire
format, and upcasters that bring every change event to the current version of its table.

    schemas.py   SchemaSet: the schema folder, parsed once; ids <-> (table, version)
    wire.py      AvroWireFormat: magic byte 0 + 4-byte schema id + Avro body
    upcast.py    Upcasters (the user's registry) and Evolver (runs the chain per event)
    loader.py    load_upcasters("package.module[:attribute]")
    stage.py     EvolutionStage: what the worker calls per raw record / per batch
    errors.py    where these errors sit in pipeline/errors.py's tree
    examples.py  the demo's customers v1 -> v2 -> v3 upcasters
"""

from pipeline.evolution.errors import (
    EvolutionError,
    MissingUpcasterError,
    SchemaFolderError,
    UnknownSchemaIdError,
    UnknownSchemaVersionError,
    UpcasterLoadError,
    UpcastFailedError,
    WireEncodeError,
    WireFormatError,
)
from pipeline.evolution.loader import load_upcasters
from pipeline.evolution.schemas import SchemaSet, TableVersion, envelope_schema
from pipeline.evolution.stage import EvolutionStage
from pipeline.evolution.upcast import Evolver, Upcaster, Upcasters
from pipeline.evolution.wire import AvroWireFormat, WireRecord, is_avro_wire

__all__ = [
    "AvroWireFormat",
    "EvolutionError",
    "EvolutionStage",
    "Evolver",
    "MissingUpcasterError",
    "SchemaFolderError",
    "SchemaSet",
    "TableVersion",
    "UnknownSchemaIdError",
    "UnknownSchemaVersionError",
    "UpcastFailedError",
    "Upcaster",
    "UpcasterLoadError",
    "Upcasters",
    "WireEncodeError",
    "WireFormatError",
    "WireRecord",
    "envelope_schema",
    "is_avro_wire",
    "load_upcasters",
]
