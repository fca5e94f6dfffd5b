"""Every value PostgreSQL prints converts, to its documented form (needs PostgreSQL).

Hypothesis picks inputs; PostgreSQL casts and prints them in the capture's session settings
(``SELECT format('%s', $1::<type>)``); the column's converter, on the capture's path
(``TableShape.row``), reads that text. No value may raise, and each comes out in the form
``pipeline.sources.postgres.values`` documents.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st

from pipeline.sources.postgres import values as v
from pipeline.sources.postgres.envelope import TableShape
from pipeline.sources.postgres.pgoutput import Column, Relation
from pipeline.sources.postgres.source import SESSION
from pipeline.sources.postgres.types import TypeResolver

pytestmark = pytest.mark.integration

CHECKS = settings(max_examples=60, deadline=None,
                  suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
MB = 1 << 20


@pytest.fixture(scope="module")
def pg(stack_info: Any) -> Iterator[Any]:
    import psycopg2

    conn = psycopg2.connect(stack_info.postgres_dsn, options=SESSION)
    conn.autocommit = True
    yield conn.cursor()
    conn.close()


# The type names below are this file's constants; a value is always a parameter.
def _printed(cur: Any, sql_type: str, value: Any) -> tuple[str, int, int]:
    """PostgreSQL's text of ``value`` cast to ``sql_type``, with the type's OID and modifier."""
    # format() prints with the type's output function, as pgoutput does (a cast to text may
    # not: bool::text is 'true', its output 't').
    import psycopg2

    try:
        cur.execute(f"SELECT format('%%s', %s::{sql_type}), pg_typeof(%s::{sql_type})::oid",
                    (value, value))
    except psycopg2.DataError:
        reject()  # PostgreSQL refuses the input (jsonb cannot hold \u0000): no value to read
    text, oid = cur.fetchone()
    return text, int(oid), _typmod(cur, sql_type)


_TYPMODS: dict[str, int] = {}


def _typmod(cur: Any, sql_type: str) -> int:
    """The column modifier of ``sql_type`` (``bit(1)`` -> 1), as a Relation message sends it."""
    if "(" not in sql_type:
        return -1
    if sql_type not in _TYPMODS:
        cur.execute(f"CREATE TEMP TABLE vals_typmod (c {sql_type})")
        cur.execute("SELECT atttypmod FROM pg_attribute "
                    "WHERE attrelid = 'vals_typmod'::regclass AND attname = 'c'")
        _TYPMODS[sql_type] = int(cur.fetchone()[0])
        cur.execute("DROP TABLE vals_typmod")
    return _TYPMODS[sql_type]


def _capture(cur: Any, sql_type: str, value: Any, mode: str = "string") -> tuple[str, Any]:
    """(PostgreSQL's text, what the capture publishes for it) for one value of ``sql_type``."""
    text, oid, typmod = _printed(cur, sql_type, value)
    rel = Relation(1, "public", "vals", "d", (Column(True, "c", oid, typmod),))
    pg_type = TypeResolver().resolve(cur, oid)
    shape = TableShape.from_relation(rel, ("c",), [pg_type], mode)  # type: ignore[arg-type]
    out = shape.row((text,))["c"]
    orjson.dumps(out)  # JSON can carry it
    return text, out


# --- numbers ------------------------------------------------------------------------------

@CHECKS
@given(st.integers(-(2**63), 2**63 - 1))
def test_integers_are_equal(pg: Any, n: int) -> None:
    for sql_type, bits in (("int2", 16), ("int4", 32), ("int8", 64)):
        if -(2 ** (bits - 1)) <= n < 2 ** (bits - 1):
            assert _capture(pg, sql_type, str(n))[1] == n
    if 0 <= n < 2**32:
        assert _capture(pg, "oid", str(n))[1] == n


@CHECKS
@given(st.floats(), st.floats(width=32))
def test_floats_are_equal_or_named(pg: Any, x8: float, x4: float) -> None:
    for sql_type, x in (("float8", x8), ("float4", x4)):
        literal = "NaN" if math.isnan(x) else repr(x).replace("inf", "Infinity")
        text, out = _capture(pg, sql_type, literal)
        if text in ("NaN", "Infinity", "-Infinity"):
            assert out == text
        else:
            assert out == float(text)


_NUMERICS = st.one_of(
    st.decimals(min_value=-(10**100), max_value=10**100, allow_nan=False, allow_infinity=False),
    st.sampled_from(["NaN", "Infinity", "-Infinity", "0", "-0.000", "1e400",
                     "-" + "9" * 131072, "0." + "0" * 16382 + "1"]),
    st.integers(1, 1000).map(lambda n: "1" * n + "." + "2" * n),
).map(str)  # fmt: skip


@CHECKS
@given(_NUMERICS)
def test_numerics_in_every_decimal_mode(pg: Any, literal: str) -> None:
    text, out = _capture(pg, "numeric", literal)
    assert out == text  # string: exactly as PostgreSQL printed it
    special = text in ("NaN", "Infinity", "-Infinity")
    _, out = _capture(pg, "numeric", literal, "double")
    assert out == text if special else (out == float(text) or out in ("Infinity", "-Infinity"))
    _, out = _capture(pg, "numeric", literal, "precise")
    if special:
        assert out == text  # no precise form: published as text (and counted)
    else:
        sign, digits, _ = Decimal(int.from_bytes(base64.b64decode(out["value"]), "big",
                                                 signed=True)).as_tuple()
        assert Decimal((sign, digits, -out["scale"])) == Decimal(text)


@CHECKS
@given(st.decimals(min_value=-10**12, max_value=10**12, places=2))
def test_money_is_the_exact_amount(pg: Any, amount: Decimal) -> None:
    text, out = _capture(pg, "money", str(amount))
    pg.execute("SELECT %s::money::numeric::text", (str(amount),))
    assert out == pg.fetchone()[0], text


# --- text, bytes, json ------------------------------------------------------------------------

_TEXTS = st.one_of(
    st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00")),
    st.sampled_from(["", " ", "\U0001f418\U00010348", "NULL", "{}", "x" * MB]),
)


@CHECKS
@given(_TEXTS)
def test_text_is_unchanged(pg: Any, s: str) -> None:
    for sql_type in ("text", "varchar", "bpchar"):
        text, out = _capture(pg, sql_type, s)
        assert out == text


@CHECKS
@given(st.binary(max_size=512) | st.sampled_from([b"", b"\x00" * MB]))
def test_bytea_is_base64_of_the_bytes(pg: Any, data: bytes) -> None:
    _, out = _capture(pg, "bytea", data)
    assert base64.b64decode(out) == data


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False)
    | _TEXTS.filter(
        lambda s: len(s) < 100),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=5), kids,
                                                               max_size=4),
    max_leaves=12,
).map(lambda doc: orjson.dumps(doc).decode())
_ODD_JSON = st.sampled_from(['{"huge": 1e400}', '{"a": 1, "a": 2}', '{"b":1,  "a":2}',
                             "-1e-400", "123456789012345678901234567890.5", '"x' + "y" * MB + '"',
                             '[1, [2, [3, [4]]]]', '"\\ud83d\\udc18"'])  # fmt: skip


