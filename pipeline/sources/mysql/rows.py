"""A rows event's row images read from its bytes in one pass, for the common column types.

mysql-replication reads every value through a chain of packet methods (a ``struct.unpack``
per call, a buffer slice per read, a bitmap test and a dict store per column): more than
half of the MySQL source's CPU while it drains a backlog. :func:`fetch_rows` takes the rest
of the event's bytes at once and reads them with ``unpack_from`` at an offset, through a
:class:`Plan` made once per table map. The values are the library's own (same types, same
``none_sources``), so everything after it is unchanged; a table with a column type the plan
does not read (TIME, BIT, ENUM, SET, JSON, GEOMETRY, old-format temporals, text without a
character set), a partial JSON update or a row image that leaves columns out
(``binlog_row_image`` MINIMAL) is read by the library as before.
"""

from __future__ import annotations

import codecs
import datetime
import decimal
import struct
from collections.abc import Callable
from typing import Any

from pymysqlreplication.constants import FIELD_TYPE

from pipeline.sources.mysql import charsets

# The plan's value kinds (a column's parameter in brackets).
_STRUCT = 0  # a fixed-size number (its struct.Struct)
_TEXT = 1  # length-prefixed text ((length bytes, codec))
_BYTES = 2  # length-prefixed bytes (length bytes)
_I24, _U24, _YEAR, _DECIMAL, _DATE, _DATETIME2, _TIMESTAMP2 = range(3, 10)

#: Integer column types: their struct formats, (signed, unsigned).
_INTS = {
    FIELD_TYPE.TINY: ("<b", "<B"), FIELD_TYPE.SHORT: ("<h", "<H"),
    FIELD_TYPE.LONG: ("<i", "<I"), FIELD_TYPE.LONGLONG: ("<q", "<Q"),
}
_BE32 = struct.Struct(">i")
_BE40 = struct.Struct(">IB")
#: Bytes of a DECIMAL's leftover digits (fewer than 9), by how many there are.
_DIGIT_BYTES = (0, 1, 1, 2, 2, 3, 3, 4, 4, 4)
_NONE_DATE = "out of date range"
_NONE_DATETIME2 = "out of datetime2 range"

Row = dict[str, Any]


class Plan:
    """How to read one table map's row images: per column its name, kind and parameter."""

    __slots__ = ("columns", "null_bytes")

    def __init__(self, columns: list[tuple[str, int, Any]]) -> None:
        self.columns = columns
        self.null_bytes = (len(columns) + 7) // 8


def plan_for(table: Any) -> Plan | None:
    """The plan for a table map's columns, made once and kept on it; None if a column is of
    a type (or has no name) the plan does not read."""
    try:
        plan: Plan | None = table._cdc_rows_plan
    except AttributeError:
        plan = table._cdc_rows_plan = _make_plan(table.columns)
    return plan


def _make_plan(columns: list[Any]) -> Plan | None:
    out: list[tuple[str, int, Any]] = []
    for column in columns:
        name = column.name
        if not name:
            return None
        kind = column.type
        if kind in _INTS:
            out.append((name, _STRUCT, struct.Struct(_INTS[kind][1 if column.unsigned else 0])))
        elif kind == FIELD_TYPE.INT24:
            out.append((name, _U24 if column.unsigned else _I24, None))
        elif kind == FIELD_TYPE.FLOAT:
            out.append((name, _STRUCT, struct.Struct("<f")))
        elif kind == FIELD_TYPE.DOUBLE:
            out.append((name, _STRUCT, struct.Struct("<d")))
        elif kind == FIELD_TYPE.YEAR:
            out.append((name, _YEAR, None))
        elif kind == FIELD_TYPE.NEWDECIMAL:
            out.append((name, _DECIMAL, _decimal_layout(column.precision, column.decimals)))
        elif kind in (FIELD_TYPE.VARCHAR, FIELD_TYPE.STRING, FIELD_TYPE.BLOB):
            size = column.length_size if kind == FIELD_TYPE.BLOB else (
                2 if column.max_length > 255 else 1)
            if size not in (1, 2, 3, 4) or column.character_set_name is None:
                return None
            codec = charsets.encoding(column.character_set_name)
            try:
                codecs.lookup(codec)
            except LookupError:  # binary, or a set Python has no codec for: the bytes
                out.append((name, _BYTES, size))
            else:
                out.append((name, _TEXT, (size, codec)))
        elif kind == FIELD_TYPE.DATE:
            out.append((name, _DATE, None))
        elif kind == FIELD_TYPE.DATETIME2:
            out.append((name, _DATETIME2, _fsp(column.fsp)))
        elif kind == FIELD_TYPE.TIMESTAMP2:
            out.append((name, _TIMESTAMP2, _fsp(column.fsp)))
        else:
            return None
    return Plan(out)


