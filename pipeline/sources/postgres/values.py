"""Convert PostgreSQL text-format values (as pgoutput sends them) to JSON-friendly Python values.

``convert(type_oid, text)`` converts one value; on a hot path, look the converter up once per
column with ``converter_for(type_oid)`` and call it per row. Converters take the non-NULL text
of one value (NULL is ``None`` before conversion and stays ``None``).

The mapping follows Debezium's choices where it has one:

======================================  ===================================================
int2, int4, int8, oid                   ``int``
float4, float8                          ``float``; ``"NaN"``, ``"Infinity"``, ``"-Infinity"``
                                        stay strings (JSON has no such numbers)
numeric, money                          by decimal.handling.mode (:mod:`.decimals`); by default
                                        ``str``: numeric exactly as sent, money as ``"1234.56"``
bool, bit(1)                            ``True`` / ``False``
text, varchar, bpchar, name, "char"     ``str`` (bpchar keeps its blank padding)
timestamp                               ``"YYYY-MM-DDTHH:MM:SS[.ffffff]"`` (no zone)
timestamptz                             same, converted to UTC, with a ``"Z"`` suffix
date, time, timetz, uuid                ``str`` as sent
json, jsonb                             ``str``: the exact JSON text (io.debezium.data.Json)
hstore                                  ``str``: a JSON object of the pairs (hstore.handling.mode
                                        =json), e.g. ``{"a":"1","b":null}``
bytea                                   base64 ``str`` (binary.handling.mode=base64)
enums, domains                          the label; a domain as its base type
arrays of any of these                  (nested) ``list``; the element conversion applies
anything else                           ``str`` as sent (bit(n>1), interval, composite, range...)
======================================  ===================================================

Dates and times that Python's ``datetime`` cannot hold (``infinity``, ``-infinity``, BC years,
years past 9999) are passed through as PostgreSQL's text.

JSON values stay text because no parser holds every JSON PostgreSQL accepts: numbers of any
size and precision (``1e400``), duplicate keys and key order of ``json``.

Converters for user-defined types (domains, enums, hstore) need the catalog:
:func:`converter_for_type` takes what :class:`pipeline.sources.postgres.types.TypeResolver`
found. A converter raises ``ValueError`` (or another exception) only on text it has no form
for; the capture then publishes the text (:mod:`.unconverted`).

The text depends on the settings of the session that *decodes* (the replication connection):
this module expects ``DateStyle`` ISO (the default), ``bytea_output`` hex (the default;
the escape format is understood too) and any ``TimeZone``.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any, Final

import orjson

from pipeline.sources.postgres.decimals import DecimalMode, money_converter, numeric_converter
from pipeline.sources.postgres.types import PgType

__all__ = [
    "ARRAY_ELEMENT_OIDS",
    "BUILTIN_TYPE_OIDS",
    "ArraySyntaxError",
    "Converter",
    "convert",
    "converter_for",
    "converter_for_type",
    "hstore_json",
    "parse_array",
]

#: A converter: the text of one non-NULL value -> a JSON-friendly value.
Converter = Callable[[str], Any]

# --- type OIDs (fixed for built-in types; pg_type.dat) --------------------------------------------
BOOL_OID: Final = 16
BYTEA_OID: Final = 17
CHAR_OID: Final = 18
NAME_OID: Final = 19
INT8_OID: Final = 20
INT2_OID: Final = 21
INT4_OID: Final = 23
TEXT_OID: Final = 25
OID_OID: Final = 26
JSON_OID: Final = 114
FLOAT4_OID: Final = 700
FLOAT8_OID: Final = 701
MONEY_OID: Final = 790
BPCHAR_OID: Final = 1042
VARCHAR_OID: Final = 1043
DATE_OID: Final = 1082
TIME_OID: Final = 1083
TIMESTAMP_OID: Final = 1114
TIMESTAMPTZ_OID: Final = 1184
TIMETZ_OID: Final = 1266
BIT_OID: Final = 1560
NUMERIC_OID: Final = 1700
UUID_OID: Final = 2950
JSONB_OID: Final = 3802

JSON_ARRAY_OID: Final = 199
MONEY_ARRAY_OID: Final = 791
BOOL_ARRAY_OID: Final = 1000
BYTEA_ARRAY_OID: Final = 1001
CHAR_ARRAY_OID: Final = 1002
NAME_ARRAY_OID: Final = 1003
INT2_ARRAY_OID: Final = 1005
INT4_ARRAY_OID: Final = 1007
TEXT_ARRAY_OID: Final = 1009
BPCHAR_ARRAY_OID: Final = 1014
VARCHAR_ARRAY_OID: Final = 1015
INT8_ARRAY_OID: Final = 1016
FLOAT4_ARRAY_OID: Final = 1021
FLOAT8_ARRAY_OID: Final = 1022
OID_ARRAY_OID: Final = 1028
TIMESTAMP_ARRAY_OID: Final = 1115
DATE_ARRAY_OID: Final = 1182
TIME_ARRAY_OID: Final = 1183
TIMESTAMPTZ_ARRAY_OID: Final = 1185
NUMERIC_ARRAY_OID: Final = 1231
TIMETZ_ARRAY_OID: Final = 1270
BIT_ARRAY_OID: Final = 1561
UUID_ARRAY_OID: Final = 2951
JSONB_ARRAY_OID: Final = 3807

#: Array type OID -> element type OID, for every array type converted element-wise.
ARRAY_ELEMENT_OIDS: Final[dict[int, int]] = {
    JSON_ARRAY_OID: JSON_OID,
    MONEY_ARRAY_OID: MONEY_OID,
    BIT_ARRAY_OID: BIT_OID,
    BOOL_ARRAY_OID: BOOL_OID,
    BYTEA_ARRAY_OID: BYTEA_OID,
    CHAR_ARRAY_OID: CHAR_OID,
    NAME_ARRAY_OID: NAME_OID,
    INT2_ARRAY_OID: INT2_OID,
    INT4_ARRAY_OID: INT4_OID,
    TEXT_ARRAY_OID: TEXT_OID,
    BPCHAR_ARRAY_OID: BPCHAR_OID,
    VARCHAR_ARRAY_OID: VARCHAR_OID,
    INT8_ARRAY_OID: INT8_OID,
    FLOAT4_ARRAY_OID: FLOAT4_OID,
    FLOAT8_ARRAY_OID: FLOAT8_OID,
    OID_ARRAY_OID: OID_OID,
    TIMESTAMP_ARRAY_OID: TIMESTAMP_OID,
    DATE_ARRAY_OID: DATE_OID,
    TIME_ARRAY_OID: TIME_OID,
    TIMESTAMPTZ_ARRAY_OID: TIMESTAMPTZ_OID,
    NUMERIC_ARRAY_OID: NUMERIC_OID,
    TIMETZ_ARRAY_OID: TIMETZ_OID,
    UUID_ARRAY_OID: UUID_OID,
    JSONB_ARRAY_OID: JSONB_OID,
}

#: ``pg_catalog`` type name -> OID for the scalar types converted here. A pgoutput ``Type``
#: message for a domain names its *base* type (namespace ``''`` = pg_catalog), so a domain
#: column can be converted like its base type with ``BUILTIN_TYPE_OIDS[type_msg.name]``.
BUILTIN_TYPE_OIDS: Final[dict[str, int]] = {
    "bool": BOOL_OID,
    "bytea": BYTEA_OID,
    "char": CHAR_OID,
    "name": NAME_OID,
    "int8": INT8_OID,
    "int2": INT2_OID,
    "int4": INT4_OID,
    "text": TEXT_OID,
    "oid": OID_OID,
    "json": JSON_OID,
    "float4": FLOAT4_OID,
    "float8": FLOAT8_OID,
    "bpchar": BPCHAR_OID,
    "varchar": VARCHAR_OID,
    "date": DATE_OID,
    "time": TIME_OID,
    "timestamp": TIMESTAMP_OID,
    "timestamptz": TIMESTAMPTZ_OID,
    "timetz": TIMETZ_OID,
    "numeric": NUMERIC_OID,
    "uuid": UUID_OID,
    "jsonb": JSONB_OID,
    "money": MONEY_OID,
    "bit": BIT_OID,
}


class ArraySyntaxError(ValueError):
    """An array value's text is not valid PostgreSQL array syntax."""


