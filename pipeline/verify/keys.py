"""A document's key as PostgreSQL prints it: how ``cdc verify`` finds the row a document
came from.

A document holds its key as capture published it (:mod:`pipeline.sources.postgres.values`):
a ``bytea`` key as base64, a ``bool`` as ``true``, a ``precise`` numeric as base64 of its
unscaled value. Looking its row up needs the text PostgreSQL reads, so each key column gets
the inverse of its converter. Every text found is checked by converting it again: only a text
that publishes exactly the document's value is used, so a wrong inverse can only leave a
document unchecked, never make its row look absent.

Some published forms do not determine the value: ``decimal.handling.mode=double`` (many
numerics, one double), a key hashed by ``postgres.columns``, ``money`` (its text follows
``lc_monetary``), arrays and ``hstore``. A document keyed by one of those is *unchecked*:
verify cannot tell whether its row exists, so it never reports it as extra and ``--repair``
never deletes it.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from typing import Any, Final

from pipeline.sources.postgres.decimals import numeric_scale
from pipeline.sources.postgres.envelope import TableShape
from pipeline.sources.postgres.types import PgType
from pipeline.sources.postgres.values import (
    BIT_OID,
    BOOL_OID,
    BYTEA_OID,
    FLOAT4_OID,
    FLOAT8_OID,
    INT2_OID,
    INT4_OID,
    INT8_OID,
    MONEY_OID,
    NUMERIC_OID,
    OID_OID,
)

#: A document whose key columns are absent or NULL: no row of the table can produce it.
NOT_A_ROW: Final = "not a row"

#: Published value -> PostgreSQL's text; None when the value does not determine the text.
Inverse = Callable[[Any], str | None]

_INTEGERS: Final = frozenset({INT2_OID, INT4_OID, INT8_OID, OID_OID})
_FLOAT_SPECIALS: Final = frozenset({"NaN", "Infinity", "-Infinity"})


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _integer(value: Any) -> str | None:
    if isinstance(value, bool):
        return None
    return str(value) if isinstance(value, int) else None


def _float(value: Any) -> str | None:
    if isinstance(value, float) and not isinstance(value, bool):
        return repr(value)  # the shortest text that reads back as the same double
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value if value in _FLOAT_SPECIALS else None


def _bool(value: Any) -> str | None:
    return {True: "t", False: "f"}.get(value) if isinstance(value, bool) else None


def _bit1(value: Any) -> str | None:
    return {True: "1", False: "0"}.get(value) if isinstance(value, bool) else None


def _bytea(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    try:
        return "\\x" + base64.b64decode(value, validate=True).hex()
    except (binascii.Error, ValueError):
        return None


def _unscaled(encoded: str, scale: int) -> str | None:
    """Base64 of a two's-complement unscaled value (Kafka Connect's Decimal) -> its text."""
    if encoded in _FLOAT_SPECIALS:
        return encoded  # published as text: it has no precise form
    try:
        raw = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        return None
    unscaled = int.from_bytes(raw, "big", signed=True)
    sign, digits = "-" if unscaled < 0 else "", str(abs(unscaled))
    if scale <= 0:  # numeric(p, -s) (PostgreSQL 15) rounds to tens, hundreds...
        return sign + digits + "0" * -scale
    digits = digits.rjust(scale + 1, "0")
    return f"{sign}{digits[:-scale]}.{digits[-scale:]}"


def _precise(scale: int | None) -> Inverse:
    def inverse(value: Any) -> str | None:
        if scale is not None:
            return _unscaled(value, scale) if isinstance(value, str) else None
        if isinstance(value, dict) and isinstance(value.get("scale"), int) \
                and isinstance(value.get("value"), str):
            return _unscaled(value["value"], value["scale"])
        return value if value in _FLOAT_SPECIALS else None

    return inverse


def _inverse(pg_type: PgType, typmod: int, decimal_mode: str) -> Inverse | None:
    """The inverse for a column of ``pg_type`` (its modifier ``typmod``); None when its
    published values do not determine PostgreSQL's text."""
    if pg_type.typmod != -1:
        typmod = pg_type.typmod
    if pg_type.kind in ("array", "hstore"):
        return None
    if pg_type.kind != "builtin":
        return _text  # an enum's label, or the text of a composite, range...
    oid = pg_type.oid
    if oid in _INTEGERS:
        return _integer
    if oid in (FLOAT4_OID, FLOAT8_OID):
        return _float
    if oid == BOOL_OID:
        return _bool
    if oid == BIT_OID and typmod == 1:
        return _bit1
    if oid == BYTEA_OID:
        return _bytea
    if oid == MONEY_OID:
        return None
    if oid == NUMERIC_OID:
        if decimal_mode == "double":
            return None
        if decimal_mode == "precise":
            return _precise(numeric_scale(typmod))
    return _text  # text types, uuid, dates and times (PostgreSQL reads its ISO text back)


class DocumentKeys:
    """Turns documents of one table back into the key texts of their rows."""

    def __init__(self, shape: TableShape, types: list[PgType], typmods: list[int],
                 decimal_mode: str) -> None:
        hashed = {name for name, _ in shape.policy.hashes} if shape.policy else set()
        self.key_names = shape.key_names
        self._columns: list[tuple[str, Inverse | None, Callable[[str], Any] | None]] = []
        for name in shape.key_names:
            at = shape.names.index(name)
            inverse = None if name in hashed else _inverse(types[at], typmods[at],
                                                           decimal_mode)
            self._columns.append((name, inverse, shape.converters[at]))
        #: Why documents of this table may be unchecked (None: every key type inverts).
        self.unchecked_because = next(
            (f"its key column {name} is hashed (postgres.columns)" if name in hashed
             else f"its key column {name} is a {types[shape.names.index(name)].name}, whose "
             "published value does not determine the row's"
             for name, inverse, _ in self._columns if inverse is None), None)

    def of(self, source: dict[str, Any]) -> list[str] | str | None:
        """The key texts of the row ``source`` (a document) came from; ``NOT_A_ROW`` when
        it lacks a key column; None when its key cannot be turned back (unchecked)."""
        texts: list[str] = []
        for name, inverse, converter in self._columns:
            value = source.get(name)
            if value is None:
                return NOT_A_ROW
            text = inverse(value) if inverse is not None else None
            if text is None or not _publishes(converter, text, value):
                return None
            texts.append(text)
        return texts


def _publishes(converter: Callable[[str], Any] | None, text: str, value: Any) -> bool:
    """Whether a row holding ``text`` publishes ``value``: the converter applied again, or
    the text itself where capture passes it through (or the converter refuses it)."""
    if converter is None:
        return text == value
    try:
        again = converter(text)
    except Exception:  # noqa: BLE001 - a refused value is published as its text
        again = text
    return bool(again == value and type(again) is type(value))
