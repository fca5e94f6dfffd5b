"""What an incremental backfill is, whatever the source reads it from: one table's progress
(:class:`TableBackfill`), the book of a capture's backfills (signals, pause, progress saved
once confirmed: :class:`BackfillBook`) and how ``cdc snapshot status`` draws it."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from pipeline.capture.offsets import OffsetStore
from pipeline.capture.signals import Signal, filter_problem
from pipeline.errors import ConfigError, RetriableError
from pipeline.metrics import Metrics

log = logging.getLogger(__name__)

#: Signal ids remembered, so a signal streamed again after a restart is not acted on twice.
APPLIED_KEPT = 64


@dataclass
class TableBackfill:
    """One table's backfill: where it is and how it went."""

    table: str
    chunk_size: int
    where: str | None = None
    after: list[Any] | None = None
    rows: int = 0
    chunks: int = 0
    estimate: int | None = None
    state: str = "running"  # running | done | stopped | failed
    error: str | None = None
    started_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TableBackfill:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    @property
    def finished(self) -> bool:
        return self.state != "running"



def check_request(tables: tuple[str, ...], captured: tuple[str, ...], tables_setting: str,
                  state: dict[str, Any], where: str | None = None) -> None:
    """The source-independent checks of ``cdc snapshot start``: every table is captured
    (listed in ``tables_setting``), none is being backfilled already (``state``), and the
    filter ``where`` is one condition (the server checks the rest of it)."""
    problem = None if where is None else filter_problem(where)
    if problem is not None:
        raise ConfigError("--where", f"the filter {where!r}: {problem}")
    for table in tables:
        if table not in captured:
            raise ConfigError("cdc snapshot start", f"{table} is not captured: add it to "
                              f"{tables_setting} (now {', '.join(captured)}) and restart "
                              "capture")
    busy = {t["table"]: t for t in state.get("tables", []) if t.get("state") == "running"}
    for table in tables:
        if table in busy:
            raise ConfigError("cdc snapshot start", f"a backfill of {table} is already running "
                              f"({busy[table].get('rows', 0)} rows read): wait for it, or "
                              f"`cdc snapshot stop {table}` first")


def running(state: dict[str, Any]) -> bool:
    return any(t.get("state") == "running" for t in state.get("tables", []))


def render(state: dict[str, Any], width: int = 24) -> str:
    """One line per table: a bar, percent, rows, rows/s, ETA (or how it ended)."""
    tables = [TableBackfill.from_json(t) for t in state.get("tables", [])]
    if not tables:
        return "no backfill requested (cdc snapshot start <schema.table>)"
    lines = []
    name_width = max(len(t.table) for t in tables)
    for t in tables:
        elapsed = max(t.updated_at - t.started_at, 1e-9)
        rate = t.rows / elapsed if t.rows else 0.0
        share = (1.0 if t.state == "done" else
                 min(1.0, t.rows / t.estimate) if t.estimate else None)
        bar = ("#" * round(width * share)).ljust(width, ".") if share is not None \
            else "?" * width
        percent = f"{share * 100:5.1f}%" if share is not None else "    ?%"
        line = f"{t.table.ljust(name_width)}  [{bar}] {percent}  {t.rows:,} rows"
        if t.estimate:
            line += f" of ~{t.estimate:,}"
        line += f"  {rate:,.0f} rows/s"
        if t.state == "running":
            if state.get("paused"):
                line += "  paused"
            elif rate and t.estimate and t.estimate > t.rows:
                line += f"  ETA {_clock((t.estimate - t.rows) / rate)}"
        else:
            line += f"  {t.state}"
            if t.error:
                line += f": {t.error}"
        if t.where:
            line += f"  (where {t.where})"
        lines.append(line)
    return "\n".join(lines)


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return time.strftime("%H:%M:%S", time.gmtime(seconds)) if seconds < 86400 \
        else f"{seconds // 86400}d"