# --- scalar converters ----------------------------------------------------------------------------


def _identity(text: str) -> str:
    return text


# PostgreSQL's spelling of the float specials; JSON cannot carry them as numbers.
_FLOAT_SPECIALS: Final = frozenset({"NaN", "Infinity", "-Infinity"})


def _float(text: str) -> float | str:
    if text in _FLOAT_SPECIALS:
        return text
    return float(text)


def _bool(text: str) -> bool:
    return text == "t"


def _bit1(text: str) -> bool:
    """``bit(1)``: Debezium's BOOLEAN."""
    if text not in ("0", "1"):
        raise ValueError(f"not a bit(1) value: {text!r}")
    return text == "1"


# One hstore pair: a quoted key (keys are always quoted on output), then a quoted value or NULL.
_HSTORE_PAIR: Final = re.compile(
    r'\s*"((?:[^"\\]|\\.)*)"\s*=>\s*(?:"((?:[^"\\]|\\.)*)"|(NULL))\s*(?:,|$)', re.DOTALL
)


def hstore_json(text: str) -> str:
    """``"a"=>"1", "b"=>NULL`` -> ``{"a":"1","b":null}`` (a JSON object as text, like
    Debezium's hstore.handling.mode=json)."""
    pairs: dict[str, str | None] = {}
    pos = 0
    while pos < len(text):
        match = _HSTORE_PAIR.match(text, pos)
        if match is None or match.end() == pos:
            raise ValueError(f"malformed hstore text at offset {pos}")
        key, value, null = match.group(1, 2, 3)
        pairs[_BACKSLASH_ESCAPE.sub(r"\1", key)] = (
            None if null else _BACKSLASH_ESCAPE.sub(r"\1", value))
        pos = match.end()
    return orjson.dumps(pairs).decode()


