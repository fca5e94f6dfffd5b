"""Column values as Debezium's MySQL/MariaDB connectors write them (JsonConverter,
``decimal.handling.mode=string``, ``time.precision.mode=adaptive_time_microseconds``,
``binary.handling.mode=base64``, ``bigint.unsigned.handling.mode=precise``).

``mysql-replication`` has already parsed each value into a Python object; here it becomes
JSON-ready:

=====================  ======================================================================
column type            value
=====================  ======================================================================
integers (unsigned)    the exact integer (an unsigned BIGINT above 2^63 too)
FLOAT / DOUBLE         a number (FLOAT with the shortest text that reads back as the same
                       32-bit float, as Java prints a float)
DECIMAL                exact text, never an exponent (``"0.00"``)
CHAR/VARCHAR/TEXT      text in the column's character set (utf8mb4: any code point)
BINARY/VARBINARY/BLOB  base64 of the bytes
DATE                   days since 1970-01-01
TIME                   microseconds (may be negative: -838:59:59 .. 838:59:59)
DATETIME(0-3)          milliseconds since 1970 (the wall-clock time read as UTC)
DATETIME(4-6)          microseconds since 1970 (likewise)
TIMESTAMP(p)           ISO-8601 text in UTC with ``p`` fraction digits, ``...Z``
YEAR                   the year
ENUM                   the label
SET                    the labels in definition order, comma-separated ("" when empty)
BIT(1)                 true/false; BIT(n>1): base64 of the bits, little-endian bytes
JSON                   the JSON text (MariaDB keeps JSON as text; MySQL's binary JSON is
                       re-encoded)
GEOMETRY               ``{"wkb": base64, "srid": n}``
=====================  ======================================================================

A zero or invalid date (``0000-00-00``, or a zero TIMESTAMP) becomes null in a nullable
column and the epoch (0, or ``1970-01-01T00:00:00Z``) in a NOT NULL one, as Debezium has it.
"""

from __future__ import annotations

import base64
import datetime as dt
import struct
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import orjson
from pymysqlreplication.constants import FIELD_TYPE

Converter = Callable[[Any], Any]

_EPOCH = dt.datetime(1970, 1, 1)
_EPOCH_DATE = dt.date(1970, 1, 1)
_US = dt.timedelta(microseconds=1)


def b64(value: bytes | str) -> str:
    if isinstance(value, str):  # a binary column whose bytes decoded as text upstream
        value = value.encode()
    return base64.b64encode(value).decode()


def decimal_text(value: Decimal) -> str:
    """Plain decimal text (BigDecimal.toPlainString): ``Decimal('0E-10')`` -> 0.0000000000."""
    return format(value, "f")


def float32(value: float) -> float:
    """The shortest decimal that reads back as the same 32-bit float (0.1, not
    0.10000000149011612)."""
    packed = struct.pack("<f", value)
    for digits in range(6, 10):
        short = float(f"{value:.{digits}g}")
        if struct.pack("<f", short) == packed:
            return short
    return value


def date_days(value: dt.date) -> int:
    return (value - _EPOCH_DATE).days


def time_us(value: dt.timedelta) -> int:
    return value // _US


def time2_us(value: dt.timedelta) -> int:
    """A binlog TIME(fsp > 0) as mysql-replication 1.0.17 reads it, corrected: it negates
    the whole seconds and the fraction of a negative value apart, so ``-(S + f)`` arrives as
    ``-(S + 1) + f`` (``'-01:00:00.1'`` as -3600.9 s). The stored value is given back."""
    us = value // _US
    if us >= 0 or us % 1_000_000 == 0:
        return us
    magnitude = -us
    whole = (magnitude + 999_999) // 1_000_000  # S + 1
    return magnitude + 1_000_000 - 2 * whole * 1_000_000


def datetime_ms(value: dt.datetime) -> int:
    return (value - _EPOCH) // dt.timedelta(milliseconds=1)


def datetime_us(value: dt.datetime) -> int:
    return (value - _EPOCH) // _US


def timestamp_text(fsp: int) -> Converter:
    def convert(value: dt.datetime) -> str:
        text = value.strftime("%Y-%m-%dT%H:%M:%S")
        if fsp:
            text += "." + f"{value.microsecond:06d}"[:fsp]
        return text + "Z"
    return convert


def set_text(labels: tuple[str, ...]) -> Converter:
    def convert(value: set[str] | None) -> str:
        chosen = value or set()
        return ",".join(label for label in labels if label in chosen)
    return convert