def _fsp(fsp: int) -> tuple[int, int, int]:
    """A fractional-seconds precision as (bytes, divisor, multiplier) of the library's
    reading: the digits stored are rounded up to an even count."""
    nbytes = (fsp + 1) // 2
    return nbytes, (10 if fsp % 2 else 1), 10 ** (6 - fsp) if nbytes else 0


def _decimal_layout(precision: int, scale: int) -> tuple[int, int, int, int, int]:
    """(leading bytes, whole integral groups, whole fraction groups, trailing bytes,
    trailing digits) of a DECIMAL(precision, scale) in the binlog."""
    integral = precision - scale
    return (_DIGIT_BYTES[integral % 9], integral // 9, scale // 9,
            _DIGIT_BYTES[scale % 9], scale % 9)


def fetch_rows(event: Any, library_fetch: Callable[[Any], None]) -> None:
    """``RowsEvent._fetch_rows``: the event's rows by its table map's plan, or by the
    library where the plan does not read them."""
    if not event.complete:
        event._RowsEvent__rows = []
        return
    table = event.table_map[event.table_id]
    plan = plan_for(table)
    update = hasattr(event, "columns_present_bitmap2")
    count = len(table.columns)
    if (plan is None or event.event_type == _PARTIAL_UPDATE
            or event.number_of_columns != count
            or not _all_present(event.columns_present_bitmap, count)
            or (update and not _all_present(event.columns_present_bitmap2, count))):
        library_fetch(event)
        return
    packet = event.packet
    data = packet.read(event.event_size - packet.read_bytes)
    event._RowsEvent__rows = read_rows(plan, data, update)


_PARTIAL_UPDATE = 39  # PARTIAL_UPDATE_ROWS_EVENT (MySQL 8's partial JSON updates)


def _all_present(bitmap: bytes, count: int) -> bool:
    """Whether a row image's column bitmap names every one of ``count`` columns."""
    mask = (1 << count) - 1
    return int.from_bytes(bitmap, "little") & mask == mask


def read_rows(plan: Plan, data: bytes, update: bool) -> list[Row]:
    """Every row image in ``data``, as the library's rows of a write/delete (``values``,
    ``none_sources``) or an update (``before_values`` ... ``after_none_sources``)."""
    rows: list[Row] = []
    offset = 0
    end = len(data)
    while offset < end:
        values, nones, offset = _read_image(plan, data, offset)
        if update:
            after, after_nones, offset = _read_image(plan, data, offset)
            rows.append({"before_values": values, "before_none_sources": nones,
                         "after_values": after, "after_none_sources": after_nones})
        else:
            rows.append({"values": values, "none_sources": nones})
    return rows


