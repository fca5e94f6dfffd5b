"""The tables and the workload of ``python -m bench compat``: every built-in PostgreSQL type
with typical values, extremes and NULLs, then the changes whose encoding differs most between
CDC tools (primary-key change, unchanged TOAST, TRUNCATE, a large and an empty transaction, a
logical decoding message).

Each type table has rows 1 (typical), 2 and 3 (extremes) and 4 (all NULL). The workload
inserts them in one transaction, updates row 1 to row 2's values and row 4 to row 1's,
changes row 3's key, and deletes row 1. Type tables use ``REPLICA IDENTITY FULL`` so that
updates and deletes carry every column in ``before`` too; ``items`` keeps the default
identity, which is what leaves its TOASTed column out of an update.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import psycopg2
from psycopg2 import sql


@dataclass(frozen=True)
class TypeTable:
    """A table of typed columns and its four rows (SQL literals, ``None`` for NULL)."""

    name: str
    columns: tuple[tuple[str, str], ...]  # (column, type)
    rows: tuple[tuple[str | None, ...], ...]  # rows 1-3; row 4 is all NULL


def type_tables(hstore: bool, huge_json_numbers: bool = True) -> list[TypeTable]:
    """The type tables; ``hstore`` adds an hstore column when the extension is there;
    ``huge_json_numbers`` puts numbers no double or int64 holds in json and jsonb."""
    big = ('{"big": 1e400, "n": 12345678901234567890123, "f": 1.0, "neg": -0}'
           if huge_json_numbers else '{"big": 1e300, "n": 1234567890123456789, "f": 1.0, '
           '"neg": -0}')
    custom_cols: list[tuple[str, str]] = [
        ("pos", "posint"), ("ts_dom", "ts_domain"), ("mood", "mood"), ("moods", "mood[]"),
        ("pos_arr", "posint[]")]
    custom_rows: list[list[str | None]] = [
        ["1", "'2024-02-29 13:45:56.123456+05:30'", "'happy'", "'{happy,sad}'", "'{1,2}'"],
        ["2147483647", "'infinity'", "'sad'", "'{}'", "'{NULL}'"],
        ["42", "'1999-12-31 23:59:59.999999-12'", "'ok'", "'{ok,NULL,happy}'", "'{3}'"],
    ]
    if hstore:
        custom_cols.append(("h", "hstore"))
        for row, value in zip(custom_rows, (
                "'a=>1, b=>\"two words\"'", "''", "'k=>NULL, \"q\\\"uote\"=>\"x\"'"), strict=True):
            row.append(value)
    return [
        TypeTable("numbers", (
            ("i2", "smallint"), ("i4", "integer"), ("i8", "bigint"), ("num", "numeric"),
            ("num2", "numeric(12,2)"), ("f4", "real"), ("f8", "double precision"),
            ("cash", "money"), ("flag", "boolean"), ("oid_v", "oid")), (
            ("1", "1", "1", "1.50", "12.34", "1.5", "2.25", "12.34", "true", "1"),
            ("-32768", "-2147483648", "-9223372036854775808", "'NaN'", "-9999999999.99",
             "'-Infinity'", "'Infinity'", "'-92233720368547758.08'", "false", "4294967295"),
            ("32767", "2147483647", "9223372036854775807",
             "'123456789012345678901234567890.123456789012345678901234567890'", "0.00",
             "'NaN'", "5e-324", "'92233720368547758.07'", "true", "0"),
        )),
        TypeTable("texts", (
            ("t", "text"), ("vc", "varchar(10)"), ("ch", "char(5)"), ("ch1", '"char"'),
            ("nm", "name"), ("bin", "bytea"), ("id_u", "uuid")), (
            ("'hello'", "'abc'", "'ab'", "'x'", "'pg_name'", "'\\x00ff10'::bytea",
             "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'"),
            ("''", "''", "''", "''", "''", "''::bytea", "'00000000-0000-0000-0000-000000000000'"),
            ("E'non-BMP \\U0001F600 \\U0001D11E, tab\\t, newline\\n, quote\" back\\\\slash, "
             "ctrl \\u0001'", "'😀é'", "'😀'", "'\\'", "repeat('n', 63)",
             "decode(repeat('ff', 300), 'hex')", "'FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF'"),
        )),
        TypeTable("times", (
            ("d", "date"), ("t", "time"), ("ttz", "timetz"), ("ts", "timestamp"),
            ("tstz", "timestamptz"), ("iv", "interval"), ("ts0", "timestamp(0)"),
            ("tstz3", "timestamptz(3)")), (
            ("'2024-02-29'", "'13:45:56.123456'", "'13:45:56.123456+05:30'",
             "'2024-02-29 13:45:56.123456'", "'2024-02-29 13:45:56.123456+05:30'",
             "'1 year 2 mons 3 days 04:05:06.789'", "'1970-01-01 00:00:00'",
             "'1969-12-31 23:59:59.999+00'"),
            ("'infinity'", "'24:00:00'", "'00:00:00-15:59'", "'-infinity'", "'infinity'",
             "'-178000000 years'", "'0001-01-01 00:00:00 BC'", "'-infinity'"),
            ("'4713-01-01 BC'", "'00:00:00'", "'23:59:59.999999+15:59'",
             "'294276-12-31 23:59:59.999999'", "'0044-03-15 12:00:00+01 BC'",
             "'1 mon -1 day 00:00:00.000001'", "'1900-01-01 00:00:00.5'",
             "'2038-01-19 03:14:08+00'"),
        )),
        TypeTable("docs", (("j", "json"), ("jb", "jsonb"), ("x", "xml")), (
            ("'{\"b\": 1, \"a\": 2, \"a\": 3}'", "'{\"b\": 1, \"a\": 2, \"a\": 3}'",
             "'<a b=\"1\">x &amp; y</a>'"),
            (f"'{big}'", f"'{big}'", "'<?xml version=\"1.0\"?><r/>'"),
            ("'null'", "'[\"\\u00e9\\ud83d\\ude00\", {}, [], \"\", null]'", "'text only'"),
        )),
        TypeTable("nets", (
            ("ip", "inet"), ("net", "cidr"), ("mac", "macaddr"), ("mac8", "macaddr8"),
            ("b1", "bit(1)"), ("b8", "bit(8)"), ("vb", "varbit"), ("vb5", "bit varying(5)")), (
            ("'192.168.0.1/24'", "'10.0.0.0/8'", "'08:00:2b:01:02:03'",
             "'08:00:2b:01:02:03:04:05'", "B'1'", "B'10101010'", "B'101'", "B'1'"),
            ("'::1'", "'2001:db8::/32'", "'00:00:00:00:00:00'", "'ff:ff:ff:ff:ff:ff:ff:ff'",
             "B'0'", "B'00000000'", "B''", "B'11111'"),
            ("'255.255.255.255'", "'0.0.0.0/0'", "'ff:ff:ff:ff:ff:ff'",
             "'00:00:00:00:00:00:00:00'", "B'1'", "B'11111111'",
             "B'1010101010101010101010101'", "B''"),
        )),
        TypeTable("geo", (
            ("p", "point"), ("ln", "line"), ("seg", "lseg"), ("bx", "box"), ("pth", "path"),
            ("poly", "polygon"), ("circ", "circle"), ("tv", "tsvector"), ("tq", "tsquery"),
            ("lsn", "pg_lsn")), (
            ("'(1.5,-2)'", "'{1,-1,0}'", "'[(0,0),(1,1)]'", "'((1,1),(0,0))'",
             "'[(0,0),(1,1),(2,0)]'", "'((0,0),(1,1),(1,0))'", "'<(0,0),1.5>'",
             "'a fat cat:1A'", "'fat & rat'", "'16/B374D848'"),
            ("'(NaN,Infinity)'", "'{0,1,-1e300}'", "'[(-1e-300,0),(1e300,1)]'",
             "'((0,0),(0,0))'", "'((0,0))'", "'((0,0))'", "'<(0,0),0>'", "''", "''",
             "'0/0'"),
            ("'(0,-0)'", "'{1,0,0}'", "'[(1,1),(1,1)]'", "'((-1,-1),(1,1))'",
             "'[(0,0),(1,0)]'", "'((0,0),(0,1),(1,1),(1,0))'", "'<(1,1),1e10>'",
             "'''quoted'' weight:1,2C'", "'!a | b <-> c'", "'FFFFFFFF/FFFFFFFF'"),
        )),
        TypeTable("ranges", (
            ("r4", "int4range"), ("r8", "int8range"), ("rn", "numrange"), ("rts", "tsrange"),
            ("rtstz", "tstzrange"), ("rd", "daterange"), ("mr", "int4multirange")), (
            ("'[1,10)'", "'[1,10]'", "'(1.5,2.5]'", "'[2024-01-01 00:00,2024-06-01 12:00)'",
             "'[2024-01-01 00:00+00,2024-06-01 12:00+02)'", "'[2024-01-01,2024-02-01)'",
             "'{[1,3),[5,7)}'"),
            ("'empty'", "'(,5]'", "'(,)'", "'[-infinity,infinity]'", "'[2024-01-01 00:00+00,)'",
             "'[2024-01-01,infinity)'", "'{}'"),
            ("'[-2147483648,2147483647)'", "'[-9223372036854775808,0)'", "'[NaN,NaN]'",
             "'(\"2024-01-01 00:00\",\"2024-01-01 00:00:00.000001\")'", "'empty'",
             "'(-infinity,2024-01-01]'", "'{(,0],[10,)}'"),
        )),
        TypeTable("arrays", (
            ("ai", "integer[]"), ("at", "text[]"), ("a2", "integer[][]"), ("an", "numeric[]"),
            ("ats", "timestamptz[]"), ("ab", "boolean[]"), ("ajb", "jsonb[]"),
            ("au", "uuid[]"), ("abin", "bytea[]"), ("af", "double precision[]"),
            ("adate", "date[]")), (
            ("'{1,NULL,3}'", "'{a,NULL,\"NULL\",\"\",\"with,comma\",\"q\\\"uote\",😀}'",
             "'{{1,2},{3,4}}'", "'{1.5,NaN,-0.00}'",
             "'{\"2024-02-29 13:45:56.123456+05:30\",NULL}'", "'{t,f,NULL}'",
             "ARRAY['{\"a\":1}'::jsonb, 'null'::jsonb]",
             "'{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}'", "ARRAY['\\x00ff'::bytea, NULL]",
             "'{NaN,Infinity,-Infinity,1.5}'", "'{infinity,2024-01-01}'"),
            ("'{}'", "'{}'", "'{{NULL,NULL},{NULL,NULL}}'", "'{}'", "'{}'", "'{}'", "'{}'",
             "'{}'", "'{}'", "'{}'", "'{}'"),
            ("'[0:1]={7,8}'", "'{\" spaced \",\"back\\\\\\\\slash\",\"{braces}\"}'",
             "'{{{1},{2}},{{3},{4}}}'", "'{123456789012345678901234567890.5}'",
             "'{-infinity}'", "'{NULL}'", "'{}'", "'{NULL}'", "'{}'", "'{5e-324}'",
             "'{\"0044-03-15 BC\"}'"),
        )),
        TypeTable("custom", tuple(custom_cols), tuple(tuple(r) for r in custom_rows)),
    ]


def hstore_location(dsn: str) -> tuple[str | None, bool]:
    """(schema of the installed hstore extension or None, whether it can be installed)."""
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT n.nspname FROM pg_extension e JOIN pg_namespace n "
                        "ON n.oid = e.extnamespace WHERE e.extname = 'hstore'")
            row = cur.fetchone()
            cur.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'hstore'")
            return (row[0] if row else None), cur.fetchone() is not None
    finally:
        conn.close()


def create(dsn: str, schema: str,
           huge_json_numbers: bool = True) -> tuple[list[TypeTable], str | None]:
    """Create the schema, its types and every table. Returns the tables and the schema
    where hstore lives (None: not available, no hstore column). When hstore is not
    installed it is created inside ``schema``, so dropping the schema removes it again."""
    hstore_schema, available = hstore_location(dsn)
    s = sql.Identifier(schema)
    stmts = [sql.SQL("CREATE SCHEMA {}").format(s)]
    if hstore_schema is None and available:
        hstore_schema = schema
        stmts.append(sql.SQL("CREATE EXTENSION hstore SCHEMA {}").format(s))
    tables = type_tables(hstore_schema is not None, huge_json_numbers)
    stmts += [
        sql.SQL("CREATE DOMAIN {}.posint AS integer CHECK (VALUE > 0)").format(s),
        sql.SQL("CREATE DOMAIN {}.ts_domain AS timestamptz").format(s),
        sql.SQL("CREATE TYPE {}.mood AS ENUM ('sad', 'ok', 'happy')").format(s),
    ]
    for t in tables:
        cols = sql.SQL(", ").join(sql.SQL("{} {}").format(sql.Identifier(c), sql.SQL(ty))
                                  for c, ty in t.columns)
        stmts.append(sql.SQL("CREATE TABLE {}.{} (id integer PRIMARY KEY, {})").format(
            s, sql.Identifier(t.name), cols))
        stmts.append(sql.SQL("ALTER TABLE {}.{} REPLICA IDENTITY FULL").format(
            s, sql.Identifier(t.name)))
    stmts += [
        sql.SQL("CREATE TABLE {}.items (id bigint PRIMARY KEY, name text NOT NULL, "
                "big text)").format(s),
        sql.SQL("CREATE TABLE {}.bulk (id integer PRIMARY KEY, v text)").format(s),
        sql.SQL("CREATE TABLE {}.unpublished (id integer PRIMARY KEY)").format(s),
        sql.SQL("CREATE TABLE {}.zz_end (id integer PRIMARY KEY)").format(s),
    ]
    _run(dsn, schema, hstore_schema, [stmts])
    return tables, hstore_schema


def captured_tables(schema: str, tables: list[TypeTable]) -> list[str]:
    """``schema.table`` of every table both tools capture (``unpublished`` is left out)."""
    return [f"{schema}.{t.name}" for t in tables] + [
        f"{schema}.{n}" for n in ("items", "bulk", "zz_end")]


def run_workload(dsn: str, schema: str, hstore_schema: str | None,
                 tables: list[TypeTable], bulk_rows: int) -> None:
    """Write the workload, one list of statements per transaction."""
    s = sql.Identifier(schema)

    def table(name: str) -> sql.Composable:
        return sql.SQL("{}.{}").format(s, sql.Identifier(name))

    inserts = []
    for t in tables:
        names = sql.SQL(", ").join(sql.Identifier(c) for c, _ in t.columns)
        for i, row in enumerate((*t.rows, (None,) * len(t.columns)), start=1):
            values = sql.SQL(", ").join(sql.SQL(v if v is not None else "NULL") for v in row)
            inserts.append(sql.SQL("INSERT INTO {} (id, {}) VALUES ({}, {})").format(
                table(t.name), names, sql.Literal(i), values))
    updates, pk_changes, deletes = [], [], []
    for t in tables:
        names = sql.SQL(", ").join(sql.Identifier(c) for c, _ in t.columns)
        for dst, src in ((1, 2), (4, 1)):
            updates.append(sql.SQL("UPDATE {} SET ({}) = (SELECT {} FROM {} WHERE id = {}) "
                                   "WHERE id = {}").format(
                table(t.name), names, names, table(t.name), sql.Literal(src), sql.Literal(dst)))
        pk_changes.append(sql.SQL("UPDATE {} SET id = 30 WHERE id = 3").format(table(t.name)))
        deletes.append(sql.SQL("DELETE FROM {} WHERE id = 1").format(table(t.name)))
    items = table("items")
    # ~12.8 kB of random hex: compresses to ~6 kB, above the 2 kB TOAST threshold, so it is
    # stored out of line and an update that leaves it alone does not send it.
    big = sql.SQL("(SELECT string_agg(md5(random()::text), '') FROM generate_series(1, 400))")
    bulk = table("bulk")
    txns: list[Sequence[sql.Composable]] = [
        inserts,
        [sql.SQL("INSERT INTO {} VALUES (1, 'one', NULL), (2, 'two', 'small'), "
                 "(3, 'toasted', {})").format(items, big)],
        updates,
        [sql.SQL("UPDATE {} SET name = 'toast kept' WHERE id = 3").format(items),
         sql.SQL("UPDATE {} SET name = 'again', big = 'now small' WHERE id = 2").format(items)],
        pk_changes + [sql.SQL("UPDATE {} SET id = 10 WHERE id = 1").format(items)],
        deletes + [sql.SQL("DELETE FROM {} WHERE id = 2").format(items)],
        [sql.SQL("INSERT INTO {} SELECT g, 'row ' || g FROM generate_series(1, {}) g").format(
            bulk, sql.Literal(bulk_rows)),
         sql.SQL("UPDATE {} SET v = v || ' updated' WHERE id % 10 = 0").format(bulk),
         sql.SQL("DELETE FROM {} WHERE id % 10 = 5").format(bulk)],
        [sql.SQL("TRUNCATE {}").format(bulk)],
        [sql.SQL("SELECT 1")],  # an empty transaction
        [sql.SQL("INSERT INTO {} VALUES (1)").format(table("unpublished"))],  # empty for CDC
        [sql.SQL("SELECT pg_logical_emit_message(true, 'compat', 'hello')")],
        [sql.SQL("INSERT INTO {} VALUES (1)").format(table("zz_end"))],  # the end marker
    ]
    _run(dsn, schema, hstore_schema, txns)


def _run(dsn: str, schema: str, hstore_schema: str | None,
         txns: Sequence[Sequence[sql.Composable]]) -> None:
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            # An odd time zone (as Debezium's own tests use) so that nothing can pass by
            # assuming UTC; the search path finds the types and hstore.
            cur.execute("SET TimeZone = 'Pacific/Apia'")
            path = [schema, *([hstore_schema] if hstore_schema else []), "public"]
            cur.execute(sql.SQL("SET search_path = {}").format(
                sql.SQL(", ").join(map(sql.Identifier, path))))
            conn.commit()
            for txn in txns:
                for stmt in txn:
                    cur.execute(stmt)
                conn.commit()
    finally:
        conn.close()
