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


#: Key types and values whose text PostgreSQL must read back exactly as the next chunk's
#: bound (extremes, specials, and values whose text sorts otherwise than the values).
KEY_VALUES = {
    "float8": ["'-Infinity'", "-1e308", "-0.1", "0", "1e-320", "0.1", "0.30000000000000004",
               "1.7976931348623157e308", "'Infinity'", "'NaN'"],
    "numeric": ["-99999999999999999999.5", "-1", "0", "0.000000000000000000001", "2", "10",
                "1e30", "'NaN'"],
    "timestamptz": ["'-infinity'", "'4713-01-01 00:00:00+00 BC'", "'1999-12-31 23:59:59.999999+00'",
                    "'2000-01-01 00:00:00+00'", "'2024-03-01 12:00:00.5+05:30'",
                    "'294276-12-31 23:59:59+00'", "'infinity'"],
    "timestamp": ["'-infinity'", "'0001-01-01 00:00:00'", "'2024-02-29 23:59:59.123456'",
                  "'infinity'"],
    "date": ["'-infinity'", "'4713-01-01 BC'", "'2000-01-01'", "'5874897-12-31'", "'infinity'"],
    "interval": ["'-178000000 years'", "'-1 day'", "'0'", "'1 mon -1 day'", "'1 day 00:00:01'",
                 "'178000000 years'"],
    "bytea": ["''", "'\\x00'", "'\\x0000'", "'\\x7f'", "'\\x80'", "'\\xff'", "'\\xffff00'"],
    "uuid": ["'00000000-0000-0000-0000-000000000000'", "'7f000000-0000-0000-0000-000000000001'",
             "'ffffffff-ffff-ffff-ffff-ffffffffffff'"],
    "text": ["''", "' '", "'a'", "'a b'", "'a\\b'", "E'tab\\there'", "'\"quoted\"'", "'ß'",
             "'😀'", "'NULL'", "'{}'"],
    "bool": ["false", "true"],
    "int8[]": ["'{}'", "'{-9223372036854775808}'", "'{1,NULL}'", "'{1,2}'", "'{{1,2},{3,4}}'"],
    "jsonb": ["'null'", "'\"\"'", "'1e400'", "'[]'", "'{\"a\": [1, \"x\"]}'", "'true'"],
    "inet": ["'0.0.0.0/0'", "'10.0.0.1'", "'::1'", "'ffff::/16'"],
    "money": ["'-92233720368547758.08'", "'0'", "'92233720368547758.07'"],
}


@pytest.mark.parametrize("key_type", sorted(KEY_VALUES))
def test_every_row_is_read_once_in_key_chunks_whatever_the_key_type(
        scenario: Scenario, key_type: str) -> None:
    """Each chunk starts after the text of the previous chunk's last key: that text must
    give PostgreSQL back the very value, or rows are skipped or read twice."""
    sc = scenario
    table = f"{sc.schema}.keyed"
    values = KEY_VALUES[key_type]
    sc.execute(f"CREATE TABLE {table} (k {key_type}, n int, PRIMARY KEY (k, n))")
    sc.execute(f"INSERT INTO {table} SELECT v, n FROM (VALUES "
               + ", ".join(f"({v}::{key_type})" for v in values)
               + ") AS t(v), generate_series(1, 2) n")
    conn = connect(sc.dsn, text_as_stored=True, options=SESSION)
    conn.autocommit = True
    try:
        reader = TableReader(conn, table, sc.settings.postgres, TypeResolver(),
                             UnconvertedValues())
        for size in (1, 3):
            read: list[tuple[str | None, ...]] = []
            after = None
            while True:
                rows = reader.chunk(after, size)
                read.extend(rows)
                if len(rows) < size:
                    break
                after = reader.key_of(rows[-1])
            with conn.cursor() as cur:
                cur.execute(f"SELECT count(*) FROM {table}")
                (total,) = cur.fetchone()
            assert len(read) == total == 2 * len(values), (size, read)
            assert len({tuple(r) for r in read}) == total  # none twice
    finally:
        conn.close()