@CHECKS
@given(_JSON | _ODD_JSON)
def test_json_is_postgres_text(pg: Any, doc: str) -> None:
    for sql_type in ("json", "jsonb"):
        text, out = _capture(pg, sql_type, doc)
        assert out == text


# --- dates and times ------------------------------------------------------------------------

_INSTANTS = st.one_of(
    st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31),
                 timezones=st.just(UTC)).map(lambda d: d.isoformat()),
    st.sampled_from(["infinity", "-infinity", "0044-03-15 12:00:00+00 BC",
                     "4713-01-01 00:00:00+00 BC", "294276-12-31 23:59:59+00",
                     "0001-01-01 00:30:00+05:30"]),
)  # fmt: skip


@CHECKS
@given(_INSTANTS)
def test_timestamptz_is_utc_iso_or_postgres_text(pg: Any, literal: str) -> None:
    text, out = _capture(pg, "timestamptz", literal)
    if out == text:  # what datetime cannot hold is passed through: infinity, BC
        assert not text[:1].isdigit() or text.endswith(" BC")
        return
    assert out.endswith("Z")
    if len(out.split("-")[0]) > 4:  # years past 9999: the UTC text, re-punctuated
        assert out == text[:-3].replace(" ", "T", 1) + "Z"
        return
    pg.execute("SELECT extract(epoch FROM %s::timestamptz)", (literal,))
    (epoch,) = pg.fetchone()
    since = datetime.fromisoformat(out[:-1]).replace(tzinfo=UTC) - datetime(
        1970, 1, 1, tzinfo=UTC)
    seconds = Decimal(since.days * 86400 + since.seconds) + Decimal(since.microseconds) / 10**6
    assert seconds == Decimal(epoch)  # the same instant, to the microsecond


@CHECKS
@given(_INSTANTS)
def test_timestamp_and_date(pg: Any, literal: str) -> None:
    naive = literal.replace("+00:00", "").replace("+00", "")
    text, out = _capture(pg, "timestamp", naive)
    assert out in (text, text.replace(" ", "T", 1))
    text, out = _capture(pg, "date", naive)
    assert out == text


# --- the rest: booleans, bits, uuids, arrays -------------------------------------------------

@CHECKS
@given(st.booleans())
def test_booleans_and_bit1(pg: Any, b: bool) -> None:
    assert _capture(pg, "bool", str(b).lower())[1] is b
    assert _capture(pg, "bit(1)", "1" if b else "0")[1] is b


