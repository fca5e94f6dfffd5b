"""Every change made to mysql-replication's behaviour, in one place, checked before use.

mysql-replication reads the binlog protocol for the MySQL source. In a few places its
reading stops capture on values the server holds, or gets them wrong; :func:`install`
replaces exactly those methods:

* text columns: decoded with the codec MySQL's character set really is, never raising
  (``RowsEvent.charset_to_encoding``; the codecs are in :mod:`.charsets`);
* ENUM and SET labels: kept as bytes until the table map names their column's character
  set, then decoded with it (``TableMapEvent._read_type_values``, ``_sync_column_info``);
  the library decoded them as UTF-8 and made a ``latin1`` ``'é'`` label ``""``;
* a rows event's row images: read in one pass from its bytes for the common column types
  (:mod:`.rows`: the library's per-value reading was more than half of the source's CPU),
  with the same values;
* an invalid DATE or old-format DATETIME (``'2024-02-30'`` under ``ALLOW_INVALID_DATES``):
  read as None, as the library reads a zero date, instead of the ``ValueError`` that
  stopped capture at that rows event on every restart (``RowsEvent.__read_date``,
  ``__read_datetime``). The row's ``none_sources`` then says "out of date range", so the
  value is null (nullable column) or the epoch (NOT NULL), as a snapshot reads it.

These are private methods and may change in any release, so :func:`check` refuses a
version the source was not tested with, or one missing a method it replaces, with the
remedy, before capture starts (as ``agents.faust_internals`` does for Faust).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from importlib.metadata import version as installed_version
from typing import Any

from pymysqlreplication.row_event import RowsEvent, TableMapEvent

from pipeline.errors import ConfigError
from pipeline.sources.mysql import charsets, rows

#: mysql-replication releases these fixes were written and tested against.
TESTED_VERSIONS = ("1.0.17",)

#: (class, attribute) pairs replaced by :func:`install`.
REQUIRED: tuple[tuple[type, str], ...] = (
    (RowsEvent, "charset_to_encoding"),
    (RowsEvent, "_RowsEvent__read_date"),
    (RowsEvent, "_RowsEvent__read_datetime"),
    (RowsEvent, "_fetch_rows"),
    (RowsEvent, "rows"),  # a property returning self.__rows, which _fetch_rows sets
    (TableMapEvent, "_read_type_values"),
    (TableMapEvent, "_sync_column_info"),
)


#: The library's own methods, taken once (``install`` may run again).
_LIBRARY: dict[str, Any] = {
    "read_date": getattr(RowsEvent, "_RowsEvent__read_date", None),
    "read_datetime": getattr(RowsEvent, "_RowsEvent__read_datetime", None),
    "sync_column_info": getattr(TableMapEvent, "_sync_column_info", None),
    "fetch_rows": getattr(RowsEvent, "_fetch_rows", None),
}


class LibraryIncompatible(ConfigError):
    """The installed mysql-replication is not one the MySQL source can read safely with."""

    def __init__(self, message: str) -> None:
        super().__init__("capture.source", message)


def check(version: str | None = None,
          required: Iterable[tuple[type, str]] = REQUIRED) -> None:
    """Raise :class:`LibraryIncompatible` unless ``version`` (default: the installed one)
    is tested and every replaced attribute exists."""
    version = version or installed_version("mysql-replication")
    remedy = f"install the tested one: pip install 'mysql-replication=={TESTED_VERSIONS[-1]}'"
    if version not in TESTED_VERSIONS:
        raise LibraryIncompatible(
            f"mysql-replication {version} is installed; the MySQL source replaces private "
            f"methods of {', '.join(TESTED_VERSIONS)} only "
            f"(pipeline/sources/mysql/library_fixes.py): {remedy}")
    missing = [f"{owner.__qualname__}.{name}" for owner, name in required
               if not hasattr(owner, name)]
    if missing:
        raise LibraryIncompatible(
            f"mysql-replication {version} has no {', '.join(missing)}, which the MySQL "
            f"source replaces: {remedy}")


def install() -> None:
    """Check the library, then replace its methods (idempotent)."""
    check()
    RowsEvent.charset_to_encoding = staticmethod(charsets.encoding)  # type: ignore[method-assign]
    RowsEvent._RowsEvent__read_date = _none_if_invalid(  # type: ignore[attr-defined]
        _LIBRARY["read_date"])
    RowsEvent._RowsEvent__read_datetime = _none_if_invalid(  # type: ignore[attr-defined]
        _LIBRARY["read_datetime"])
    TableMapEvent._read_type_values = _raw_labels  # type: ignore[method-assign]
    TableMapEvent._sync_column_info = _sync_decoding_labels  # type: ignore[method-assign]
    RowsEvent._fetch_rows = _fetch_rows  # type: ignore[method-assign]


def _fetch_rows(self: Any) -> None:
    rows.fetch_rows(self, _LIBRARY["fetch_rows"])


def _none_if_invalid(read: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def read_or_none(self: Any) -> Any:
        try:
            return read(self)
        except ValueError:  # a day the month lacks (the bytes are read by then)
            return None

    return read_or_none


def _raw_labels(self: Any, length: int) -> list[list[bytes]]:
    """``TableMapEvent._read_type_values``: each ENUM/SET column's labels, as bytes (the
    metadata names their character set after them)."""
    packet = self.packet
    result: list[list[bytes]] = []
    read_until = packet.read_bytes + length
    while packet.read_bytes < read_until:
        count = packet.read_length_coded_binary()
        result.append([packet.read_variable_length_string() for _ in range(count)])
    return result


def _sync_decoding_labels(self: Any) -> None:
    """``TableMapEvent._sync_column_info``, then each ENUM/SET column's labels decoded
    with its character set (the library has set it on the column by then)."""
    _LIBRARY["sync_column_info"](self)
    for column in self.columns:
        for attr in ("enum_values", "set_values"):
            labels = getattr(column, attr, None)
            if labels and any(isinstance(label, bytes) for label in labels):
                codec = charsets.label_codec(str(getattr(column, "character_set_name", "")
                                                 or ""))
                setattr(column, attr, [label.decode(codec) if isinstance(label, bytes)
                                       else label for label in labels])