def _read_image(plan: Plan, data: bytes, offset: int) -> tuple[Row, dict[str, str], int]:
    nulls = data[offset:offset + plan.null_bytes]
    offset += plan.null_bytes
    values: Row = {}
    nones: dict[str, str] = {}
    for i, (name, kind, param) in enumerate(plan.columns):
        if nulls[i >> 3] & (1 << (i & 7)):
            values[name] = None
            nones[name] = "null"
            continue
        value: Any
        if kind == _STRUCT:
            value = param.unpack_from(data, offset)[0]
            offset += param.size
        elif kind <= _BYTES:  # _TEXT, _BYTES
            size, codec = param if kind == _TEXT else (param, None)
            if size == 1:
                length = data[offset]
            elif size == 2:
                length = data[offset] | data[offset + 1] << 8
            else:
                length = int.from_bytes(data[offset:offset + size], "little")
            offset += size
            raw = data[offset:offset + length]
            offset += length
            # the library's b"".decode("binary") gives "" without looking the codec up
            value = raw.decode(codec) if codec is not None else raw if length else ""
        elif kind <= _U24:  # _I24, _U24
            value = data[offset] | data[offset + 1] << 8 | data[offset + 2] << 16
            if kind == _I24 and value >= 0x800000:
                value -= 0x1000000
            offset += 3
        elif kind == _DECIMAL:
            value, offset = _read_decimal(data, offset, param)
        elif kind == _DATE:
            stored = data[offset] | data[offset + 1] << 8 | data[offset + 2] << 16
            offset += 3
            value = _date(stored)
            if value is None:
                nones[name] = _NONE_DATE
        elif kind == _DATETIME2:
            high, low = _BE40.unpack_from(data, offset)
            offset += 5
            micros, offset = _read_fraction(data, offset, param)
            value = _datetime2(low + (high << 8), micros)
            if value is None:
                nones[name] = _NONE_DATETIME2
        elif kind == _TIMESTAMP2:
            seconds = _BE32.unpack_from(data, offset)[0]
            offset += 4
            micros, offset = _read_fraction(data, offset, param)
            value = datetime.datetime.utcfromtimestamp(seconds)
            if micros > 0:
                value = value.replace(microsecond=micros)
        else:  # _YEAR
            value = data[offset] + 1900
            offset += 1
        values[name] = value
    return values, nones, offset


def _read_fraction(data: bytes, offset: int, param: tuple[int, int, int]) -> tuple[int, int]:
    """Microseconds of a fractional part stored big-endian and signed, as the library
    reads it."""
    nbytes, divisor, multiplier = param
    if nbytes == 0:
        return 0, offset
    value = int.from_bytes(data[offset:offset + nbytes], "big", signed=True)
    if divisor != 1:
        value = int(value / divisor)
    return value * multiplier, offset + nbytes


def _date(stored: int) -> datetime.date | None:
    year, month, day = stored >> 9 & 0x7FFF, stored >> 5 & 0xF, stored & 0x1F
    if stored == 0 or year == 0 or month == 0 or day == 0:
        return None
    try:
        return datetime.date(year, month, day)
    except ValueError:  # a day the month lacks (ALLOW_INVALID_DATES): as a zero date
        return None


def _datetime2(packed: int, micros: int) -> datetime.datetime | None:
    year_month = packed >> 22 & 0x1FFFF
    try:
        value = datetime.datetime(year_month // 13, year_month % 13, packed >> 17 & 0x1F,
                                  packed >> 12 & 0x1F, packed >> 6 & 0x3F, packed & 0x3F)
    except ValueError:  # a zero or invalid date: the library reads None
        return None
    return value.replace(microsecond=micros) if micros > 0 else value


def _read_decimal(data: bytes, offset: int,
                  layout: tuple[int, int, int, int, int]) -> tuple[decimal.Decimal, int]:
    """A DECIMAL in MySQL's binary form: groups of 9 digits in 4 bytes big-endian, the
    leftover digits in fewer, the sign in the top bit (a negative value has every bit
    inverted)."""
    lead, whole_int, whole_frac, trail, trail_digits = layout
    buf = bytearray(data[offset:offset + lead + 4 * (whole_int + whole_frac) + trail])
    negative = not buf[0] & 0x80
    buf[0] ^= 0x80
    if negative:
        buf = bytearray(b ^ 0xFF for b in buf)
    parts = ["-" if negative else ""]
    pos = 0
    if lead:
        parts.append(str(int.from_bytes(buf[pos:pos + lead], "big")))
        pos += lead
    for _ in range(whole_int):
        parts.append(f"{int.from_bytes(buf[pos:pos + 4], 'big'):09d}")
        pos += 4
    parts.append(".")
    for _ in range(whole_frac):
        parts.append(f"{int.from_bytes(buf[pos:pos + 4], 'big'):09d}")
        pos += 4
    if trail:
        parts.append(f"{int.from_bytes(buf[pos:pos + trail], 'big'):0{trail_digits}d}")
        pos += trail
    return decimal.Decimal("".join(parts)), offset + pos
