"""JSON read and written again without changing a number.

orjson (and any parser into doubles) rounds ``12345678901234567.89`` and a 30-digit id, and
refuses ``1e400``, all valid JSON that PostgreSQL's ``jsonb`` and Python's ``json`` accept.
An outbox event is the application's message: the relay must publish its numbers as written.
:func:`loads` parses with orjson when that is exact (no number became a double) and otherwise
keeps each number's text in an :class:`ExactNumber`, which :func:`dumps` writes back verbatim.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

from pipeline.errors import BadOutboxEvent

#: Integers orjson keeps as integers (beyond these it silently gives a double).
_INT_RANGE = range(-(2**63), 2**64)


class ExactNumber:
    """A JSON number kept as its text; ``str()`` gives the text."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return f"ExactNumber({self.text!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ExactNumber) and other.text == self.text

    def __hash__(self) -> int:
        return hash(self.text)


def loads(text: str | bytes, what: str) -> Any:
    """``text`` parsed; BadOutboxEvent naming ``what`` if it is not JSON (NaN and Infinity
    are not, nor nesting deeper than the parsers go)."""
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        return _exact(text, what, exc)
    return _exact(text, what, None) if _has_float(value) else value


def dumps(value: Any, what: str) -> bytes:
    """``value`` as JSON, an :class:`ExactNumber` written as its text; BadOutboxEvent naming
    ``what`` for what JSON cannot hold (a lone surrogate in a string)."""
    try:
        return orjson.dumps(value, default=_fragment)
    except orjson.JSONEncodeError as exc:
        raise BadOutboxEvent(f"{what} cannot be written as JSON ({exc})") from exc


def _exact(text: str | bytes, what: str, error: Exception | None) -> Any:
    try:
        value = json.loads(text, parse_float=ExactNumber, parse_int=_int,
                           parse_constant=_not_json)
        _no_lone_surrogate(value)
    except (ValueError, RecursionError) as exc:  # RecursionError: nested too deep
        raise BadOutboxEvent(f"{what} is not valid JSON ({error or exc}): "
                             f"{text[:200]!r}") from exc
    return value


def _no_lone_surrogate(value: Any) -> None:
    """ValueError for a string holding half a surrogate pair (``"\ud800"``, which Python's
    parser reads and UTF-8 cannot hold); iterative, as deep as the parse went."""
    stack = [value]
    while stack:
        item = stack.pop()
        if type(item) is str:
            item.encode()  # UnicodeEncodeError is a ValueError
        elif type(item) is dict:
            stack.extend(item)
            stack.extend(item.values())
        elif type(item) is list:
            stack.extend(item)


def _int(text: str) -> int | ExactNumber:
    if len(text) > 20:  # beyond 64 bits (and int() refuses more than 4300 digits)
        return ExactNumber(text)
    number = int(text)
    return number if number in _INT_RANGE else ExactNumber(text)


def _not_json(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _fragment(value: Any) -> orjson.Fragment:
    if isinstance(value, ExactNumber):
        return orjson.Fragment(value.text)
    raise TypeError(f"{type(value).__name__} is not JSON")


def _has_float(value: Any) -> bool:
    """Whether a parsed value holds a double anywhere (iterative: orjson parses 1024
    levels, deeper than Python recursion goes)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if type(item) is float:
            return True
        if type(item) is dict:
            stack.extend(item.values())
        elif type(item) is list:
            stack.extend(item)
    return False