class BackfillBook:
    """The backfills of one capture, whatever its source: requested by signals, paused,
    resumed, stopped, and saved in Kafka (``store``) only once the stream position their
    state was taken at is confirmed (:meth:`confirmed`), so a restart resumes from the last
    chunk whose rows Kafka has. A source adds the chunk reads and its window."""

    #: Where the captured tables are listed (named in refusals), e.g. ``postgres.tables``.
    listed_setting = "tables"

    def __init__(self, store: OffsetStore, metrics: Metrics, chunk_size: int) -> None:
        self.store = store
        self.metrics = metrics
        self.chunk_size = chunk_size
        self.tables: list[TableBackfill] = []
        self.paused = False
        self.applied: list[str] = []  # ids of the latest signals acted on
        self.window: Any = None  # the source's chunk in flight
        #: States to save once the stream position they were taken at is confirmed.
        self._pending: list[tuple[Any, dict[str, Any], bool]] = []

    def load(self) -> None:
        """Load the saved state (after a restart: resume from the last finished chunk)."""
        self.window = None
        self._pending.clear()
        saved = self.store.load() or {}
        self.paused = bool(saved.get("paused", False))
        self.applied = list(saved.get("applied", []))
        self.tables = [TableBackfill.from_json(t) for t in saved.get("tables", [])]
        running = [t.table for t in self.tables if not t.finished]
        if running:
            log.info("resuming the backfill of %s%s", ", ".join(running),
                     " (paused)" if self.paused else "")

    def forget(self) -> None:
        self.store.forget()

    @property
    def wants_chunk(self) -> bool:
        """A chunk should be read now (work to do, not paused, no chunk in flight)."""
        return self.window is None and not self.paused and any(
            not t.finished for t in self.tables)

    # -- signals -------------------------------------------------------------------------
    def signal(self, signal: Signal, position: Any, listed: frozenset[str]) -> None:
        """Act on a signal that arrived at stream ``position`` (once: a signal the stream
        sends again after a restart is recognised by its id)."""
        if signal.id and signal.id in self.applied:
            return
        if signal.id:
            self.applied = [*self.applied[-(APPLIED_KEPT - 1):], signal.id]
        if signal.kind == "execute-snapshot":
            self._start(signal, listed)
        elif signal.kind == "stop-snapshot":
            names = set(signal.tables) or {t.table for t in self.tables}
            for t in self.tables:
                if t.table in names and not t.finished:
                    t.state, t.updated_at = "stopped", time.time()
                    self._forget_reader(t.table)
                    log.info("backfill of %s stopped after %d rows", t.table, t.rows)
            if self.window is not None and self.window.table in names:
                self.window = None  # its rows are not published
        elif signal.kind == "pause-snapshot":
            self.paused = True
            log.info("backfills paused")
        elif signal.kind == "resume-snapshot":
            self.paused = False
            log.info("backfills resumed")
        self.metrics.inc("cdc_capture_signals_total", type=signal.kind, outcome="applied")
        self._remember(position, durable=True)

    def _start(self, signal: Signal, listed: frozenset[str]) -> None:
        for table in signal.tables:
            if table not in listed:
                self._refuse(signal, f"{table} is not in {self.listed_setting}, so its "
                                     "changes are not captured: add it there first")
                continue
            running = next((t for t in self.tables if t.table == table and not t.finished),
                           None)
            if running is not None:
                self._refuse(signal, f"a backfill of {table} is already running "
                                     f"({running.rows} rows read); stop it first")
                continue
            self.tables = [t for t in self.tables if t.table != table]
            self._forget_reader(table)  # an earlier backfill's (its filter, its position)
            entry = TableBackfill(table, signal.chunk_size or self.chunk_size,
                                  signal.conditions.get(table))
            entry.estimate = self._estimate(entry)
            self.tables.append(entry)
            log.info("backfill of %s requested%s (about %s rows)", table,
                     f" where {entry.where}" if entry.where else "",
                     "?" if entry.estimate is None else entry.estimate)

    def _refuse(self, signal: Signal, reason: str) -> None:
        log.error("signal %s %s refused: %s", signal.kind, signal.id, reason)
        self.metrics.inc("cdc_capture_signals_total", type=signal.kind, outcome="refused")

    def _estimate(self, entry: TableBackfill) -> int | None:
        """The table's row estimate (None: unknown); the source's to give."""
        return None

    # -- a chunk's end -------------------------------------------------------------------
    def chunk_done(self, table: str, published: int, read: int, last_key: Any) -> None:
        """A chunk of ``read`` rows ending at ``last_key`` is published (``published`` of
        them; the others were left to the stream)."""
        entry = next((t for t in self.tables if t.table == table and not t.finished), None)
        if entry is None:
            return
        entry.rows += published
        entry.chunks += 1
        entry.after = last_key
        entry.updated_at = time.time()
        if read < entry.chunk_size:
            entry.state = "done"
            self._forget_reader(entry.table)
            log.info("backfill of %s complete: %d rows in %d chunks", entry.table,
                     entry.rows, entry.chunks)
        self.metrics.inc("cdc_capture_backfill_rows_total", published, table=entry.table)
        self.metrics.inc("cdc_capture_backfill_chunks_total", table=entry.table)
        if entry.estimate:
            self.metrics.set("cdc_capture_backfill_progress_ratio",
                             1.0 if entry.finished else min(1.0, entry.rows / entry.estimate),
                             table=entry.table)

    def _forget_reader(self, table: str) -> None:
        """The source's reader of ``table`` is no longer needed."""

    # -- state ---------------------------------------------------------------------------
    def confirmed(self, position: Any) -> None:
        """Everything up to ``position`` is in Kafka: save the newest state taken at or
        before it."""
        state: dict[str, Any] | None = None
        durable = False
        while self._pending and self._pending[0][0] <= position:
            _, state, must = self._pending.pop(0)
            durable = durable or must
        if state is None:
            return
        self.store.save(state)
        if durable and self.store.flush():
            raise RetriableError("could not save the backfill state to Kafka")

    def state(self) -> dict[str, Any]:
        return {"paused": self.paused, "applied": self.applied,
                "tables": [asdict(t) for t in self.tables]}

    def _remember(self, position: Any, durable: bool) -> None:
        self._pending.append((position, self.state(), durable))

    def _fail(self, entry: TableBackfill, exc: Exception) -> None:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        entry.state, entry.error, entry.updated_at = "failed", text, time.time()
        self._forget_reader(entry.table)
        log.error("backfill of %s failed: %s", entry.table, text)
        self.metrics.inc("cdc_capture_backfill_failures_total", table=entry.table)
