"""Lsn: parsing and printing PostgreSQL's "HIGH/LOW" text form, ordering, range."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.positions import Lsn

U64 = st.integers(min_value=0, max_value=(1 << 64) - 1)


def test_parse_and_format() -> None:
    lsn = Lsn.parse("16/B374D848")
    assert lsn.value == (0x16 << 32) | 0xB374D848
    assert str(lsn) == "16/B374D848"
    assert int(lsn) == lsn.value


def test_parse_accepts_lower_case_and_leading_zeros_prints_canonical() -> None:
    assert str(Lsn.parse("0000000a/00b374d8")) == "A/B374D8"


def test_zero() -> None:
    assert Lsn.ZERO == Lsn(0) == Lsn.parse("0/0")
    assert str(Lsn.ZERO) == "0/0"


def test_largest() -> None:
    assert Lsn.parse("FFFFFFFF/FFFFFFFF").value == (1 << 64) - 1


def test_ordering_compares_numerically_not_textually() -> None:
    # As text "9/0" > "10/0"; as positions it is the other way round.
    assert Lsn.parse("9/0") < Lsn.parse("10/0")
    assert Lsn.parse("0/FFFFFFFF") < Lsn.parse("1/0")
    assert max(Lsn.parse("1/2"), Lsn.parse("1/10")) == Lsn.parse("1/10")


def test_frozen_and_hashable() -> None:
    lsn = Lsn.parse("1/2")
    assert {lsn: 1}[Lsn.parse("1/2")] == 1
    with pytest.raises(AttributeError):
        lsn.value = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    "text",
    ["", "/", "1", "1/", "/1", "1/2/3", "G/0", "0x1/0", "+1/0", " 1/0", "1/0 ", "1_0/0",
     "123456789/0", "0/123456789", "-1/0"],
)  # fmt: skip
def test_parse_rejects_malformed_text(text: str) -> None:
    with pytest.raises(ValueError, match="not an LSN"):
        Lsn.parse(text)


@pytest.mark.parametrize("value", [-1, 1 << 64])
def test_out_of_range_values_are_rejected(value: int) -> None:
    with pytest.raises(ValueError, match="out of range"):
        Lsn(value)


@given(U64)
def test_str_parse_roundtrip(value: int) -> None:
    lsn = Lsn(value)
    assert Lsn.parse(str(lsn)) == lsn


@given(U64, U64)
def test_order_matches_integer_order(a: int, b: int) -> None:
    assert (Lsn(a) < Lsn(b)) == (a < b)
    assert (Lsn(a) == Lsn(b)) == (a == b)
