"""values: PostgreSQL text values -> JSON-friendly Python values, by type OID.

The real server output for every type is covered by ``test_pgoutput.py::test_alltypes_*``;
these tests pin the edge cases one by one.
"""

from __future__ import annotations

import base64
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.sources.postgres import values as v
from pipeline.sources.postgres.values import ArraySyntaxError, convert, converter_for, parse_array


@pytest.mark.parametrize(
    ("oid", "text", "expected"),
    [
        (v.INT2_OID, "-32768", -32768),
        (v.INT4_OID, "2147483647", 2147483647),
        (v.INT8_OID, "-9223372036854775808", -9223372036854775808),
        (v.OID_OID, "4294967295", 4294967295),
        (v.FLOAT4_OID, "1.5", 1.5),
        (v.FLOAT8_OID, "-1.25e-10", -1.25e-10),
        (v.FLOAT8_OID, "NaN", "NaN"),
        (v.FLOAT8_OID, "Infinity", "Infinity"),
        (v.FLOAT4_OID, "-Infinity", "-Infinity"),
        (v.NUMERIC_OID, "12345678901234567890.123456789012345678901234567890",
         "12345678901234567890.123456789012345678901234567890"),
        (v.NUMERIC_OID, "1.10", "1.10"),  # trailing zero (the scale) kept
        (v.NUMERIC_OID, "NaN", "NaN"),
        (v.BOOL_OID, "t", True),
        (v.BOOL_OID, "f", False),
        (v.TEXT_OID, "multi\nline", "multi\nline"),
        (v.VARCHAR_OID, "", ""),
        (v.BPCHAR_OID, "ab   ", "ab   "),  # blank padding is part of the value
        (v.NAME_OID, "a_name", "a_name"),
        (v.CHAR_OID, "x", "x"),
        (v.DATE_OID, "2024-02-29", "2024-02-29"),
        (v.DATE_OID, "0001-01-01 BC", "0001-01-01 BC"),
        (v.DATE_OID, "infinity", "infinity"),
        (v.TIME_OID, "23:59:59.5", "23:59:59.5"),
        (v.TIMETZ_OID, "12:00:00+05:30", "12:00:00+05:30"),
        (v.UUID_OID, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
         "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
        # JSON as its exact text (Debezium's io.debezium.data.Json): nothing is lost.
        (v.JSON_OID, '{"b": 1, "a": [true, null, 2.5]}', '{"b": 1, "a": [true, null, 2.5]}'),
        (v.JSON_OID, '{"a": 1, "a": 2}', '{"a": 1, "a": 2}'),  # duplicate keys of json
        (v.JSONB_OID, '{"huge": 1e400}', '{"huge": 1e400}'),  # beyond a double
        (v.JSONB_OID, '{"n": 0.10000000000000000000001}', '{"n": 0.10000000000000000000001}'),
        (v.JSONB_OID, '"just a string"', '"just a string"'),
        (v.JSONB_OID, "[]", "[]"),
        (v.BYTEA_OID, "\\xdeadbeef00ff", base64.b64encode(b"\xde\xad\xbe\xef\x00\xff").decode()),
        (v.BYTEA_OID, "\\x", ""),
        (99999, "anything {at} all", "anything {at} all"),  # unknown OID: text unchanged
    ],
)  # fmt: skip
def test_scalar_conversion(oid: int, text: str, expected: Any) -> None:
    assert convert(oid, text) == expected
    assert converter_for(oid)(text) == expected


def test_float_results_are_real_floats() -> None:
    assert type(convert(v.FLOAT8_OID, "3")) is float


def test_null_stays_none() -> None:
    assert convert(v.INT4_OID, None) is None


def test_unknown_oid_converter_returns_text_unchanged() -> None:
    assert converter_for(123456)("{1,2}") == "{1,2}"


def test_every_converted_value_is_json_serialisable() -> None:
    row = [
        convert(v.FLOAT8_OID, "NaN"),
        convert(v.BYTEA_OID, "\\x00"),
        convert(v.TIMESTAMPTZ_OID, "2024-01-02 03:04:05+01"),
        convert(v.NUMERIC_ARRAY_OID, "{1.5,NaN}"),
    ]
    assert orjson.loads(orjson.dumps(row)) == row


def test_bytea_escape_output_format_is_understood() -> None:
    # bytea_output = 'escape': printable bytes as is, backslash doubled, others \ooo.
    assert base64.b64decode(convert(v.BYTEA_OID, "ab\\\\c\\000\\377")) == b"ab\\c\x00\xff"


class TestTimestamp:
    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("2024-02-29 12:34:56", "2024-02-29T12:34:56"),
            ("2024-02-29 12:34:56.789", "2024-02-29T12:34:56.789"),
            ("infinity", "infinity"),
            ("-infinity", "-infinity"),
            ("0044-03-15 12:00:00 BC", "0044-03-15 12:00:00 BC"),
        ],
    )
    def test_timestamp(self, text: str, expected: str) -> None:
        assert convert(v.TIMESTAMP_OID, text) == expected

    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("2024-01-02 03:04:05+00", "2024-01-02T03:04:05Z"),
            ("2024-01-02 03:04:05.123+05:30", "2024-01-01T21:34:05.123Z"),
            ("2024-06-30 23:59:59.999999+13", "2024-06-30T10:59:59.999999Z"),
            ("2024-12-31 22:00:00-03", "2025-01-01T01:00:00Z"),  # crosses a year
            ("2024-03-01 00:30:00-09:30", "2024-03-01T10:00:00Z"),
            ("2024-02-29 23:00:00-01", "2024-03-01T00:00:00Z"),  # leap day boundary
            ("1900-01-01 05:21:10+05:21:10", "1900-01-01T00:00:00Z"),  # local mean time
            ("0044-03-15 17:53:28+05:53:28 BC", "0044-03-15 17:53:28+05:53:28 BC"),
            ("infinity", "infinity"),
            ("-infinity", "-infinity"),
            # UTC would fall in year 0: not representable, kept as sent.
            ("0001-01-01 00:00:00+05:30", "0001-01-01 00:00:00+05:30"),
            ("10000-01-01 00:00:00+00", "10000-01-01T00:00:00Z"),
            ("10000-01-01 00:00:00+05:30", "10000-01-01 00:00:00+05:30"),
        ],
    )
    def test_timestamptz_is_normalised_to_utc(self, text: str, expected: str) -> None:
        assert convert(v.TIMESTAMPTZ_OID, text) == expected


