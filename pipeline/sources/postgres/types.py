"""What a column's type is, from the catalog: enough to choose its value converter.

A Relation message names each column's type by OID only. Built-in scalar types have fixed
OIDs (:mod:`pipeline.sources.postgres.values` knows them), but domains, enums, arrays of
those and extension types such as ``hstore`` get an OID per database. :class:`TypeResolver`
asks ``pg_type`` once per OID and remembers the answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, Literal

__all__ = ["PgType", "TypeKind", "TypeResolver"]

#: ``builtin``: convert as the built-in type ``oid``; ``enum``: its label; ``hstore``: the
#: extension type; ``array``: a list of ``element``; ``text``: anything else (composite, range,
#: other extension types), published as PostgreSQL prints it.
TypeKind = Literal["builtin", "enum", "hstore", "array", "text"]

#: OIDs below this are assigned at initdb (pg_type.dat and friends); user objects start here.
FIRST_NORMAL_OBJECT_ID: Final = 16384


@dataclass(frozen=True, slots=True)
class PgType:
    """A column type as far as converting its values goes."""

    kind: TypeKind
    #: For ``builtin``: the built-in type to convert as (a domain's base type); else the
    #: type's own OID.
    oid: int
    #: The type's name (a domain's own name), for logs and metric labels.
    name: str
    #: A domain's type modifier for its base type (``numeric(10,2)``, ``bit(1)``); -1 for none.
    typmod: int = -1
    element: PgType | None = None
    #: What separates this type's values in an array's text (``typdelim``): ``,`` for all
    #: but ``box`` (``;``) and some extension types (PostGIS geometry: ``:``).
    delimiter: str = ","

    @classmethod
    def builtin(cls, oid: int, name: str | None = None) -> PgType:
        """A built-in type known without asking the catalog (e.g. in tests)."""
        return cls("builtin", oid, name or str(oid))


# One row per type OID: what it is, what it stands on, and whether it is a true array type
# (the element's own array type: int2vector and oidvector have an element but print no braces).
_TYPE_QUERY: Final = """
SELECT t.typname, t.typtype, t.typbasetype, t.typtypmod, t.typelem,
       t.typelem <> 0 AND e.typarray = t.oid AS is_array, t.typdelim
FROM pg_catalog.pg_type t
LEFT JOIN pg_catalog.pg_type e ON e.oid = t.typelem
WHERE t.oid = %s
"""

_MAX_DEPTH: Final = 16  # domains over domains over arrays...; the catalog has no cycles


class TypeResolver:
    """Resolves type OIDs against one database's catalog, caching each answer.

    OIDs are per database, and a type's kind, base type and element never change while the
    OID exists, so the cache lives as long as the capture's connection.
    """

    def __init__(self) -> None:
        self._cache: dict[int, PgType] = {}

    def resolve(self, cur: Any, oid: int) -> PgType:
        """What type ``oid`` is, reading ``pg_type`` through the DB-API cursor ``cur``."""
        return self._resolve(cur, oid, 0)

    def _resolve(self, cur: Any, oid: int, depth: int) -> PgType:
        known = self._cache.get(oid)
        if known is not None:
            return known
        cur.execute(_TYPE_QUERY, (oid,))
        row = cur.fetchone()
        resolved = (PgType("text", oid, str(oid)) if row is None or depth > _MAX_DEPTH
                    else self._from_row(cur, oid, row, depth))
        self._cache[oid] = resolved
        return resolved

    def _from_row(self, cur: Any, oid: int, row: tuple[Any, ...], depth: int) -> PgType:
        name, typtype, base_oid, typmod, element_oid, is_array, delimiter = row
        delimiter = str(delimiter or ",")
        if is_array:
            element = self._resolve(cur, int(element_oid), depth + 1)
            return PgType("array", oid, name, element=element, delimiter=delimiter)
        if typtype == "d":
            base = self._resolve(cur, int(base_oid), depth + 1)
            # The domain's modifier applies to its base; an outer domain's wins.
            mod = int(typmod) if typmod != -1 else base.typmod
            return PgType(base.kind, base.oid, name, mod, base.element, base.delimiter)
        if typtype == "e":
            return PgType("enum", oid, name, delimiter=delimiter)
        if typtype == "b" and name == "hstore":
            return PgType("hstore", oid, name, delimiter=delimiter)
        if typtype == "b" and oid < FIRST_NORMAL_OBJECT_ID:
            return PgType("builtin", oid, name, delimiter=delimiter)
        return PgType("text", oid, name, delimiter=delimiter)