def _bytea(text: str) -> str:
    if text.startswith("\\x"):
        return base64.b64encode(bytes.fromhex(text[2:])).decode("ascii")
    return base64.b64encode(_bytea_escape_format(text)).decode("ascii")


_BYTEA_ESCAPE: Final = re.compile(rb"\\(\\|[0-3][0-7]{2})")


def _bytea_escape_format(text: str) -> bytes:
    """Decode bytea_output='escape' text: ``\\\\`` is a backslash, ``\\nnn`` an octal byte."""
    raw = text.encode("latin-1")  # every non-escaped byte is printable ASCII

    def unescape(match: re.Match[bytes]) -> bytes:
        code = match.group(1)
        return b"\\" if code == b"\\" else bytes([int(code, 8)])

    return _BYTEA_ESCAPE.sub(unescape, raw)


def _passes_through(text: str) -> bool:
    """True for date/time text datetime cannot hold: +-infinity and BC dates."""
    return not text[:1].isdigit() or text.endswith(" BC")


def _timestamp(text: str) -> str:
    if _passes_through(text):
        return text
    return text.replace(" ", "T", 1)


def _timestamptz(text: str) -> str:
    """``2024-01-02 03:04:05.123+05:30`` -> ``2024-01-01T21:34:05.123Z``.

    The fraction is kept as sent (offsets are whole seconds, so only the rest shifts).
    """
    if text[-3:] == "+00" and len(text) > 19 and text[4] == "-":
        # Capture pins TimeZone=UTC: a 4-digit-year UTC value is only re-punctuated.
        return f"{text[:10]}T{text[11:-3]}Z"
    if _passes_through(text):
        return text
    # The zone offset is the last sign; the date's dashes all come before it.
    sign_at = max(text.rfind("+"), text.rfind("-"))
    local, offset = text[:sign_at], text[sign_at:]
    if offset == "+00":
        return local.replace(" ", "T", 1) + "Z"
    whole, dot, fraction = local.partition(".")
    try:
        utc = datetime.fromisoformat(whole) - _offset(offset)
    except (ValueError, OverflowError):
        return text  # a 5-digit year, or UTC falls outside years 1-9999
    return f"{utc.isoformat()}{dot}{fraction}Z"


@lru_cache(maxsize=256)
def _offset(text: str) -> timedelta:
    """``+05:30`` / ``-03`` / ``+05:53:28`` (local mean time) -> timedelta."""
    sign = -1 if text[0] == "-" else 1
    parts = [int(p) for p in text[1:].split(":")]
    parts += [0] * (3 - len(parts))
    return sign * timedelta(hours=parts[0], minutes=parts[1], seconds=parts[2])