class TestArrays:
    @pytest.mark.parametrize(
        ("oid", "text", "expected"),
        [
            (v.INT4_ARRAY_OID, "{1,2,3}", [1, 2, 3]),
            (v.INT4_ARRAY_OID, "{}", []),
            (v.INT4_ARRAY_OID, "{NULL,1,null}", [None, 1, None]),
            (v.INT4_ARRAY_OID, "{ 1 , 2 }", [1, 2]),
            (v.INT8_ARRAY_OID, "{{1,2},{3,4}}", [[1, 2], [3, 4]]),
            (v.INT8_ARRAY_OID, "{{{1,2}},{{3,4}}}", [[[1, 2]], [[3, 4]]]),
            (v.INT8_ARRAY_OID, "[0:1]={5,6}", [5, 6]),  # explicit bounds dropped
            (v.INT4_ARRAY_OID, "[1:1][-2:-1]={{7,8}}", [[7, 8]]),
            (v.TEXT_ARRAY_OID, '{"",NULL,"NULL"}', ["", None, "NULL"]),
            (v.TEXT_ARRAY_OID, '{"a,b","c d","{e}"}', ["a,b", "c d", "{e}"]),
            (v.TEXT_ARRAY_OID, r'{"say \"hi\"","back\\slash"}', ['say "hi"', "back\\slash"]),
            (v.TEXT_ARRAY_OID, '{"multi\nline"}', ["multi\nline"]),
            (v.TEXT_ARRAY_OID, r"{a\,b,c}", ["a,b", "c"]),  # escapes in unquoted elements
            (v.VARCHAR_ARRAY_OID, '{{a,"b c"},{NULL,"\\""}}', [["a", "b c"], [None, '"']]),
            (v.NUMERIC_ARRAY_OID, "{1.10,NaN,-0.5}", ["1.10", "NaN", "-0.5"]),
            (v.BOOL_ARRAY_OID, "{t,f,NULL}", [True, False, None]),
            (v.FLOAT8_ARRAY_OID, "{1.5,NaN,Infinity,-Infinity}",
             [1.5, "NaN", "Infinity", "-Infinity"]),
            (v.UUID_ARRAY_OID, "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}",
             ["a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"]),
            (v.JSONB_ARRAY_OID, r'{"{\"a\": 1}","[1, \"x\"]",NULL,null}',
             ['{"a": 1}', '[1, "x"]', None, None]),
            (v.TIMESTAMPTZ_ARRAY_OID, '{"2024-01-02 08:34:05+05:30",infinity}',
             ["2024-01-02T03:04:05Z", "infinity"]),
            (v.DATE_ARRAY_OID, "{2024-01-01,infinity}", ["2024-01-01", "infinity"]),
            (v.BYTEA_ARRAY_OID, r'{"\\x0102"}', [base64.b64encode(b"\x01\x02").decode()]),
        ],
    )  # fmt: skip
    def test_array_conversion(self, oid: int, text: str, expected: list[Any]) -> None:
        assert convert(oid, text) == expected

    @pytest.mark.parametrize(
        "text",
        ["", "1,2", "{1,2", "{1,2}}", "{1,,2}", "{,1}", "{1,}", '{"a"b}', '{"unterminated}',
         "{1}x", "{{1}", "{a}{b}", "[0:1]{1}", "{ }x"],
    )  # fmt: skip
    def test_malformed_arrays_raise(self, text: str) -> None:
        with pytest.raises(ArraySyntaxError):
            parse_array(text)

    def test_array_syntax_error_is_a_value_error(self) -> None:
        assert issubclass(ArraySyntaxError, ValueError)


