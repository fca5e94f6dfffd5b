"""How the search sink maps columns to Elasticsearch fields: decided, not left to whichever
document came first.

A column's mapping comes from its type when the event carries one (Debezium's JsonConverter
with ``schemas.enable=true``), else from the values of the first batch that has the column:

- whole numbers: ``long`` (exact for bigint), with ``coerce`` off so a fraction is a type
  change rather than silently truncated;
- numbers with a fraction, possibly mixed with ``"NaN"``/``"Infinity"``/``"-Infinity"``
  (how JSON carries a non-finite float): ``double`` with ``ignore_malformed``: a non-finite
  value stays in ``_source`` and is absent from the index (it matches no range query);
- booleans: ``boolean``;
- strings and anything mixed: ``keyword`` (exact value, sorting, aggregations; values over
  8191 characters are not in it), with sub-fields ``.text`` (full text), ``.num`` (``double``,
  so a ``numeric`` column held as exact text can be range-queried and summed; text that is
  not a finite number, ``"NaN"`` included, is absent there) and ``.date`` (ISO-8601 text);
- a column holding both objects and other values: stored, not indexed (``enabled: false``).

Elasticsearch cannot change a field's type in place. When a column's values no longer fit
(``ALTER COLUMN ... TYPE``), ``widened`` gives the mapping that takes old and new values
alike, and the index moves to a new version (see ``search_versions``).
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Iterable, Iterator
from typing import Any

NON_FINITE = frozenset({"NaN", "Infinity", "-Infinity"})

LONG: dict[str, Any] = {"type": "long", "coerce": False}
DOUBLE: dict[str, Any] = {"type": "double", "ignore_malformed": True}
BOOLEAN: dict[str, Any] = {"type": "boolean"}
STRING: dict[str, Any] = {
    "type": "keyword",
    "ignore_above": 8191,  # Lucene's term limit is 32766 bytes: 8191 four-byte characters
    "fields": {
        "text": {"type": "text"},
        "num": {"type": "double", "ignore_malformed": True},
        "date": {"type": "date", "format": "strict_date_optional_time",
                 "ignore_malformed": True},
    },
}
DISABLED: dict[str, Any] = {"type": "object", "enabled": False}

#: Settings and mappings of every index version the sink creates. The dynamic templates
#: cover what ``mapping_for_values`` leaves open (fields inside objects, columns first seen
#: as null) with the same choices; date and numeric detection are off, so a string's type
#: never depends on what the first string looked like.
INDEX_MAPPINGS: dict[str, Any] = {
    "date_detection": False,
    "numeric_detection": False,
    "dynamic_templates": [
        {"strings": {"match_mapping_type": "string", "mapping": STRING}},
        {"whole_numbers": {"match_mapping_type": "long", "mapping": LONG}},
        {"fractions": {"match_mapping_type": "double", "mapping": DOUBLE}},
    ],
}

_INTEGER_TYPES = frozenset({"int8", "int16", "int32", "int64"})
_FLOAT_TYPES = frozenset({"float32", "float64"})
_WHOLE_NUMBER_FIELD_TYPES = frozenset({"long", "integer", "short", "byte", "unsigned_long"})


def _scalars(values: Iterable[Any]) -> Iterator[Any]:
    for value in values:
        if isinstance(value, list):
            yield from _scalars(value)
        elif value is not None:
            yield value


def mapping_for_values(values: Iterable[Any]) -> dict[str, Any] | None:
    """The mapping for a column from its values (arrays count element by element), or None
    to leave it to the dynamic templates (no value yet, or only objects)."""
    seen = list(_scalars(values))
    if not seen:
        return None
    objects = [v for v in seen if isinstance(v, dict)]
    if objects:
        return None if len(objects) == len(seen) else DISABLED
    if all(isinstance(v, bool) for v in seen):
        return BOOLEAN
    if any(isinstance(v, bool) for v in seen):
        return STRING
    if all(isinstance(v, int) for v in seen):
        return LONG
    numbers = all(isinstance(v, (int, float)) or v in NON_FINITE for v in seen)
    if numbers and any(isinstance(v, float) for v in seen):
        return DOUBLE
    return STRING


def mapping_for_type(schema: dict[str, Any]) -> dict[str, Any] | None:
    """The mapping for a column from its Kafka Connect schema (a field of Debezium's
    ``after`` struct), or None when the type says nothing useful (structs, unknown)."""
    kind = schema.get("type")
    if kind in _INTEGER_TYPES:
        return LONG
    if kind in _FLOAT_TYPES:
        return DOUBLE
    if kind == "boolean":
        return BOOLEAN
    if kind in ("string", "bytes"):  # bytes: base64 text (bytea, decimal in precise mode)
        return STRING
    if kind == "array" and isinstance(schema.get("items"), dict):
        return mapping_for_type(schema["items"])
    return None


_CONFLICT_PATTERNS = (
    re.compile(r"failed to parse field \[([^\]]+)\] of type \[([^\]]+)\]"),
    re.compile(r"mapper \[([^\]]+)\] cannot be changed from type \[([^\]]+)\]"),
    re.compile(r"object mapping for \[([^\]]+)\] tried to parse field \[[^\]]+\] as object"),
    re.compile(r"can't merge a non object mapping \[([^\]]+)\]", re.IGNORECASE),
)


def conflicting_field(error: dict[str, Any]) -> str | None:
    """The field whose existing mapping refused a value, from a bulk item's error; None when
    the refusal is about something else (a metadata field, an empty field name, limits)."""
    reason = str(error.get("reason", ""))
    for pattern in _CONFLICT_PATTERNS:
        found = pattern.search(reason)
        if found:
            field = found.group(1)
            return None if field.startswith("_") and "." not in field else field
    return None


def field_values(doc: dict[str, Any], path: str) -> list[Any]:
    """The values at a dotted field path of a document (through objects and arrays)."""
    values: list[Any] = [doc]
    for part in path.split("."):
        step: list[Any] = []
        for value in _flatten(values):
            if isinstance(value, dict) and part in value:
                step.append(value[part])
        values = step
    if not values and path in doc:  # a column whose name itself contains dots
        values = [doc[path]]
    return values


def _flatten(values: list[Any]) -> Iterator[Any]:
    for value in values:
        if isinstance(value, list):
            yield from _flatten(value)
        else:
            yield value


def widened(current: dict[str, Any] | None, values: Iterable[Any]) -> dict[str, Any] | None:
    """A mapping that takes both what a field holds (``current``) and ``values``, which it
    refused; None if no wider mapping exists (the field is already stored unindexed)."""
    seen = list(_scalars(values))
    if current is None:
        return mapping_for_values(seen) or DISABLED
    if current.get("enabled") is False:
        return None
    if "properties" in current or current.get("type") in ("object", "nested"):
        return DISABLED  # an object column now holds plain values (or the other way)
    if any(isinstance(v, dict) for v in seen):
        return DISABLED
    fits_double = all(
        (isinstance(v, (int, float)) and not isinstance(v, bool)
         and (not isinstance(v, float) or math.isfinite(v))) or v in NON_FINITE
        for v in seen)
    if current.get("type") in _WHOLE_NUMBER_FIELD_TYPES and fits_double:
        return DOUBLE
    if current.get("type") == "keyword":
        return None
    return STRING


def with_field(mappings: dict[str, Any], path: str, field: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``mappings`` with the field at a dotted path replaced by ``field``; if the
    path does not lead through mapped objects, its top-level column becomes ``DISABLED``."""
    out = copy.deepcopy(mappings)
    properties = out.setdefault("properties", {})
    parts = path.split(".")
    node = properties
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict) or "properties" not in child:
            properties[parts[0]] = DISABLED
            return out
        node = child["properties"]
    node[parts[-1]] = field
    return out


def field_mapping(mappings: dict[str, Any], path: str) -> dict[str, Any] | None:
    """The mapping of the field at a dotted path, or None if unmapped."""
    node: Any = {"properties": mappings.get("properties") or {}}
    for part in path.split("."):
        node = (node.get("properties") or {}).get(part)
        if not isinstance(node, dict):
            return None
    return dict(node)
