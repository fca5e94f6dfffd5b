"""Upcasting: bring every change event to the current version of its table's schema.

Users register one plain function per step ``vN -> vN+1`` of a table::

    upcasters = Upcasters()

    @upcasters.register("public.customers", 1)      # v1 -> v2
    def split_name(row: Row) -> Row: ...

``Evolver.evolve(event, version)`` finds the version of each row image, runs the chain up to
the current version on ``before`` and ``after``, and returns a new event. The rules:

* **Which version.** An explicit ``version`` (from a wire-format schema id) wins. For JSON,
  the image's column set decides: the version whose field names equal it exactly (the highest,
  should two versions share names); else the highest version whose fields include all of the
  image's columns (an image that leaves columns out is read as the newest shape it fits, so
  the fewest transforms run on incomplete data); else ``UnknownSchemaVersionError``.
* **Each step.** With an upcaster registered, it runs (on a copy: it may mutate its argument).
  Without one, the step must be additive (every new field has a default, no type changes;
  ``SchemaSet.upcaster_needed``), else ``MissingUpcasterError``. An upcaster that raises, or
  returns no dict, gives ``UpcastFailedError`` with the cause chained. After each step the
  row is conformed to the step's target version: fields it does not declare are dropped,
  missing fields with a default get the default, so the next upcaster sees a proper vN+1 row.
  A row already current is still conformed: a missing field with a default gets it.
* **Unchanged TOAST.** An upcaster sees ``UNAVAILABLE_VALUE`` where PostgreSQL did not send a
  value, exactly as the event carries it. Any column that held the placeholder before a step
  and still exists after it holds the placeholder again, whatever the upcaster wrote there;
  a column an upcaster derives from a placeholder should be set to the placeholder too (see
  ``examples.split_name``), which sinks already know to leave alone.
* **Key-only ``before`` images.** With the default replica identity PostgreSQL sends only the
  key columns of the old row (our capture and Debezium set every other column to null). A
  ``before`` image whose non-key columns are all null (or absent) is not upcast (there is
  nothing to transform, and upcasters need not cope with it); it becomes the current shape
  with the key values and null elsewhere. Key columns must keep their names across versions.
* Truncates, tables absent from the schema set, and images already in the current shape come
  back as they are (the same objects: no copy on the common path).

Speed: what to do with an image depends only on its table, its column names (in order) and
the explicit version, so the evolver works it out once per such shape and keeps the plan (at
most ``MAX_PLANS`` per table). An image already current is returned as is; a chain of
additive steps without upcasters collapses into one precomputed copy (columns taken from the
image, defaults filled in); only chains with upcasters run step by step.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from pipeline.events import UNAVAILABLE_VALUE, ChangeEvent, Row, is_unavailable
from pipeline.evolution.errors import (
    MissingUpcasterError,
    UnknownSchemaVersionError,
    UpcasterLoadError,
    UpcastFailedError,
)
from pipeline.evolution.schemas import SchemaSet, TableVersion

Upcaster = Callable[[Row], Row]

#: Plans kept per table (one per distinct image shape); past this the cache starts over.
MAX_PLANS = 256


class Upcasters:
    """A registry of upcasters: one function per (table, from-version)."""

    def __init__(self) -> None:
        self._steps: dict[tuple[str, int], Upcaster] = {}

    def register(self, table: str, from_version: int) -> Callable[[Upcaster], Upcaster]:
        """Decorator: the function turns a ``table`` row of ``from_version`` into one of
        ``from_version + 1``. The function is returned unchanged (it stays testable)."""

        def decorate(fn: Upcaster) -> Upcaster:
            self.add(table, from_version, fn)
            return fn

        return decorate

    def add(self, table: str, from_version: int, fn: Upcaster) -> None:
        if from_version < 1:
            raise ValueError(f"{table}: versions start at 1, got from-version {from_version}")
        if (table, from_version) in self._steps:
            raise ValueError(
                f"{table}: an upcaster v{from_version} -> v{from_version + 1} is already registered"
            )
        self._steps[(table, from_version)] = fn

    def get(self, table: str, from_version: int) -> Upcaster | None:
        return self._steps.get((table, from_version))

    def __iter__(self) -> Iterator[tuple[str, int]]:
        return iter(sorted(self._steps))

    def __len__(self) -> int:
        return len(self._steps)


class _Table:
    """What the evolver precomputes per table."""

    def __init__(self, schema_set: SchemaSet, table: str) -> None:
        self.name = table
        self.versions = [schema_set.get(table, v) for v in schema_set.versions(table)]
        self.current = self.versions[-1]
        self.exact: dict[frozenset[str], int] = {}
        for tv in self.versions:  # ascending: the highest of equal field sets wins
            self.exact[tv.field_set] = tv.version
        self.defaults = [tv.defaults() for tv in self.versions]
        #: Per from-version: why that step needs an upcaster, or None when it is additive.
        self.needs_code = {
            tv.version: schema_set.upcaster_needed(table, tv.version) for tv in self.versions[:-1]
        }
        #: (explicit version or None, image column names) -> how to evolve such an image.
        self.plans: dict[tuple[int | None, tuple[str, ...]], RowPlan] = {}

    def version(self, number: int) -> TableVersion:
        return self.versions[number - 1]

    def defaults_of(self, number: int) -> Mapping[str, Any]:
        return self.defaults[number - 1]


class Evolver:
    """Brings change events to the current schema version of their table."""

    def __init__(self, schema_set: SchemaSet, upcasters: Upcasters | None = None) -> None:
        self.schema_set = schema_set
        self.upcasters = upcasters if upcasters is not None else Upcasters()
        self._tables = {table: _Table(schema_set, table) for table in schema_set.tables}
        for table, from_version in self.upcasters:
            if table not in self._tables:
                raise UpcasterLoadError(f"upcaster for {table}, which has no schemas")
            current = self._tables[table].current.version
            if from_version >= current:
                raise UpcasterLoadError(
                    f"upcaster {table} v{from_version} -> v{from_version + 1}, "
                    f"but the current version is v{current}"
                )

    def missing_steps(self) -> list[str]:
        """Steps that need an upcaster and have none: worth a warning at start (events that
        need them go to the dead-letter topic)."""
        out = []
        for table, info in self._tables.items():
            for step, reason in info.needs_code.items():
                if reason and self.upcasters.get(table, step) is None:
                    out.append(f"{table} v{step} -> v{step + 1}: {reason}")
        return out

    def evolve(self, event: ChangeEvent, version: int | None = None) -> ChangeEvent:
        """``event`` in the current shape of its table. ``version`` is the version both
        images have when known (Avro); None means: detect it per image from its columns."""
        info = self._tables.get(event.table_id)
        if info is None or (event.before is None and event.after is None):
            return event
        if version is not None:
            self.schema_set.get(info.name, version)  # raises for a version we do not know
        before = event.before
        if before is not None:
            if event.key and _is_key_only(before, event.key):
                before = _key_only(before, event.key, info.current)
            else:
                before = self.evolve_row(info.name, before, version)
        after = None if event.after is None else self.evolve_row(info.name, event.after, version)
        if before is event.before and after is event.after:
            return event
        # The constructor, not dataclasses.replace: this runs once per event.
        return ChangeEvent(event.op, event.key, before, after, event.source, event.ts_ms,
                           event.extra)

    def detect_version(self, table: str, row: Row) -> int:
        """The schema version a JSON row image was written with (see the module docstring)."""
        info = self._tables[table]
        columns = frozenset(row)
        exact = info.exact.get(columns)
        if exact is not None:
            return exact
        for tv in reversed(info.versions):
            if columns <= tv.field_set:
                return tv.version
        closest = max(reversed(info.versions), key=lambda tv: len(columns & tv.field_set))
        raise UnknownSchemaVersionError(
            f"{table}: columns {sorted(columns)} match no schema version "
            f"(closest v{closest.version} lacks {sorted(columns - closest.field_set)})",
            table=table,
        )

    def evolve_row(self, table: str, row: Row, version: int | None = None) -> Row:
        """One row image of ``table`` brought to the current version."""
        info = self._tables[table]
        shape = (version, tuple(row))
        plan = info.plans.get(shape)
        if plan is None:
            plan = self._plan(info, row, version)
            if len(info.plans) >= MAX_PLANS:
                info.plans.clear()
            info.plans[shape] = plan
        return plan(row)

    def _plan(self, info: _Table, row: Row, version: int | None) -> RowPlan:
        """How to evolve images of ``row``'s shape (raises for an unknown shape)."""
        if version is None:
            version = self.detect_version(info.name, row)
        current = info.current
        if version == current.version and row.keys() == current.field_set:
            return _identity
        steps = range(version, current.version)
        if any(self.upcasters.get(info.name, s) or info.needs_code[s] for s in steps):
            return _StepByStep(self, info, version)
        # Additive only: run the chain once on markers to learn where each output comes from.
        out = _conform({name: _Column(name) for name in row}, info.version(version),
                       info.defaults_of(version))
        for step in steps:
            out = _conform(out, info.version(step + 1), info.defaults_of(step + 1))
        return _Copy([(name, value.name if isinstance(value, _Column) else None, value)
                      for name, value in out.items()])

    def _chain(self, info: _Table, row: Row, version: int) -> Row:
        """The general path: conform, then each step with its upcaster (or additive)."""
        unavailable = _unavailable(row)
        out = _conform(row, info.version(version), info.defaults_of(version))
        for step in range(version, info.current.version):
            out = self._step(info, step, out, unavailable)
            unavailable = _unavailable(out)
        return out

    def _step(self, info: _Table, step: int, row: Row, unavailable: frozenset[str]) -> Row:
        table, target = info.name, step + 1
        upcaster = self.upcasters.get(table, step)
        if upcaster is None:
            reason = info.needs_code[step]
            if reason is not None:
                raise MissingUpcasterError(
                    table, step, target, f"no upcaster registered, and {reason}"
                )
        else:
            name = getattr(upcaster, "__qualname__", repr(upcaster))
            try:
                result = upcaster(dict(row))
            # User code: whatever it raises is this event's problem, not the worker's.
            except Exception as exc:
                raise UpcastFailedError(
                    table, step, target, f"upcaster {name} raised {type(exc).__name__}: {exc}"
                ) from exc
            if not isinstance(result, dict):
                raise UpcastFailedError(
                    table,
                    step,
                    target,
                    f"upcaster {name} returned {type(result).__name__}, not a row dict",
                )
            row = result
            for column in unavailable & row.keys():
                row[column] = UNAVAILABLE_VALUE
        return _conform(row, info.version(target), info.defaults_of(target))