# --- property tests: a small array-literal encoder, as PostgreSQL's array_out would quote ---


def _quote(item: str | None) -> str:
    if item is None:
        return "NULL"
    escaped = item.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def _encode(items: list[Any]) -> str:
    parts = [_encode(x) if isinstance(x, list) else _quote(x) for x in items]
    return "{" + ",".join(parts) + "}"


_TEXT = st.text(max_size=12)  # hypothesis never generates lone surrogates in text()


@given(st.lists(st.one_of(st.none(), _TEXT), max_size=8))
def test_text_array_roundtrip(items: list[str | None]) -> None:
    assert convert(v.TEXT_ARRAY_OID, _encode(items)) == items


@given(st.lists(st.lists(st.one_of(st.none(), _TEXT), min_size=1, max_size=4), min_size=1,
                max_size=4))  # fmt: skip
def test_two_dimensional_text_array_roundtrip(rows: list[list[str | None]]) -> None:
    assert convert(v.TEXT_ARRAY_OID, _encode(rows)) == rows


@given(st.lists(st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1)), max_size=10))
def test_int8_array_roundtrip(items: list[int | None]) -> None:
    text = "{" + ",".join("NULL" if x is None else str(x) for x in items) + "}"
    assert convert(v.INT8_ARRAY_OID, text) == items


# --- types the catalog resolves (domains, enums, hstore), bit(1) ---------------------------


