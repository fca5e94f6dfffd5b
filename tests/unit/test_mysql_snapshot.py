"""The MariaDB snapshot's pure parts: keyset conditions, saved keys, identifier quoting,
and the conversion of values as pymysql reads them."""

from __future__ import annotations

import datetime as dt
import sqlite3
from decimal import Decimal

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.sources.mysql import values
from pipeline.sources.mysql.chunks import (
    decode_key,
    encode_key,
    keyset_condition,
    keyset_params,
    quote,
)

_KEYS = st.tuples(st.integers(0, 4), st.integers(0, 4), st.integers(0, 4))


@settings(max_examples=60, deadline=None)
@given(rows=st.sets(_KEYS, max_size=40), after=_KEYS, width=st.integers(1, 3))
def test_the_keyset_condition_selects_exactly_the_keys_after(
        rows: set[tuple[int, int, int]], after: tuple[int, int, int], width: int) -> None:
    """Run by a real SQL engine (sqlite takes backtick-quoted names too): the rows it
    returns are those whose key is above ``after`` in key order, whatever the width."""
    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE t (`a` INT, `b``x` INT, `c` INT)")
    db.executemany("INSERT INTO t VALUES (?, ?, ?)", sorted(rows))
    names = [quote(n) for n in ("a", "b`x", "c")][:width]
    where = keyset_condition(names).replace("%s", "?")
    got = db.execute(f"SELECT * FROM t WHERE {where} ORDER BY {', '.join(names)}",
                     keyset_params(list(after[:width]))).fetchall()
    want = sorted((r for r in rows if r[:width] > after[:width]), key=lambda r: r[:width])
    assert [r[:width] for r in got] == [r[:width] for r in want]


def test_identifiers_are_quoted_with_backticks_doubled() -> None:
    assert quote("items") == "`items`"
    assert quote("we`ird") == "`we``ird`"
    with pytest.raises(ValueError):
        quote("a\x00b")


def test_saved_keys_come_back_as_the_values_read() -> None:
    key = [7, "ü", 1.5, b"\x00\xff", Decimal("12345678901234567890.01"),
           dt.date(2024, 2, 29), dt.datetime(2024, 2, 29, 1, 2, 3, 4),
           dt.timedelta(hours=-838, minutes=-59), None]
    saved = orjson.loads(orjson.dumps(encode_key(key)))
    assert decode_key(saved) == key
    assert type(decode_key(saved)[4]) is Decimal  # compared as a decimal, never a float


@pytest.mark.parametrize(("data_type", "fsp", "width", "read", "binlog"), [
    ("decimal", 0, 0, Decimal("0E-10"), "0.0000000000"),
    ("float", 0, 0, 1.2345677614212036, 1.2345678),
    ("date", 0, 0, dt.date(2024, 2, 29), 19782),
    ("date", 0, 0, "0000-00-00", None),
    ("datetime", 0, 0, dt.datetime(1970, 1, 1, 0, 0, 1), 1000),
    ("datetime", 6, 0, dt.datetime(1970, 1, 1, 0, 0, 0, 1), 1),
    ("timestamp", 3, 0, dt.datetime(2038, 1, 19, 3, 14, 7, 499000),
     "2038-01-19T03:14:07.499Z"),
    ("time", 6, 0, dt.timedelta(hours=-1), -3_600_000_000),
    ("bit", 0, 1, b"\x01", True),
    ("bit", 0, 10, b"\x02\x01", "AQI="),  # 0b1000000001 little-endian
    ("varbinary", 0, 0, b"\x00\xff", "AP8="),
    ("varchar", 0, 0, "text", "text"),
    ("point", 0, 0, b"\xe6\x10\x00\x00\x01", {"wkb": "AQ==", "srid": 4326}),
])
def test_snapshot_values_convert_as_the_binlog_values(
        data_type: str, fsp: int, width: int, read: object, binlog: object) -> None:
    convert = values.read_converter(data_type, fsp, width)
    assert convert is not None
    assert convert(read) == binlog


def test_values_pymysql_already_reads_as_the_binlog_are_kept() -> None:
    for data_type in ("int", "bigint", "double", "year", "enum", "set"):
        assert values.read_converter(data_type, 0, 0) is None
