"""Which tables' columns changed in the catalog since the last look.

Trigger and polling capture convert values with converters chosen from the catalog (each
column's type); no Relation message tells them, as pgoutput tells the logical source, that
a column's type changed. After ``ALTER COLUMN ... TYPE`` they went on reading the column
with its old converter (the text '0042' as the integer 42, a bytea as text) until a
restart. :class:`ColumnWatch` asks the catalog, in one query, for the columns of every
table they read, and names the tables whose columns (name, type, modifier) changed.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

_COLUMNS_SQL = (
    "SELECT attrelid::bigint, array_agg(attname::text || ':' || atttypid::bigint || ':' "
    "|| atttypmod ORDER BY attnum) FROM pg_attribute "
    "WHERE attrelid = ANY(%s::oid[]) AND attnum > 0 AND NOT attisdropped GROUP BY attrelid")


class ColumnWatch:
    """Remembers each table's columns as last seen; reports the tables that changed."""

    def __init__(self) -> None:
        self._seen: dict[int, tuple[str, ...]] = {}

    def remember(self, oid: int, columns: Iterable[tuple[str, int, int]]) -> None:
        """A table's columns ``(name, type oid, type modifier)`` as just described: the
        next look compares with these (a change between the description and that look
        would otherwise count as the first look, and be missed)."""
        if oid:
            self._seen[oid] = tuple(f"{n}:{t}:{m}" for n, t, m in columns)

    def changed(self, cur: Any, oids: Iterable[int]) -> set[int]:
        """The tables (by oid) among ``oids`` whose columns differ from the last look or
        the remembered description (a first look is no change; a dropped table is one)."""
        wanted = sorted({oid for oid in oids if oid})
        if not wanted:
            return set()
        cur.execute(_COLUMNS_SQL, (wanted,))
        now = {int(oid): tuple(columns) for oid, columns in cur.fetchall()}
        changed = {oid for oid in wanted if oid in self._seen and self._seen[oid] != now.get(oid)}
        for oid in wanted:
            if oid in now:
                self._seen[oid] = now[oid]
            else:
                self._seen.pop(oid, None)
        return changed