def bits(width: int) -> Converter:
    """The library's bit string (most significant bit first) as Debezium's bits."""
    if width == 1:
        return lambda value: value == "1"
    size = (width + 7) // 8
    return lambda value: b64(int(value, 2).to_bytes(size, "little"))


def json_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode()
    return orjson.dumps(_text_keys(value)).decode()


def _text_keys(value: Any) -> Any:
    if isinstance(value, dict):
        return {(k.decode() if isinstance(k, bytes) else k): _text_keys(v)
                for k, v in value.items()}
    if isinstance(value, list):
        return [_text_keys(v) for v in value]
    if isinstance(value, bytes):
        return value.decode()
    return value


def geometry(value: bytes) -> dict[str, Any]:
    """MySQL's internal geometry: a 4-byte little-endian SRID, then WKB."""
    return {"wkb": b64(value[4:]), "srid": int.from_bytes(value[:4], "little")}


def _text_or_binary(value: Any) -> Any:
    return b64(value) if isinstance(value, bytes) else value


def year(value: int) -> int:
    """The library reads YEAR as its byte + 1900: YEAR 0000 (0) comes as 1900, a year no
    YEAR column holds (1901-2155 and 0)."""
    return 0 if value == 1900 else value


def fixed_binary(length: int) -> Converter:
    """A ``BINARY(length)`` value: the binlog leaves out its trailing zero bytes, which the
    column holds (and a snapshot reads), so they are put back, as Debezium does; else the
    row's Kafka key would differ between the two. (The library hands an all-zero value over
    as ``""``: empty bytes "decode" to text whatever the encoding.)"""
    def convert(value: Any) -> Any:
        raw = value if isinstance(value, bytes) else value.encode("latin-1")
        return b64(raw.ljust(length, b"\x00"))
    return convert


#: Why the library reads a DATE or DATETIME as None when the binlog holds a zero or invalid
#: date (its ``none_sources``; a real NULL is ``"null"``).
ZERO_DATE = frozenset({"out of date range", "out of datetime range", "out of datetime2 range"})
_TIMESTAMPS = (FIELD_TYPE.TIMESTAMP, FIELD_TYPE.TIMESTAMP2)


def _zero_timestamp_null(convert: Converter) -> Converter:
    """A nullable TIMESTAMP's zero (stored as 0 s, which no other TIMESTAMP is: they start
    at 1970-01-01 00:00:01 UTC, and the library reads it as the epoch) is null."""
    return lambda value: None if value == _EPOCH else convert(value)


def zero_date(column: Any) -> Any:
    """What a NOT NULL DATE or DATETIME column's zero date is (the epoch, converted);
    None for other columns."""
    if column.type in (FIELD_TYPE.DATE, FIELD_TYPE.NEWDATE):
        return 0
    if column.type in (FIELD_TYPE.DATETIME, FIELD_TYPE.DATETIME2):
        return 0  # milliseconds or microseconds since the epoch
    return None


def converter(column: Any, nullable: bool = True) -> Converter | None:
    """How to convert one column's values (None: the parsed value is already JSON-ready).
    ``column`` is a ``pymysqlreplication.column.Column`` of the event's table map;
    ``nullable`` as the table map's null bitmap says."""
    kind = column.type
    if kind in _TIMESTAMPS:
        convert = timestamp_text(getattr(column, "fsp", 0))
        return _zero_timestamp_null(convert) if nullable else convert
    if kind == FIELD_TYPE.NEWDECIMAL:
        return decimal_text
    if kind == FIELD_TYPE.FLOAT:
        return float32
    if kind in (FIELD_TYPE.DATE, FIELD_TYPE.NEWDATE):
        return date_days
    if kind == FIELD_TYPE.TIME2 and getattr(column, "fsp", 0) > 0:
        return time2_us
    if kind in (FIELD_TYPE.TIME, FIELD_TYPE.TIME2):
        return time_us
    if kind == FIELD_TYPE.DATETIME:
        return datetime_ms
    if kind == FIELD_TYPE.DATETIME2:
        return datetime_us if getattr(column, "fsp", 0) > 3 else datetime_ms
    if kind == FIELD_TYPE.SET:
        return set_text(tuple(column.set_values or ()))
    if kind == FIELD_TYPE.BIT:
        return bits(column.bits)
    if kind == FIELD_TYPE.JSON:
        return json_text
    if kind == FIELD_TYPE.GEOMETRY:
        return geometry
    if kind == FIELD_TYPE.YEAR:
        return year
    if kind == FIELD_TYPE.STRING and getattr(column, "character_set_name", None) == "binary":
        return fixed_binary(column.max_length)  # BINARY(n)
    if kind in (FIELD_TYPE.STRING, FIELD_TYPE.VAR_STRING, FIELD_TYPE.VARCHAR,
                FIELD_TYPE.BLOB, FIELD_TYPE.TINY_BLOB, FIELD_TYPE.MEDIUM_BLOB,
                FIELD_TYPE.LONG_BLOB):
        return _text_or_binary  # bytes for a binary character set, else text
    return None


