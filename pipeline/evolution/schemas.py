"""The project's Avro schemas: every table version, its envelope and its wire-format id.

``SchemaSet.load(folder)`` reads a folder laid out as ``schemas/README.md`` describes,
parses every schema once with fastavro and answers, per table: which versions exist, which is
current (the highest), the schema id of each and back, the field names, defaults and types.
A broken folder raises ``SchemaFolderError`` (a ConfigError) naming the file at fault.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml
from fastavro import parse_schema
from fastavro.schema import SchemaParseException

from pipeline.evolution.errors import (
    SchemaFolderError,
    UnknownSchemaIdError,
    UnknownSchemaVersionError,
)

ENVELOPE_FILE = "envelope.avsc"
IDS_FILE = "ids.yaml"
ROW_TYPE_NAME = "Value"  # the name envelope.avsc uses for the row record
_TABLE_DIR = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\.[A-Za-z_][A-Za-z0-9_]*$")
_VERSION_FILE = re.compile(r"^v([1-9][0-9]*)\.avsc$")
_MAX_ID = 2**31 - 1

Schema = dict[str, Any]


@dataclass(frozen=True, eq=False)
class TableVersion:
    """One version of one table's row schema, with its envelope and wire-format id."""

    table: str
    version: int
    schema_id: int
    path: Path
    #: The row record as written in the .avsc file.
    row_schema: Schema
    #: fastavro-parsed row record and envelope (parse once, reuse for every record).
    parsed_row: Schema = field(repr=False)
    parsed_envelope: Schema = field(repr=False)

    @cached_property
    def fields(self) -> tuple[str, ...]:
        return tuple(f["name"] for f in self.row_schema["fields"])

    @cached_property
    def field_set(self) -> frozenset[str]:
        return frozenset(self.fields)

    @cached_property
    def field_types(self) -> Mapping[str, Any]:
        return {f["name"]: f["type"] for f in self.row_schema["fields"]}

    def defaults(self) -> dict[str, Any]:
        """Field -> default for the fields that declare one (a fresh copy each call)."""
        return {
            f["name"]: copy.deepcopy(f["default"])
            for f in self.row_schema["fields"]
            if "default" in f
        }


def envelope_schema(template: Schema, row_schema: Schema) -> Schema:
    """The change-event envelope for one row record: ``template`` (envelope.avsc) with the
    first reference to ``Value`` replaced by ``row_schema`` and later ones by its full name,
    in the row record's namespace (``public.customers.Envelope``), as Debezium names it."""
    namespace = row_schema.get("namespace")
    name = row_schema["name"]
    full_name = f"{namespace}.{name}" if namespace else name
    envelope = copy.deepcopy(template)
    if namespace:
        envelope["namespace"] = namespace
    defined = False
    for fld in envelope["fields"]:
        types = fld["type"] if isinstance(fld["type"], list) else [fld["type"]]
        for i, member in enumerate(types):
            if member == ROW_TYPE_NAME:
                types[i] = full_name if defined else copy.deepcopy(row_schema)
                defined = True
        if not isinstance(fld["type"], list):
            fld["type"] = types[0]
    if not defined:
        raise ValueError(f"the envelope template never refers to the row type {ROW_TYPE_NAME!r}")
    return envelope


