"""ColumnWatch: which tables' columns changed since they were described or last looked at."""

from __future__ import annotations

from typing import Any

from pipeline.sources.postgres.column_watch import ColumnWatch


class _Catalog:
    """A cursor answering the watch's one query from a dict: oid -> columns."""

    def __init__(self, tables: dict[int, list[tuple[str, int, int]]]) -> None:
        self.tables = tables
        self.rows: list[Any] = []

    def execute(self, query: str, params: tuple[list[int]]) -> None:
        self.rows = [(oid, [f"{n}:{t}:{m}" for n, t, m in self.tables[oid]])
                     for oid in params[0] if oid in self.tables]

    def fetchall(self) -> list[Any]:
        return self.rows


def test_a_change_after_the_description_is_seen_at_the_first_look() -> None:
    """The trigger relay described a table, then ALTER COLUMN qty TYPE text ran before its
    first look: without what was described, that look took the new columns as the first
    ones, and the old converter stayed."""
    catalog = _Catalog({7: [("id", 23, -1), ("qty", 23, -1)]})
    watch = ColumnWatch()
    watch.remember(7, [("id", 23, -1), ("qty", 23, -1)])
    catalog.tables[7] = [("id", 23, -1), ("qty", 25, -1)]
    assert watch.changed(catalog, [7]) == {7}
    assert watch.changed(catalog, [7]) == set()  # seen now


def test_first_looks_unchanged_tables_and_dropped_ones() -> None:
    catalog = _Catalog({7: [("id", 23, -1)], 8: [("id", 20, -1)]})
    watch = ColumnWatch()
    assert watch.changed(catalog, [7, 8, 0]) == set()  # first looks; 0: a table gone
    assert watch.changed(catalog, [7, 8]) == set()
    del catalog.tables[8]
    assert watch.changed(catalog, [7, 8]) == {8}
