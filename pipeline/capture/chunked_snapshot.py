"""What every source's one-reader initial snapshot shares: tables in order, keyset chunks,
Debezium's ``source.snapshot`` markers, and progress that never runs ahead of what was
published.

A source subclasses :class:`ChunkedSnapshot` and says how to read a chunk of one table
(:meth:`~ChunkedSnapshot._chunk`) and how to encode one read (:meth:`~ChunkedSnapshot._emit`).
Each ``read`` hands out one chunk's records and a checkpoint after them. The chunk's last row
is held back until the next read tells whether it ends its table or the whole snapshot
(``last_in_data_collection``, ``last``); while it is held, the progress saved with the
checkpoint resumes *before* it and does not count its table done, so a crash between two
reads cannot lose it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pipeline.capture.source import Checkpoint, Item
from pipeline.events import snapshot_marker
from pipeline.positions import SnapshotPosition

log = logging.getLogger(__name__)

#: One chunk as a source read it: its rows, a row's key (where the next chunk starts) and
#: what a read of a row needs to be encoded later.
Chunk = tuple[Sequence[Any], Callable[[Any], Any], Callable[[Any], Any]]


@dataclass(slots=True)
class HeldRead:
    """A chunk's last row, read and not yet handed out, waiting for its marker."""

    table: str
    read: Any  # what the source's ``_emit`` encodes
    before: Any  # the key of the row before it in its table (None: the table's first)
    first_overall: bool
    first_in_table: bool
    last_in_table: bool = False


class ChunkedSnapshot:
    """``tables`` read in order, ``chunk_size`` rows at a time; ``progress`` is what an
    interrupted snapshot saved (None: a new one)."""

    def __init__(self, tables: Sequence[str], chunk_size: int,
                 progress: dict[str, Any] | None) -> None:
        self.tables = tuple(tables)
        self.chunk_size = chunk_size
        progress = progress or {}
        self.done: list[str] = list(progress.get("done", []))
        self.table: str | None = progress.get("table")
        saved = progress.get("after")
        self.after: Any = None if saved is None else self._load_key(saved)
        #: Tables a parallel snapshot had read part of: where each resumes.
        self.partial: dict[str, Any] = {t: self._load_key(k) for t, k in
                                        (progress.get("partial") or {}).items()}
        self.chunks = int(progress.get("chunks", 0))
        self.rows = int(progress.get("rows", 0))
        self._held: HeldRead | None = None
        self._first = not self.done and self.table is None and not self.partial

    # -- what a source provides -------------------------------------------------------
    def _chunk(self, table: str, after: Any) -> Chunk:
        """Up to ``chunk_size`` rows of ``table`` after key ``after`` (None: from the start)."""
        raise NotImplementedError

    def _emit(self, table: str, read: Any, marker: str) -> Item:
        """The record of one read of ``table`` (what ``_chunk``'s ``read_of`` returned)."""
        raise NotImplementedError

    def _emit_middle(self, table: str, rows: Sequence[Any], start: int, stop: int,
                     read_of: Callable[[Any], Any]) -> list[Item]:
        """The records of ``rows[start:stop]``, a chunk's rows between its first and its
        last: every one's marker is ``true`` (a source may encode them in one loop)."""
        emit = self._emit
        return [emit(table, read_of(rows[i]), "true") for i in range(start, stop)]

    def _save_key(self, key: Any) -> Any:
        """A key as the offsets topic keeps it (JSON)."""
        return key

    def _load_key(self, saved: Any) -> Any:
        return saved

    def _progress_extra(self) -> dict[str, Any]:
        """The source's own fields of the saved progress (its snapshot point, time)."""
        return {}

    def close(self) -> None:
        """Release the snapshot's connection."""

    # -- the snapshot -----------------------------------------------------------------
    @property
    def finished(self) -> bool:
        return self._next_table() is None and self._held is None

    def read(self) -> list[Item]:
        """The next chunk's records and a checkpoint after them (the last call also releases
        the held last row and marks the snapshot complete)."""
        out: list[Item] = []
        table = self._next_table()
        if table is None:
            if self._held is not None:
                out.append(self._release(last=True))
            out.append(Checkpoint(SnapshotPosition(self.chunks + 1, self.progress(True))))
            self.close()
            log.info("snapshot complete: %d rows", self.rows)
            return out
        rows, key_of, read_of = self._chunk(table, self.after)
        starting = self.after is None
        if rows:
            if self._held is not None:
                out.append(self._release())
            # Every row but the chunk's last is handed out at once: its marker is known.
            last = len(rows) - 1
            if last:
                out.append(self._emit(table, read_of(rows[0]),
                                      snapshot_marker(self._first, False, starting, False)))
                self._first = starting = False
                out.extend(self._emit_middle(table, rows, 1, last, read_of))
            self._held = HeldRead(table, read_of(rows[last]),
                                  key_of(rows[-2]) if last else self.after, self._first,
                                  starting)
            self._first = False
        self.rows += len(rows)
        if len(rows) < self.chunk_size:
            if self._held is not None and self._held.table == table:
                self._held.last_in_table = True
            self.done.append(table)
            self.table, self.after = None, None
            self._table_done(table)
        else:
            self.table = table
            self.after = key_of(rows[-1])
        self.chunks += 1
        out.append(Checkpoint(SnapshotPosition(self.chunks, self.progress(False))))
        return out

    def progress(self, complete: bool) -> dict[str, Any]:
        """What the offsets topic keeps: enough to resume after the last confirmed chunk.
        The row held back for its marker is not published yet: a resume reads it again."""
        done, table, after = list(self.done), self.table, self.after
        held = self._held
        if held is not None and not complete:
            done = [t for t in done if t != held.table]
            table, after = held.table, held.before
        return {"complete": complete, "done": done, "table": table,
                "after": None if after is None else self._save_key(after),
                "partial": {t: self._save_key(k) for t, k in self.partial.items()},
                "chunks": self.chunks, "rows": self.rows, **self._progress_extra()}

    def _table_done(self, table: str) -> None:
        """Called when ``table``'s last chunk was read (a source drops its reader)."""

    def _next_table(self) -> str | None:
        if self.table is None:
            self.table = next((t for t in self.tables if t not in self.done), None)
            if self.table is not None:
                self.after = self.partial.pop(self.table, None)
        return self.table

    def _release(self, last: bool = False) -> Item:
        held = self._held
        assert held is not None
        self._held = None
        return self._emit(held.table, held.read, snapshot_marker(
            held.first_overall, last, held.first_in_table, held.last_in_table))
