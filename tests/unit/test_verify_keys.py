"""Documents' keys turned back into PostgreSQL's text (`cdc verify`'s row lookup): every
published form that determines its value comes back as text that publishes it again; the
forms that do not (a double, a hashed key, money, arrays) leave the document unchecked."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.config import TableColumnSettings
from pipeline.sources.postgres.decimals import DecimalMode
from pipeline.sources.postgres.envelope import TableShape
from pipeline.sources.postgres.pgoutput import Column, Relation
from pipeline.sources.postgres.types import PgType
from pipeline.sources.postgres.values import (
    BIT_OID,
    BOOL_OID,
    BYTEA_OID,
    FLOAT8_OID,
    INT4_OID,
    INT8_OID,
    MONEY_OID,
    NUMERIC_OID,
    TEXT_OID,
    TIMESTAMPTZ_OID,
)
from pipeline.verify.keys import NOT_A_ROW, DocumentKeys

NUMERIC_10_2 = ((10 << 16) | 2) + 4


def _keys(oid: int, typmod: int = -1, mode: DecimalMode = "string",
          rules: TableColumnSettings | None = None, kind: str = "builtin") -> tuple[
              DocumentKeys, TableShape]:
    rel = Relation(16400, "s", "t", "d", (Column(True, "k", oid, typmod),
                                          Column(False, "v", TEXT_OID, -1)))
    types = [PgType(kind, oid, "k"), PgType.builtin(TEXT_OID, "text")]  # type: ignore[arg-type]
    shape = TableShape.from_relation(rel, ("k",), types, mode, columns=rules)
    return DocumentKeys(shape, types, [typmod, -1], mode), shape


def _round_trip(oid: int, text: str, typmod: int = -1, mode: DecimalMode = "string") -> Any:
    """The key text found for the document of a row whose key prints as ``text``."""
    keys, shape = _keys(oid, typmod, mode)
    published = shape.row((text, "x"))
    found = keys.of(dict(published))
    if isinstance(found, list):  # the text found publishes the document's value again
        assert shape.row((found[0], "x"))["k"] == published["k"]
    return found


@pytest.mark.parametrize(("oid", "typmod", "mode", "text", "expected"), [
    (INT8_OID, -1, "string", "-9223372036854775808", "-9223372036854775808"),
    (BOOL_OID, -1, "string", "t", "t"),
    (BOOL_OID, -1, "string", "f", "f"),
    (BIT_OID, 1, "string", "1", "1"),
    (BYTEA_OID, -1, "string", "\\x00ff10", "\\x00ff10"),
    (BYTEA_OID, -1, "string", "\\x", "\\x"),
    (FLOAT8_OID, -1, "string", "0.1", "0.1"),
    (FLOAT8_OID, -1, "string", "-Infinity", "-Infinity"),
    (FLOAT8_OID, -1, "string", "1e+300", "1e+300"),
    (NUMERIC_OID, NUMERIC_10_2, "string", "12.50", "12.50"),
    (NUMERIC_OID, NUMERIC_10_2, "precise", "-12.50", "-12.50"),
    (NUMERIC_OID, NUMERIC_10_2, "precise", "0.00", "0.00"),
    (NUMERIC_OID, -1, "precise", "123456789012345678901234567890.000001",
     "123456789012345678901234567890.000001"),
    (NUMERIC_OID, -1, "precise", "NaN", "NaN"),
    (TIMESTAMPTZ_OID, -1, "string", "2024-01-02 03:04:05.5+00", "2024-01-02T03:04:05.5Z"),
    (TIMESTAMPTZ_OID, -1, "string", "infinity", "infinity"),
    (TEXT_OID, -1, "string", "\U0001f600 O'Brien", "\U0001f600 O'Brien"),
])
def test_a_published_key_comes_back_as_text_that_publishes_it_again(
        oid: int, typmod: int, mode: DecimalMode, text: str, expected: str) -> None:
    assert _round_trip(oid, text, typmod, mode) == [expected]


@pytest.mark.parametrize(("oid", "typmod", "mode", "text"), [
    (NUMERIC_OID, NUMERIC_10_2, "double", "12.50"),  # many numerics, one double
    (MONEY_OID, -1, "string", "$1,234.56"),  # its text follows lc_monetary
])
def test_a_key_whose_published_form_loses_the_value_is_unchecked(
        oid: int, typmod: int, mode: DecimalMode, text: str) -> None:
    assert _round_trip(oid, text, typmod, mode) is None


def test_a_hashed_key_leaves_every_document_unchecked_and_says_why() -> None:
    keys, shape = _keys(INT4_OID, rules=TableColumnSettings(hash=("k",), hash_salt="s"))
    assert keys.of(dict(shape.row(("5", "x")))) is None
    assert keys.unchecked_because == "its key column k is hashed (postgres.columns)"
    plain, _ = _keys(INT4_OID)
    assert plain.unchecked_because is None


def test_an_array_key_is_unchecked() -> None:
    keys, _ = _keys(1007, kind="array")  # int4[]
    assert keys.of({"k": [1, 2]}) is None


def test_a_document_without_its_key_is_no_row_and_a_foreign_value_is_unchecked() -> None:
    keys, _ = _keys(INT4_OID)
    assert keys.of({"other": 1}) == NOT_A_ROW
    assert keys.of({"k": None}) == NOT_A_ROW
    assert keys.of({"k": {"nested": 1}}) is None
    assert keys.of({"k": True}) is None  # a bool is not an int4's value
    assert keys.of({"k": "5"}) is None
    assert keys.of({"k": 99_999_999_999_999}) == ["99999999999999"]  # the lookup says no


def test_base64_that_is_not_base64_is_unchecked() -> None:
    keys, _ = _keys(BYTEA_OID)
    assert keys.of({"k": "not base64!"}) is None


@given(st.binary(max_size=64))
def test_any_bytea_key_round_trips(raw: bytes) -> None:
    assert _round_trip(BYTEA_OID, "\\x" + raw.hex()) == ["\\x" + raw.hex()]


@given(st.decimals(allow_nan=False, allow_infinity=False, places=2,
                   min_value=-10**7, max_value=10**7))
def test_any_fixed_scale_precise_numeric_round_trips(value: Any) -> None:
    text = f"{value:.2f}"
    assert _round_trip(NUMERIC_OID, text, NUMERIC_10_2, "precise") == [text]


@given(st.floats(allow_nan=False))
def test_any_double_key_round_trips(value: float) -> None:
    text = {float("inf"): "Infinity", float("-inf"): "-Infinity"}.get(value, repr(value))
    assert _round_trip(FLOAT8_OID, text) is not None
