"""Values a converter refused, published as PostgreSQL's text instead of stopping capture.

Every value in the stream is one PostgreSQL produced, so a converter that raises on it has a
gap, not bad data: skipping the row would lose a change, and raising would stop the slot for
good (the server resends the same value after every restart). The value goes out as the text
PostgreSQL printed; this tally lets the capture count it (``cdc_capture_unconverted_values_total``
by type) and logs each (table, column) once, so a gap is seen without flooding the log.
"""

from __future__ import annotations

import logging

__all__ = ["UnconvertedValues"]

log = logging.getLogger(__name__)


class UnconvertedValues:
    """A tally of unconverted values by type name, drained into metrics by the capture."""

    __slots__ = ("_counts", "_logged")

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}
        self._logged: set[tuple[str, str]] = set()

    def record(self, table: str, column: str, type_name: str, text: str, error: Exception) -> str:
        """Count one value; returns ``text``, the value to publish in its place."""
        self._counts[type_name] = self._counts.get(type_name, 0) + 1
        if (table, column) not in self._logged:
            self._logged.add((table, column))
            log.warning(
                "%s.%s (%s): a value could not be converted and is published as PostgreSQL's "
                "text (%s: %s); value starts %r. Logged once per column; counted in "
                "cdc_capture_unconverted_values_total.",
                table, column, type_name, type(error).__name__, error, text[:80],
            )
        return text

    def merge(self, counts: dict[str, int]) -> None:
        """Add counts another process drained (a parallel snapshot's readers)."""
        for type_name, count in counts.items():
            self._counts[type_name] = self._counts.get(type_name, 0) + count

    def drain(self) -> dict[str, int]:
        """The counts since the last drain, by type name."""
        counts, self._counts = self._counts, {}
        return counts