RowPlan = Callable[[Row], Row]


def _identity(row: Row) -> Row:
    return row


class _Column:
    """A marker for "the image's column ``name``" while a plan is worked out."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name


class _Copy:
    """An additive chain as one copy: per output field, the image column it comes from, or
    (None) its default, deep-copied only when mutable."""

    def __init__(self, fields: list[tuple[str, str | None, Any]]) -> None:
        self.fields = fields

    def __call__(self, row: Row) -> Row:
        out: Row = {}
        for name, column, default in self.fields:
            if column is not None:
                out[name] = row[column]
            elif isinstance(default, (dict, list)):
                out[name] = copy.deepcopy(default)
            else:
                out[name] = default
        return out


class _StepByStep:
    """A chain with an upcaster (or a step that needs one): run it step by step."""

    def __init__(self, evolver: Evolver, info: _Table, version: int) -> None:
        self.evolver, self.info, self.version = evolver, info, version

    def __call__(self, row: Row) -> Row:
        return self.evolver._chain(self.info, row, self.version)


def _conform(row: Row, tv: TableVersion, defaults: Mapping[str, Any]) -> Row:
    """A new dict in ``tv``'s field order: its fields from ``row``, else their defaults."""
    out: Row = {}
    for name in tv.fields:
        if name in row:
            out[name] = row[name]
        elif name in defaults:
            out[name] = copy.deepcopy(defaults[name])
    return out


def _unavailable(row: Row) -> frozenset[str]:
    return frozenset(k for k, v in row.items() if isinstance(v, str) and is_unavailable(v))


def _is_key_only(row: Row, key: Row) -> bool:
    return all(name in key or value is None for name, value in row.items())


def _key_only(row: Row, key: Row, current: TableVersion) -> Row:
    """The current shape of a key-only image: key values (from the image, else the record
    key), null elsewhere."""
    out: Row = {name: None for name in current.fields}
    for name, value in key.items():
        out[name] = row.get(name, value)
    return row if out == row and list(out) == list(row) else out
