"""Fixing dead letters before a replay: ``cdc dlq replay --transform module:function``.

A record that was dead-lettered for its content comes back as a new dead letter when it is
replayed unchanged. A transform corrects each letter's value on its way out:

    # fixes.py
    def qty_as_number(value, letter):
        value["after"]["qty"] = int(value["after"]["qty"].rstrip(" pcs"))
        return value

``value`` is the letter's value parsed as JSON (the change event), or its bytes when it is
not JSON; ``letter`` the :class:`~pipeline.dlq.DeadLetter` (headers: why it failed). It
returns the corrected value (JSON-encodable, or bytes sent as they are), or None to leave
that letter out of this replay. The key is never changed: it chooses the partition and the
row, and a different key would be another row.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from typing import Any

import orjson

from pipeline.errors import ConfigError

#: ``function(value, letter) -> corrected value | None``.
Transform = Callable[[Any, Any], Any]


class TransformFailed(Exception):
    """The transform raised, or returned what cannot be a record value."""


def load_transform(path: str) -> Transform:
    """The function ``module:function`` names (importable from the current directory)."""
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise ConfigError("--transform", f"'{path}' is not of the form module:function")
    try:
        function = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError("--transform", f"cannot import '{path}': {exc}") from exc
    if not callable(function):
        raise ConfigError("--transform", f"'{path}' is not a function")
    return function  # type: ignore[no-any-return]


def transformed(transform: Transform, value: bytes | None, letter: Any) -> bytes | None:
    """The letter's new value bytes; None when the transform leaves it out. Raises
    TransformFailed with the reason (the letter is reported, not sent)."""
    try:
        parsed: Any = value if value is None else json.loads(value)
    except (ValueError, UnicodeDecodeError):
        parsed = value
    try:
        result = transform(parsed, letter)
    except Exception as exc:  # noqa: BLE001 - user code: any failure is that letter's
        raise TransformFailed(f"the transform raised {type(exc).__name__}: {exc}") from exc
    if result is None:
        return None
    if isinstance(result, bytes | bytearray):
        return bytes(result)
    try:
        return orjson.dumps(result)
    except TypeError as exc:
        raise TransformFailed(f"the transform returned {type(result).__name__}, which is "
                              f"not JSON: {exc}") from exc