_SCALAR_CONVERTERS: Final[dict[int, Converter]] = {
    INT2_OID: int,
    INT4_OID: int,
    INT8_OID: int,
    OID_OID: int,
    FLOAT4_OID: _float,
    FLOAT8_OID: _float,
    NUMERIC_OID: _identity,
    BOOL_OID: _bool,
    TEXT_OID: _identity,
    VARCHAR_OID: _identity,
    BPCHAR_OID: _identity,
    NAME_OID: _identity,
    CHAR_OID: _identity,
    TIMESTAMP_OID: _timestamp,
    TIMESTAMPTZ_OID: _timestamptz,
    DATE_OID: _identity,
    TIME_OID: _identity,
    TIMETZ_OID: _identity,
    UUID_OID: _identity,
    JSON_OID: _identity,
    JSONB_OID: _identity,
    BYTEA_OID: _bytea,
    MONEY_OID: money_converter("string"),
    BIT_OID: _identity,  # bit(1) is a boolean, known from the column's type modifier
}

# --- arrays -----------------------------------------------------------------------------------

# One token of array text. Quoted elements may contain anything but an unescaped quote;
# unquoted ones stop at a delimiter, a brace or a quote. Backslash escapes any character in both.
_ARRAY_TOKEN: Final = re.compile(
    r"""
      (?P<open>\{)
    | (?P<close>\})
    | (?P<comma>,)
    | "(?P<quoted>(?:[^"\\]|\\.)*)"
    | (?P<bare>(?:[^{},"\\ \t\n\r\v\f]|\\.)(?:[^{},"\\]|\\.)*)
    | (?P<space>[ \t\n\r\v\f]+)
    """,
    re.VERBOSE | re.DOTALL,
)
_BACKSLASH_ESCAPE: Final = re.compile(r"\\(.)", re.DOTALL)
# Only ASCII white space separates elements (array_in's array_isspace): PostgreSQL does not
# quote a no-break space or other Unicode spaces, so they belong to the element.
_ARRAY_SPACE: Final = " \t\n\r\v\f"
# Arrays whose lower bound is not 1 are prefixed with their bounds: "[0:1]={5,6}".
_DIMENSIONS: Final = re.compile(r"^(?:\[-?\d+:-?\d+\])+=")


def parse_array(text: str, element: Converter = _identity, delimiter: str = ",") -> list[Any]:
    """Parse PostgreSQL array text (``{1,2}``, ``{{a,"b c"},{NULL,"\\""}}``) into nested lists.

    Unquoted ``NULL`` (any case) becomes ``None``; every other element is passed, unescaped,
    to ``element``. Explicit bounds (``[0:1]={5,6}``) are dropped. ``delimiter``: the element
    type's ``typdelim`` (``;`` for ``box``, whose values hold commas unquoted). Raises
    :class:`ArraySyntaxError` for malformed text.
    """
    body = _DIMENSIONS.sub("", text, count=1)
    # Fast path: one dimension, nothing quoted or escaped (most int/numeric/uuid arrays).
    if body.startswith("{") and body.endswith("}") and not any(c in body[1:-1] for c in '{}"\\'):
        inner = body[1:-1]
        if not inner.strip(_ARRAY_SPACE):
            return []
        return [_bare_element(item.strip(_ARRAY_SPACE), element)
                for item in inner.split(delimiter)]
    return _parse_nested(text, body, element, delimiter)


def _bare_element(item: str, element: Converter) -> Any:
    if not item:
        raise ArraySyntaxError("empty unquoted array element")
    if len(item) == 4 and item.upper() == "NULL":
        return None
    return element(item)