def test_bit1_is_a_boolean_and_longer_bit_strings_stay_text() -> None:
    assert converter_for(v.BIT_OID, 1)("1") is True
    assert converter_for(v.BIT_OID, 1)("0") is False
    assert converter_for(v.BIT_ARRAY_OID, 1)("{1,0,NULL}") == [True, False, None]
    assert converter_for(v.BIT_OID, 8)("10100101") == "10100101"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('"a"=>"1", "b"=>NULL', {"a": "1", "b": None}),
        ("", {}),
        ('"say \\"hi\\""=>"back\\\\slash", "=>"=>", "', {'say "hi"': "back\\slash", "=>": ", "}),
        ('"\U0001f418"=>""', {"\U0001f418": ""}),
    ],
)
def test_hstore_is_a_json_object_text(text: str, expected: dict[str, Any]) -> None:
    out = v.hstore_json(text)
    assert isinstance(out, str)
    assert orjson.loads(out) == expected


def test_malformed_hstore_raises() -> None:
    with pytest.raises(ValueError, match="malformed hstore"):
        v.hstore_json('"a"=>"1" "b"')


def test_resolved_types_choose_their_converters() -> None:
    from pipeline.sources.postgres.types import PgType
    from pipeline.sources.postgres.values import converter_for_type

    int_domain = PgType("builtin", v.INT4_OID, "positive_int")
    tstz_domain = PgType("builtin", v.TIMESTAMPTZ_OID, "event_time")
    flag_domain = PgType("builtin", v.BIT_OID, "flag", typmod=1)
    enum = PgType("enum", 70001, "mood")
    hstore = PgType("hstore", 70002, "hstore")
    assert converter_for_type(int_domain)("42") == 42
    assert converter_for_type(tstz_domain)("2024-01-02 03:04:05+01") == "2024-01-02T02:04:05Z"
    assert converter_for_type(flag_domain)("1") is True
    assert converter_for_type(enum)("happy") == "happy"
    assert converter_for_type(PgType("array", 70003, "_mood", element=enum))(
        '{happy,"very sad",NULL}') == ["happy", "very sad", None]
    assert converter_for_type(PgType("array", 70004, "_positive_int", element=int_domain))(
        "{1,2}") == [1, 2]
    assert orjson.loads(converter_for_type(hstore)('"k"=>"v"')) == {"k": "v"}
    # The column's modifier applies to an array's elements (numeric(10,2)[], bit(1)[]).
    bits = PgType("array", v.BIT_ARRAY_OID, "_bit", element=PgType.builtin(v.BIT_OID))
    assert converter_for_type(bits, 1)("{1}") == [True]
    assert converter_for_type(PgType("text", 70005, "point3d"))("(1,2,3)") == "(1,2,3)"


def test_unicode_spaces_belong_to_array_elements() -> None:
    # PostgreSQL quotes array elements only for ASCII white space: '{ }' with a no-break
    # space is a one-element array (found by tests/property/test_values_from_postgres.py).
    assert convert(v.TEXT_ARRAY_OID, "{\xa0}") == ["\xa0"]
    assert convert(v.TEXT_ARRAY_OID, "{a\u2003,\u3000b}") == ["a\u2003", "\u3000b"]
    assert convert(v.TEXT_ARRAY_OID, '{"x",\xa0y}') == ["x", "\xa0y"]


def test_arrays_of_a_type_with_another_delimiter_split_on_it() -> None:
    """``box`` separates array elements with ``;`` (its ``typdelim``), and its values hold
    commas unquoted: split on commas, one box became four strings."""
    from pipeline.sources.postgres.types import PgType
    from pipeline.sources.postgres.values import converter_for_type

    boxes = PgType("array", 1020, "_box", element=PgType("builtin", 603, "box", delimiter=";"))
    convert = converter_for_type(boxes)
    assert convert("{(1,1),(0,0);(3,3),(2,2)}") == ["(1,1),(0,0)", "(3,3),(2,2)"]
    assert convert("{(1,1),(0,0)}") == ["(1,1),(0,0)"]
    assert convert('{{(1,1),(0,0);"(3,3),(2,2)"};{NULL;(5,5),(4,4)}}') == [
        ["(1,1),(0,0)", "(3,3),(2,2)"], [None, "(5,5),(4,4)"]]
    assert convert("{}") == []