_ELEMENTS = st.one_of(st.none(), st.integers(-(2**31), 2**31 - 1))


@CHECKS
@given(st.lists(_ELEMENTS, max_size=6), st.integers(1, 3))
def test_arrays_with_nulls_and_dimensions(pg: Any, items: list[int | None], depth: int) -> None:
    nested: Any = items
    for _ in range(depth - 1 if items else 0):  # '{{},{}}' is not an array literal
        nested = [nested, nested]
    literal = orjson.dumps(nested).decode().replace("[", "{").replace("]", "}").replace(
        "null", "NULL")
    _, out = _capture(pg, "int4[]", literal)
    assert out == (nested if items else [])  # PostgreSQL folds empty inner arrays to {}
    _, out = _capture(pg, "text[]", literal)
    assert out == (_texts(nested) if items else [])
    _, out = _capture(pg, "jsonb[]", literal)
    assert out == (_texts(nested) if items else [])


def _texts(nested: Any) -> Any:
    if isinstance(nested, list):
        return [_texts(x) for x in nested]
    return None if nested is None else str(nested)


@CHECKS
@given(st.lists(_TEXTS.filter(lambda s: len(s) < 200) | st.none(), max_size=5))
def test_text_arrays(pg: Any, items: list[str | None]) -> None:
    assert _capture(pg, "text[]", items)[1] == items


def test_every_builtin_type_with_a_converter_is_covered_here(pg: Any) -> None:
    """A converter added for a type must come with its property above."""
    covered = {"int2", "int4", "int8", "oid", "float4", "float8", "numeric", "money", "bool",
               "bit", "bytea", "timestamptz", "timestamp"}
    pg.execute("SELECT oid, typname FROM pg_type WHERE oid < 16384 AND typtype = 'b' "
               "AND typelem = 0")
    converting = {name for oid, name in pg.fetchall()
                  if v.converter_for(int(oid)) is not v._identity or int(oid) == v.NUMERIC_OID}
    assert converting <= covered


# --- user-defined types, resolved from the catalog ---------------------------------------------

@pytest.fixture(scope="module")
def typed_db(stack_info: Any) -> Iterator[Any]:
    """A database of its own (hstore is an extension; others share the stack's database)."""
    import os

    import psycopg2
    from psycopg2.extensions import make_dsn, parse_dsn

    name = f"vals_types_{os.getpid()}"
    admin = psycopg2.connect(stack_info.postgres_dsn)
    admin.autocommit = True
    admin.cursor().execute(f"CREATE DATABASE {name}")
    conn = psycopg2.connect(make_dsn(**{**parse_dsn(stack_info.postgres_dsn), "dbname": name}),
                            options=SESSION)
    conn.autocommit = True
    try:
        cur = conn.cursor()
        cur.execute("CREATE EXTENSION hstore; CREATE TYPE mood AS ENUM ('ok', 'very sad');"
                    "CREATE DOMAIN positive AS int CHECK (VALUE > 0);"
                    "CREATE DOMAIN stamp AS timestamptz; CREATE DOMAIN flag AS bit(1);"
                    "CREATE DOMAIN price AS numeric(10, 2); CREATE DOMAIN nice AS positive;"
                    "CREATE TYPE pair AS (a int, b text)")
        yield cur
    finally:
        conn.close()
        admin.cursor().execute(f"DROP DATABASE {name}")
        admin.close()


@pytest.mark.parametrize(
    ("sql_type", "literal", "expected"),
    [
        ("positive", "42", 42),  # a domain is its base type
        ("nice", "7", 7),  # a domain over a domain
        ("stamp", "2024-01-02 03:04:05+01", "2024-01-02T02:04:05Z"),
        ("flag", "1", True),  # the domain's bit(1)
        ("price", "1234.5", "1234.50"),
        ("mood", "very sad", "very sad"),
        ("mood[]", '{ok,"very sad",NULL}', ["ok", "very sad", None]),
        ("positive[]", "{{1,2},{3,NULL}}", [[1, 2], [3, None]]),
        ("hstore", 'a=>1, "b c"=>NULL', '{"a":"1","b c":null}'),
        ("hstore[]", '{"a=>1"}', ['{"a":"1"}']),
        ("pair", "(1,x)", "(1,x)"),  # composite: PostgreSQL's text
        ("int4range", "[1,5)", "[1,5)"),
        ("interval[]", "{1 day,NULL}", ["P1D", None]),
        ("money", "-1234.56", "-1234.56"),
    ],
)  # fmt: skip
def test_user_defined_types_convert_as_debezium_sends_them(
    typed_db: Any, sql_type: str, literal: str, expected: Any
) -> None:
    assert _capture(typed_db, sql_type, literal)[1] == expected


def test_precise_domain_uses_the_domains_scale(typed_db: Any) -> None:
    assert _capture(typed_db, "price", "1", "precise")[1] == "ZA=="  # unscaled 100 = 0x64
