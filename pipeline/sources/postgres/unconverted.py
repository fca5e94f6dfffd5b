"""Values a converter refused, published as PostgreSQL's text instead of stopping capture.

Every value in the stream is one PostgreSQL produced, so a converter that raises on it has a
gap, not bad data: skipping the row would lose a change, and raising would stop the slot for
good (the server resends the same value after every restart). The value goes out as the text
PostgreSQL printed; this tally lets the capture count it (``cdc_capture_unconverted_values_total``
by type) and logs each (table, column) once, so a gap is seen without flooding the log.
"""

from __future__ import annotations

import logging

__all__ = ["NOT_UTF8", "UnconvertedValues"]

log = logging.getLogger(__name__)

#: The type label of values whose bytes were not UTF-8.
NOT_UTF8 = "not UTF-8"


class UnconvertedValues:
    """A tally of unconverted values by type name, drained into metrics by the capture."""

    __slots__ = ("_counts", "_logged")

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}
        self._logged: set[tuple[str, str]] = set()

    def record(self, table: str, column: str, type_name: str, text: str, error: Exception) -> str:
        """Count one value; returns ``text``, the value to publish in its place."""
        self._count(type_name, 1, (table, column),
                    "%s.%s (%s): a value could not be converted and is published as "
                    "PostgreSQL's text (%s: %s); value starts %r. Logged once per column; "
                    "counted in cdc_capture_unconverted_values_total.",
                    table, column, type_name, type(error).__name__, error, text[:80])
        return text

    def replaced(self, table: str, columns: list[str], count: int) -> None:
        """Count ``count`` values whose bytes were not UTF-8 (published with U+FFFD in their
        place: see ``pgoutput.take_replaced_values`` and :mod:`.sql_ascii`), under the type
        ``not UTF-8``."""
        self._count(NOT_UTF8, count, (table, NOT_UTF8),
                    "%s: values in %s hold bytes that are not UTF-8 (a SQL_ASCII database "
                    "stores any bytes): published with U+FFFD in place of each, as Debezium "
                    "does. Logged once per table; counted in "
                    "cdc_capture_unconverted_values_total{type=%r}.",
                    table, ", ".join(columns) or "a column", NOT_UTF8)

    def _count(self, type_name: str, count: int, once_per: tuple[str, str], message: str,
               *args: object) -> None:
        """Add ``count`` under ``type_name``; log ``message`` the first time for ``once_per``."""
        self._counts[type_name] = self._counts.get(type_name, 0) + count
        if once_per not in self._logged:
            self._logged.add(once_per)
            log.warning(message, *args)

    def merge(self, counts: dict[str, int]) -> None:
        """Add counts another process drained (a parallel snapshot's readers)."""
        for type_name, count in counts.items():
            self._counts[type_name] = self._counts.get(type_name, 0) + count

    def drain(self) -> dict[str, int]:
        """The counts since the last drain, by type name."""
        counts, self._counts = self._counts, {}
        return counts
