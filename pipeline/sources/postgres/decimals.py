"""``numeric`` and ``money`` values under Debezium's ``decimal.handling.mode``.

============  =================================================================================
``string``    the exact decimal text: ``"1234.56"`` (the default; numeric text passes through)
``double``    a JSON number (``float``); ``NaN`` and values beyond a double's range as the
              strings ``"NaN"``, ``"Infinity"``, ``"-Infinity"`` (what Kafka's JsonConverter
              writes for Java's special doubles)
``precise``   Kafka Connect's ``Decimal`` as JsonConverter writes it without schemas: base64 of
              the unscaled value's big-endian two's-complement bytes (shortest form, as Java's
              ``BigInteger.toByteArray``), the scale being the column's. A ``numeric`` without
              a declared scale becomes Debezium's ``VariableScaleDecimal`` struct,
              ``{"scale": <digits after the point>, "value": <base64 as above>}``
============  =================================================================================

``NaN`` and ``±Infinity`` have no ``precise`` form: Debezium stops with an error there; here
the converter raises ``ValueError``, so the value is published as PostgreSQL's text and counted
as unconverted (see :class:`pipeline.sources.postgres.unconverted.UnconvertedValues`).

``money`` text depends on ``lc_monetary`` (``$1,234.56``, ``-1.234,56 €``, ``(¥1,235)``); it
is read as a decimal whatever the locale printed, keeping the fraction digits it printed (so
the scale is the locale's, 2 for most, like Debezium's default ``money.fraction.digits``).
One ambiguity: a single separator followed by exactly three digits and nothing else
(``1,235`` / ``1.235``) is read as a thousands separator, right for locales without fraction
digits and wrong for the few with three (such as ``ar_KW``).
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from typing import Any, Final, Literal

__all__ = ["DECIMAL_MODES", "DecimalMode", "money_converter", "money_text", "numeric_converter"]

DecimalMode = Literal["string", "double", "precise"]
DECIMAL_MODES: Final[tuple[DecimalMode, ...]] = ("string", "double", "precise")

_SPECIALS: Final = frozenset({"NaN", "Infinity", "-Infinity"})


def numeric_converter(mode: DecimalMode, typmod: int = -1) -> Callable[[str], Any] | None:
    """The converter for a ``numeric`` column with ``atttypmod`` ``typmod``; None for
    ``string`` (the text is already exact: pass it through)."""
    if mode == "string":
        return None
    if mode == "double":
        return to_double
    scale = numeric_scale(typmod)
    if scale is None:
        return to_variable_scale
    return _fixed_scale(scale)


def money_converter(mode: DecimalMode) -> Callable[[str], Any]:
    """The converter for a ``money`` column."""
    if mode == "string":
        return money_text
    if mode == "double":
        return lambda text: to_double(money_text(text))

    def money_precise(text: str) -> str:
        exact = money_text(text)
        _, _, fraction = exact.partition(".")
        return _fixed_scale(len(fraction))(exact)

    return money_precise


def numeric_scale(typmod: int) -> int | None:
    """The declared scale of ``numeric(p, s)`` from its type modifier; None without one.

    The modifier is ``((p << 16) | s) + 4``, the scale an 11-bit signed field (PostgreSQL 15
    allows negative scales)."""
    if typmod < 4:
        return None
    return (((typmod - 4) & 0x7FF) ^ 1024) - 1024


def to_double(text: str) -> float | str:
    if text in _SPECIALS:
        return text
    value = float(text)
    if value in (float("inf"), float("-inf")):  # beyond a double: JSON has no such number
        return "Infinity" if value > 0 else "-Infinity"
    return value


def to_variable_scale(text: str) -> dict[str, Any]:
    unscaled, scale = _unscaled(text)
    return {"scale": scale, "value": _twos_complement_base64(unscaled)}


def _fixed_scale(scale: int) -> Callable[[str], str]:
    def to_precise(text: str) -> str:
        unscaled, text_scale = _unscaled(text)
        if text_scale < scale:
            unscaled *= 10 ** (scale - text_scale)
        elif text_scale > scale:
            unscaled, rest = divmod(unscaled, 10 ** (text_scale - scale))
            if rest:
                raise ValueError(f"{text!r} has more digits than scale {scale}")
        return _twos_complement_base64(unscaled)

    return to_precise


def _unscaled(text: str) -> tuple[int, int]:
    """``"-12.30"`` -> ``(-1230, 2)``. Raises ValueError for NaN/Infinity and non-numbers."""
    try:
        number = Decimal(text)
    except InvalidOperation:
        raise ValueError(f"not a decimal number: {text!r}") from None
    sign, digits, exponent = number.as_tuple()
    if not isinstance(exponent, int):  # 'n', 'N', 'F': NaN and Infinity
        raise ValueError(f"{text} has no exact decimal form (decimal.handling.mode=precise)")
    # int(Decimal) converts digit by digit, without int(str)'s 4300-digit limit.
    unscaled = int(Decimal((sign, digits, 0)))
    if exponent > 0:
        return unscaled * 10**exponent, 0
    return unscaled, -exponent


def _twos_complement_base64(n: int) -> str:
    """Big-endian two's complement in as few bytes as hold the sign (0 -> one zero byte)."""
    size = (n + (n < 0)).bit_length() // 8 + 1
    return base64.b64encode(n.to_bytes(size, "big", signed=True)).decode("ascii")


_NOT_AMOUNT: Final = re.compile(r"[^0-9.,]")


def money_text(text: str) -> str:
    """``$1,234.56`` / ``-1.234,56 €`` / ``($1.00)`` -> ``"1234.56"`` / ``"-1234.56"`` /
    ``"-1.00"``: the amount as an exact decimal string, whatever ``lc_monetary`` printed."""
    negative = "-" in text or "(" in text
    body = _NOT_AMOUNT.sub("", text).strip(".,")  # symbols such as "kr." may carry a dot
    if not body or not body[0].isdigit():
        raise ValueError(f"not a money amount: {text!r}")
    point = max(body.rfind("."), body.rfind(","))
    whole, fraction = body, ""
    if point >= 0:
        mark = body[point]
        other = "," if mark == "." else "."
        after = body[point + 1:]
        is_decimal = other in body or (body.count(mark) == 1 and len(after) != 3)
        if is_decimal:
            whole, fraction = body[:point], after
    whole = whole.replace(".", "").replace(",", "")
    amount = f"{whole}.{fraction}" if fraction else whole
    return f"-{amount}" if negative else amount