def _parse_nested(text: str, body: str, element: Converter, delimiter: str = ",") -> list[Any]:
    """The general parser: a token loop with a stack of open lists."""
    stack: list[list[Any]] = []
    result: list[Any] | None = None
    expect_item = True  # after '{' or ',': an element or '{' may come next
    pos = 0
    tokens = _ARRAY_TOKEN if delimiter == "," else _array_token(delimiter)
    for match in tokens.finditer(body):
        if match.start() != pos:
            break  # an unmatched character; reported below
        pos = match.end()
        kind = match.lastgroup
        if kind == "space":
            continue
        if result is not None:
            raise ArraySyntaxError(f"junk after the closing brace in array {text!r}")
        if kind == "open":
            if not expect_item:
                raise ArraySyntaxError(f"unexpected '{{' in array {text!r}")
            new: list[Any] = []
            if stack:
                stack[-1].append(new)
            stack.append(new)
        elif not stack:
            raise ArraySyntaxError(f"array must start with '{{': {text!r}")
        elif kind == "close":
            closed = stack.pop()
            if expect_item and closed:
                raise ArraySyntaxError(f"missing element before '}}' in array {text!r}")
            expect_item = False
            if not stack:
                result = closed
            continue
        elif kind == "comma":
            if expect_item:
                raise ArraySyntaxError(f"missing element before ',' in array {text!r}")
            expect_item = True
            continue
        else:
            if not expect_item:
                raise ArraySyntaxError(f"missing ',' between elements in array {text!r}")
            stack[-1].append(_token_value(match, element))
        expect_item = kind == "open"
    if pos != len(body) or result is None:
        raise ArraySyntaxError(f"malformed array text at offset {pos}: {text!r}")
    return result


def _token_value(match: re.Match[str], element: Converter) -> Any:
    quoted = match.group("quoted")
    if quoted is not None:
        return element(_BACKSLASH_ESCAPE.sub(r"\1", quoted))
    bare = match.group("bare").rstrip(_ARRAY_SPACE)
    if len(bare) == 4 and bare.upper() == "NULL":
        return None
    return element(_BACKSLASH_ESCAPE.sub(r"\1", bare))


@lru_cache(maxsize=8)
def _array_token(delimiter: str) -> re.Pattern[str]:
    """``_ARRAY_TOKEN`` for an element type whose delimiter is not a comma."""
    d = re.escape(delimiter)
    pattern = _ARRAY_TOKEN.pattern.replace("(?P<comma>,)", f"(?P<comma>{d})")
    pattern = pattern.replace("[^{},", "[^{}" + d)
    return re.compile(pattern, re.VERBOSE | re.DOTALL)


def _array_converter(element: Converter, delimiter: str = ",") -> Converter:
    def convert_array(text: str) -> list[Any]:
        return parse_array(text, element, delimiter)

    return convert_array


# --- public lookup ------------------------------------------------------------------------------


def _scalar(type_oid: int, typmod: int, decimal_mode: DecimalMode) -> Converter:
    if type_oid == NUMERIC_OID:
        return numeric_converter(decimal_mode, typmod) or _identity
    if type_oid == MONEY_OID:
        return money_converter(decimal_mode)
    if type_oid == BIT_OID and typmod == 1:
        return _bit1
    return _SCALAR_CONVERTERS.get(type_oid, _identity)


def converter_for(
    type_oid: int, typmod: int = -1, decimal_mode: DecimalMode = "string"
) -> Converter:
    """The converter for a built-in ``type_oid`` with type modifier ``typmod`` (a column's
    ``atttypmod``; for an array, its element's); unknown types get one that returns the text
    unchanged.

    Look it up once per column (e.g. when a Relation message arrives) and reuse it per row.
    """
    element = ARRAY_ELEMENT_OIDS.get(type_oid)
    if element is not None:
        return _array_converter(_scalar(element, typmod, decimal_mode))
    return _scalar(type_oid, typmod, decimal_mode)


def converter_for_type(
    pg_type: PgType, typmod: int = -1, decimal_mode: DecimalMode = "string"
) -> Converter:
    """The converter for a column of the resolved type ``pg_type`` (see
    :class:`~pipeline.sources.postgres.types.TypeResolver`); ``typmod`` is the column's."""
    if pg_type.typmod != -1:
        typmod = pg_type.typmod  # a domain's modifier (the column's is -1)
    if pg_type.kind == "builtin":
        return converter_for(pg_type.oid, typmod, decimal_mode)
    if pg_type.kind == "hstore":
        return hstore_json
    if pg_type.kind == "array" and pg_type.element is not None:
        return _array_converter(converter_for_type(pg_type.element, typmod, decimal_mode),
                                pg_type.element.delimiter)
    return _identity  # an enum's label; the text of composite, range and other types


def convert(type_oid: int, text: str | None) -> Any:
    """Convert one value's text of type ``type_oid``; ``None`` (SQL NULL) stays ``None``.

    Raises ``ValueError`` only for text PostgreSQL would not produce for that type.
    """
    if text is None:
        return None
    return converter_for(type_oid)(text)