def convert_row(values: dict[str, Any], converters: dict[str, Converter | None],
                none_sources: dict[str, str], zeros: dict[str, Any]) -> dict[str, Any]:
    """One row image: every column converted; an empty SET (which the library reads as
    None) is "", a zero date of a NOT NULL column its ``zeros`` value, a real NULL null."""
    out: dict[str, Any] = {}
    for name, value in values.items():
        convert = converters.get(name)
        if value is None:
            source = none_sources.get(name)
            out[name] = ("" if source == "empty set" else zeros.get(name)
                         if source in ZERO_DATE else None)
        elif convert is None:
            out[name] = value
        else:
            out[name] = convert(value)
    return out


# -- snapshot reads ---------------------------------------------------------------------
# A snapshot reads rows with SQL, where pymysql parses each value from the text the server
# prints (or returns the bytes of a binary column). The converters below bring those to the
# same JSON values the binlog's rows get above, so a row read and the same row streamed
# are equal. They are chosen by ``information_schema.COLUMNS.DATA_TYPE``.

#: Types read as ``CAST(column AS DOUBLE)``: the server prints a FLOAT with 6 digits, which
#: is not the stored 32-bit value; the double is, and :func:`float32` shortens it.
READ_AS_DOUBLE = frozenset({"float"})
_GEOMETRIES = frozenset({"geometry", "point", "linestring", "polygon", "multipoint",
                         "multilinestring", "multipolygon", "geometrycollection"})
_TEXT_OR_BINARY = frozenset({"char", "varchar", "tinytext", "text", "mediumtext", "longtext",
                             "binary", "varbinary", "tinyblob", "blob", "mediumblob",
                             "longblob"})


def _temporal(convert: Converter, nullable: bool, epoch: dt.date) -> Converter:
    """A zero or invalid date (which pymysql leaves as its text): null in a nullable
    column, the epoch in a NOT NULL one, as the binlog's are."""
    zero = None if nullable else convert(epoch)
    return lambda value: zero if isinstance(value, str) else convert(value)


def _read_bits(width: int) -> Converter:
    """BIT as pymysql reads it (big-endian bytes) -> as :func:`bits` writes it."""
    if width == 1:
        return lambda value: int.from_bytes(value, "big") == 1
    size = (width + 7) // 8
    return lambda value: b64(int.from_bytes(value, "big").to_bytes(size, "little"))


def read_converter(data_type: str, fsp: int, width: int,
                   nullable: bool = True) -> Converter | None:
    """How to convert a snapshot's value of a column of ``data_type`` (lower case, as in
    ``information_schema``; ``fsp`` its fraction digits, ``width`` a BIT's bits). None: the
    value pymysql returns is already what the binlog gives (integers, DOUBLE, YEAR, ENUM,
    SET as ``a,c`` in definition order, MariaDB's JSON, which is text)."""
    if data_type == "decimal":
        return decimal_text
    if data_type == "float":
        return float32
    if data_type == "date":
        return _temporal(date_days, nullable, _EPOCH_DATE)
    if data_type == "time":
        return time_us
    if data_type == "datetime":
        return _temporal(datetime_us if fsp > 3 else datetime_ms, nullable, _EPOCH)
    if data_type == "timestamp":  # read with the session's time_zone at +00:00
        return _temporal(timestamp_text(fsp), nullable, _EPOCH)
    if data_type == "bit":
        return _read_bits(width)
    if data_type == "json":  # MySQL's JSON type (MariaDB's JSON is longtext)
        return json_text
    if data_type in _GEOMETRIES:
        return geometry
    if data_type in _TEXT_OR_BINARY:
        return _text_or_binary
    return None