def _read_json(path: Path) -> Schema:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SchemaFolderError(path, f"not readable JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise SchemaFolderError(path, "must hold one Avro schema object")
    return doc


def _parse(path: Path, schema: Schema) -> Schema:
    try:
        parsed = parse_schema(schema)
    except (SchemaParseException, ValueError, TypeError, KeyError) as exc:
        raise SchemaFolderError(path, f"not a valid Avro schema: {exc}") from exc
    if not isinstance(parsed, dict):
        raise SchemaFolderError(path, "must be an Avro record")
    return parsed


def _read_ids(path: Path) -> dict[tuple[str, int], int]:
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise SchemaFolderError(path, f"not readable YAML: {exc}") from exc
    if not isinstance(doc, dict):
        raise SchemaFolderError(path, "must map each table to {version: schema id}")
    ids: dict[tuple[str, int], int] = {}
    seen: dict[int, tuple[str, int]] = {}
    for table, versions in doc.items():
        if not isinstance(versions, dict):
            raise SchemaFolderError(path, f"{table}: must map versions to schema ids")
        for version, schema_id in versions.items():
            if not isinstance(version, int) or not isinstance(schema_id, int):
                raise SchemaFolderError(path, f"{table}: {version!r}: {schema_id!r} not integers")
            if not 1 <= schema_id <= _MAX_ID:
                raise SchemaFolderError(path, f"{table} v{version}: id {schema_id} out of range")
            if schema_id in seen:
                other, other_version = seen[schema_id]
                raise SchemaFolderError(
                    path, f"id {schema_id} given to {other} v{other_version} and {table} v{version}"
                )
            seen[schema_id] = (str(table), version)
            ids[(str(table), version)] = schema_id
    return ids


class SchemaSet:
    """Every table version of a schema folder, parsed once. Immutable after ``load``."""

    def __init__(self, versions: list[TableVersion],
                 envelope_template: Schema | None = None) -> None:
        #: envelope.avsc as read (None for a set built in code without one).
        self.envelope_template = envelope_template
        self._by_table: dict[str, dict[int, TableVersion]] = {}
        self._by_id: dict[int, TableVersion] = {}
        for tv in sorted(versions, key=lambda v: (v.table, v.version)):
            self._by_table.setdefault(tv.table, {})[tv.version] = tv
            self._by_id[tv.schema_id] = tv

    @classmethod
    def load(cls, folder: str | Path) -> SchemaSet:
        root = Path(folder)
        if not root.is_dir():
            raise SchemaFolderError(root, "is not a directory")
        template = _read_json(root / ENVELOPE_FILE)
        _parse(root / ENVELOPE_FILE, envelope_schema(template, _placeholder_row()))
        ids = _read_ids(root / IDS_FILE)
        versions: list[TableVersion] = []
        for table_dir in sorted(p for p in root.iterdir() if p.is_dir()):
            versions.extend(_load_table(table_dir, template, ids))
        found = {(v.table, v.version) for v in versions}
        for table, version in sorted(set(ids) - found):
            raise SchemaFolderError(
                root / IDS_FILE, f"{table} v{version} has an id but no {table}/v{version}.avsc"
            )
        return cls(versions, template)

    # -- lookups -----------------------------------------------------------------------------
    @property
    def tables(self) -> tuple[str, ...]:
        return tuple(self._by_table)

    def __contains__(self, table: object) -> bool:
        return table in self._by_table

    def __iter__(self) -> Iterator[TableVersion]:
        for versions in self._by_table.values():
            yield from versions.values()

    def versions(self, table: str) -> tuple[int, ...]:
        return tuple(self._table(table))

    def current_version(self, table: str) -> int:
        return max(self._table(table))

    def current(self, table: str) -> TableVersion:
        return self.get(table, self.current_version(table))

    def get(self, table: str, version: int) -> TableVersion:
        versions = self._table(table)
        if version not in versions:
            raise UnknownSchemaVersionError(
                f"{table} has no schema version {version} (known: {sorted(versions)})",
                table=table,
            )
        return versions[version]

    def schema_id(self, table: str, version: int) -> int:
        return self.get(table, version).schema_id

    def by_id(self, schema_id: int) -> TableVersion:
        try:
            return self._by_id[schema_id]
        except KeyError:
            raise UnknownSchemaIdError(schema_id) from None

    def upcaster_needed(self, table: str, from_version: int) -> str | None:
        """Why the step ``from_version -> from_version + 1`` needs an upcaster, or None when
        Avro resolution does it: every field of the newer version exists in the older one with
        the same type, or has a default. (Fields the newer version drops are simply dropped.
        A type change, even one Avro could promote, needs code: it keeps the intent explicit.)"""
        old = self.get(table, from_version)
        new = self.get(table, from_version + 1)
        defaults = new.defaults()
        for name, type_ in new.field_types.items():
            if name in old.field_types:
                if old.field_types[name] != type_:
                    return f"field '{name}' changes type"
            elif name not in defaults:
                return f"new field '{name}' has no default"
        return None

    def _table(self, table: str) -> dict[int, TableVersion]:
        try:
            return self._by_table[table]
        except KeyError:
            raise UnknownSchemaVersionError(
                f"{table} has no schemas in the schema set", table=table
            ) from None


def _placeholder_row() -> Schema:
    return {"type": "record", "name": ROW_TYPE_NAME, "fields": []}


def _load_table(
    table_dir: Path, template: Schema, ids: dict[tuple[str, int], int]
) -> list[TableVersion]:
    table = table_dir.name
    if not _TABLE_DIR.match(table):
        raise SchemaFolderError(table_dir, "a table folder must be named <schema>.<table>")
    out: list[TableVersion] = []
    for path in sorted(table_dir.iterdir()):
        match = _VERSION_FILE.match(path.name)
        if match is None:
            if path.suffix == ".avsc":
                raise SchemaFolderError(path, "a schema file must be named v<N>.avsc, N >= 1")
            continue
        version = int(match.group(1))
        row = _read_json(path)
        if row.get("type") != "record" or not isinstance(row.get("fields"), list):
            raise SchemaFolderError(path, "must be an Avro record with fields")
        parsed_row = _parse(path, row)
        try:
            envelope = envelope_schema(template, row)
        except (KeyError, TypeError, ValueError) as exc:
            raise SchemaFolderError(path, f"cannot build its envelope: {exc}") from exc
        parsed_envelope = _parse(path, envelope)
        if (table, version) not in ids:
            raise SchemaFolderError(path, f"has no schema id in {IDS_FILE}")
        out.append(
            TableVersion(
                table, version, ids[(table, version)], path, row, parsed_row, parsed_envelope
            )
        )
    numbers = sorted(v.version for v in out)
    if numbers != list(range(1, len(numbers) + 1)):
        raise SchemaFolderError(table_dir, f"versions must run 1..N without gaps, got {numbers}")
    return out
