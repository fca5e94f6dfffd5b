"""Errors of schema evolution, placed in the pipeline's tree (``pipeline/errors.py``).

    ConfigError
    ├── SchemaFolderError           a file in the schema folder is missing or broken (names it)
    └── UpcasterLoadError           ``evolution.upcasters`` cannot be imported or is wrong
    BadDataError
    ├── EventDecodeError
    │   ├── WireFormatError         an Avro wire-format payload cannot be read
    │   └── UnknownSchemaIdError    its schema id is not in the schema set (or registry)
    ├── WireEncodeError             a record does not fit the schema it is encoded with
    └── EvolutionError              (stage "evolution")
        ├── UnknownSchemaVersionError   a row image matches no version of its table
        ├── MissingUpcasterError        a step vN -> vN+1 needs code and none is registered
        └── UpcastFailedError           a registered upcaster raised (the cause is chained)

Every bad-data error here goes to the dead-letter topic with its message; none stops a worker.
"""

from __future__ import annotations

from pipeline.errors import BadDataError, ConfigError, EventDecodeError

SCHEMAS_SETTING = "evolution.schemas_dir"
UPCASTERS_SETTING = "evolution.upcasters"


class SchemaFolderError(ConfigError):
    """The schema folder cannot be loaded; the message names the file and what is wrong."""

    def __init__(self, path: object, problem: str) -> None:
        self.path = str(path)
        super().__init__(SCHEMAS_SETTING, f"{path}: {problem}")


class UpcasterLoadError(ConfigError):
    """The upcaster module named by ``evolution.upcasters`` cannot be used."""

    def __init__(self, problem: str) -> None:
        super().__init__(UPCASTERS_SETTING, problem)


class WireFormatError(EventDecodeError):
    """An Avro wire-format payload is truncated, has a bad magic byte or an unreadable body."""


class UnknownSchemaIdError(EventDecodeError):
    """A wire-format payload names a schema id that ``schemas/ids.yaml`` (or, with a schema
    registry, the registry) does not know, or that is no Avro schema."""

    def __init__(self, schema_id: int,
                 problem: str = "is not in the schema set (schemas/ids.yaml)") -> None:
        self.schema_id = schema_id
        super().__init__(f"schema id {schema_id} {problem}")


class WireEncodeError(BadDataError):
    """A record does not fit the Avro schema it was to be encoded with."""

    stage = "encode"


class EvolutionError(BadDataError):
    """An event could not be brought to the current version of its table."""

    stage = "evolution"

    def __init__(self, message: str, *, table: str) -> None:
        self.table = table
        super().__init__(message)


class UnknownSchemaVersionError(EvolutionError):
    """A row image (or an explicit version) matches no version of its table."""


class _StepError(EvolutionError):
    def __init__(self, table: str, from_version: int, to_version: int, cause: str) -> None:
        self.from_version = from_version
        self.to_version = to_version
        super().__init__(f"{table} v{from_version} -> v{to_version}: {cause}", table=table)


class MissingUpcasterError(_StepError):
    """A step of the chain changes the table in a way Avro resolution cannot, and no upcaster
    is registered for it."""


class UpcastFailedError(_StepError):
    """A registered upcaster raised; the original exception is the ``__cause__``."""
