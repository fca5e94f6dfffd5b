"""An invalid DATE in the binlog read as the zero date it stands for, not raised.

With ``sql_mode`` ``ALLOW_INVALID_DATES`` a DATE column holds days a calendar lacks
(``'2024-02-30'``). mysql-replication 1.0.17 builds a ``datetime.date`` of it without the
guard its DATETIME reader has, so the ``ValueError`` stopped capture at that rows event on
every restart. :func:`install` makes it read such a value as None, as it reads a zero date
and an invalid DATETIME; the row's ``none_sources`` then says "out of date range", and the
value is null (nullable column) or the epoch (NOT NULL), as a snapshot reads the same row.
"""

from __future__ import annotations

from typing import Any

from pymysqlreplication.row_event import RowsEvent

_LIBRARY_READ_DATE = RowsEvent._RowsEvent__read_date  # type: ignore[attr-defined]


def _read_date(self: Any) -> Any:
    try:
        return _LIBRARY_READ_DATE(self)
    except ValueError:  # a day the month lacks (the bytes are read by then)
        return None


def install() -> None:
    """Make mysql-replication read an invalid DATE as None (idempotent)."""
    RowsEvent._RowsEvent__read_date = _read_date  # type: ignore[attr-defined]
