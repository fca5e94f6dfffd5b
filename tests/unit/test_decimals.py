"""decimal.handling.mode for numeric and money (Debezium's string / double / precise)."""

from __future__ import annotations

import base64
from decimal import Decimal
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.sources.postgres import values as v
from pipeline.sources.postgres.decimals import money_text, numeric_scale
from pipeline.sources.postgres.values import converter_for


def _numeric(mode: str, typmod: int = -1) -> Any:
    return converter_for(v.NUMERIC_OID, typmod, mode)  # type: ignore[arg-type]


def _typmod(precision: int, scale: int) -> int:
    return ((precision << 16) | (scale & 0x7FF)) + 4


def _unscaled(b64: str) -> int:
    return int.from_bytes(base64.b64decode(b64), "big", signed=True)


def _decimal(b64: str, scale: int) -> Decimal:
    """The exact number (Decimal arithmetic would round to the context's 28 digits)."""
    sign, digits, _ = Decimal(_unscaled(b64)).as_tuple()
    return Decimal((sign, digits, -scale))


@pytest.mark.parametrize(
    ("text", "scale", "expected"),
    [
        # Hand-computed big-endian two's complement of the unscaled value, shortest form.
        ("1234.56", 2, "AeJA"),  # 123456 = 0x01E240
        ("-1.00", 2, "nA=="),  # -100 = 0x9C
        ("0.00", 2, "AA=="),  # zero is one zero byte
        ("1.28", 2, "AIA="),  # 128 needs a sign byte: 0x0080
        ("-1.28", 2, "gA=="),  # -128 = 0x80
        ("-1.29", 2, "/38="),  # -129 = 0xFF7F
        ("5", 0, "BQ=="),
        ("12300", -2, "ew=="),  # numeric(5,-2): unscaled 123
    ],
)
def test_precise_fixed_scale_is_base64_of_the_unscaled_bytes(
    text: str, scale: int, expected: str
) -> None:
    assert _numeric("precise", _typmod(10, scale))(text) == expected


def test_precise_without_declared_scale_is_a_variable_scale_struct() -> None:
    assert _numeric("precise")("-12.345") == {"scale": 3, "value": base64.b64encode(
        (-12345).to_bytes(2, "big", signed=True)).decode()}
    assert _numeric("precise")("42") == {"scale": 0, "value": "Kg=="}


@pytest.mark.parametrize("text", ["NaN", "Infinity", "-Infinity"])
def test_precise_has_no_form_for_special_values(text: str) -> None:
    # Debezium stops here; the capture publishes the text and counts it (TableShape.row).
    with pytest.raises(ValueError, match="no exact decimal form"):
        _numeric("precise", _typmod(10, 2))(text)
    with pytest.raises(ValueError):
        _numeric("precise")(text)


def test_precise_handles_numbers_beyond_int_str_digit_limit() -> None:
    text = "9" * 5000 + "." + "1" * 10
    out = _numeric("precise")(text)
    assert out["scale"] == 10
    assert _decimal(out["value"], 10) == Decimal(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1.5", 1.5), ("-0.000123", -0.000123), ("NaN", "NaN"), ("Infinity", "Infinity"),
     ("-Infinity", "-Infinity"), ("1" + "0" * 400, "Infinity"), ("-1" + "0" * 400, "-Infinity")],
)  # fmt: skip
def test_double(text: str, expected: Any) -> None:
    out = _numeric("double")(text)
    assert out == expected
    orjson.dumps(out)  # JSON can carry it


def test_string_mode_passes_numeric_text_through() -> None:
    exact = "12345678901234567890.1234567890"
    assert _numeric("string")(exact) == exact


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("$1,234.56", "1234.56"),  # lc_monetary C / en_US
        ("-$1.00", "-1.00"),
        ("($1.00)", "-1.00"),  # locales that put negatives in parentheses
        ("$0.00", "0.00"),
        ("-$92,233,720,368,547,758.08", "-92233720368547758.08"),  # money's minimum
        ("1.234,56 €", "1234.56"),  # de_DE
        ("-1.234,56 €", "-1234.56"),
        ("12,35 €", "12.35"),
        ("1 234,56 ₽", "1234.56"),  # narrow spaces as thousands separators
        ("kr. 1.234,56", "1234.56"),  # a symbol with a dot
        ("CHF 1'234.56", "1234.56"),
        ("￥1,235", "1235"),  # no fraction digits
        ("￥1,234,567", "1234567"),
    ],
)
def test_money_is_an_exact_decimal_whatever_the_locale(text: str, expected: str) -> None:
    assert money_text(text) == expected
    assert converter_for(v.MONEY_OID)(text) == expected


def test_money_under_double_and_precise() -> None:
    assert converter_for(v.MONEY_OID, -1, "double")("-$1,234.56") == -1234.56
    assert converter_for(v.MONEY_OID, -1, "precise")("$1,234.56") == "AeJA"


def test_money_array() -> None:
    assert converter_for(v.MONEY_ARRAY_OID)('{"$1.00","-$2.50",NULL}') == ["1.00", "-2.50", None]


def test_numeric_scale_from_type_modifier() -> None:
    assert numeric_scale(-1) is None
    assert numeric_scale(_typmod(10, 2)) == 2
    assert numeric_scale(_typmod(5, -2)) == -2


@given(st.decimals(allow_nan=False, allow_infinity=False, places=4,
                   min_value=Decimal("-1e30"), max_value=Decimal("1e30")))  # fmt: skip
def test_precise_round_trips(number: Decimal) -> None:
    text = f"{number:.4f}"
    assert _decimal(_numeric("precise", _typmod(40, 4))(text), 4) == Decimal(text)
    variable = _numeric("precise")(text)
    assert _decimal(variable["value"], variable["scale"]) == Decimal(text)
