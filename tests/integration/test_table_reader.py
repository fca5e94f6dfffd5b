"""The table reader behind snapshots, backfills and `cdc verify`, on real PostgreSQL: a
table's values come out typed as the stream publishes them whatever its column types, and
reading it leaves the connection's other queries their Python types."""

from __future__ import annotations

import pytest

from pipeline.sources.postgres.chunks import TableReader
from pipeline.sources.postgres.slot import connect
from pipeline.sources.postgres.source import SESSION
from pipeline.sources.postgres.types import TypeResolver
from pipeline.sources.postgres.unconverted import UnconvertedValues
from tests.integration.scenario import Scenario

pytestmark = pytest.mark.integration


def test_a_table_with_a_bool_column_reads_typed_values_and_leaves_the_connection_be(
        scenario: Scenario) -> None:
    sc = scenario
    table = f"{sc.schema}.mixed"
    sc.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, b bool, j jsonb, n numeric(6,2), "
               "ints int[])")
    sc.execute(f"INSERT INTO {table} VALUES (1, true, '{{\"a\": 1}}', 1.50, '{{1,2}}'), "
               "(2, false, NULL, NULL, '{}')")
    conn = connect(sc.dsn, options=SESSION)
    conn.autocommit = True
    try:
        unconverted = UnconvertedValues()
        reader = TableReader(conn, table, sc.settings.postgres, TypeResolver(), unconverted)
        rows = [reader.shape.row(tuple(values)) for values in reader.chunk(None, 10)]
        assert rows == [{"id": 1, "b": True, "j": '{"a": 1}', "n": "1.50", "ints": [1, 2]},
                        {"id": 2, "b": False, "j": None, "n": None, "ints": []}]
        assert not unconverted.drain()
        # the connection's own queries are not read as text
        with conn.cursor() as cur:
            cur.execute("SELECT true, 7, '{\"a\": 1}'::jsonb")
            assert cur.fetchone() == (True, 7, {"a": 1})
        # domains alone in their table: their values arrive as their base types'
        sc.execute(f"CREATE DOMAIN {sc.schema}.flag AS bool; "
                   f"CREATE DOMAIN {sc.schema}.doc AS jsonb; "
                   f"CREATE DOMAIN {sc.schema}.stamp AS timestamptz; "
                   f"CREATE TABLE {sc.schema}.domained (id text PRIMARY KEY, "
                   f"ok {sc.schema}.flag, body {sc.schema}.doc, at {sc.schema}.stamp)")
        sc.execute(f"INSERT INTO {sc.schema}.domained VALUES "
                   "('a', true, '{\"x\": [1]}', '2024-01-02 03:04:05+00'), "
                   "('b', false, 'null', 'infinity')")
        domained = TableReader(conn, f"{sc.schema}.domained", sc.settings.postgres,
                               TypeResolver(), unconverted)
        assert [domained.shape.row(tuple(v)) for v in domained.chunk(None, 10)] == [
            {"id": "a", "ok": True, "body": '{"x": [1]}', "at": "2024-01-02T03:04:05Z"},
            {"id": "b", "ok": False, "body": "null", "at": "infinity"}]
        assert not unconverted.drain()
        # box separates array elements with ';' (its values hold commas)
        sc.execute(f"CREATE TABLE {sc.schema}.shapes (id int PRIMARY KEY, boxes box[])")
        sc.execute(f"INSERT INTO {sc.schema}.shapes VALUES "
                   "(1, ARRAY[box '((0,0),(1,1))', box '((2,2),(3,3))'])")
        shapes = TableReader(conn, f"{sc.schema}.shapes", sc.settings.postgres,
                             TypeResolver(), unconverted)
        (values,) = shapes.chunk(None, 10)
        assert shapes.shape.row(tuple(values)) == {"id": 1,
                                                    "boxes": ["(1,1),(0,0)", "(3,3),(2,2)"]}
        # a second table read on the same connection resolves its types afresh
        other = TableReader(conn, sc.table_id, sc.settings.postgres, TypeResolver(),
                            unconverted)
        assert other.types[0].kind == "builtin"
    finally:
        conn.close()
