"""What an incremental backfill is, whatever the source reads it from: one table's progress
(:class:`TableBackfill`) and how ``cdc snapshot status`` draws it."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

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
