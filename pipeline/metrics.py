"""Counters, gauges and latency histograms; Prometheus text and JSON snapshots.

One ``Metrics`` per process. Metric names follow Prometheus conventions (``cdc_*_total``
counters, ``*_seconds`` gauges). Histograms use fixed log-spaced buckets (10 % apart), so
memory stays constant however long the process runs and quantiles are accurate to ~10 %.
"""

from __future__ import annotations

import bisect
import json
import math
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

Labels = tuple[tuple[str, str], ...]

_BOUNDS_MS: list[float] = [0.05 * (1.1**i) for i in range(int(math.log(600_000 / 0.05, 1.1)) + 2)]


class LatencyHistogram:
    """Milliseconds in log-spaced buckets; p-quantiles from bucket upper bounds."""

    __slots__ = ("counts", "total", "sum_ms")

    def __init__(self) -> None:
        self.counts = [0] * (len(_BOUNDS_MS) + 1)
        self.total = 0
        self.sum_ms = 0.0

    def observe(self, ms: float) -> None:
        self.counts[bisect.bisect_left(_BOUNDS_MS, ms)] += 1
        self.total += 1
        self.sum_ms += ms

    def quantile(self, q: float) -> float | None:
        return quantile_of(dict(enumerate(self.counts)), q)

    def sparse(self) -> dict[str, int]:
        """Non-empty bucket counts by bucket index (for snapshots and their differences)."""
        return {str(i): c for i, c in enumerate(self.counts) if c}


def quantile_of(counts: dict[int, int], q: float) -> float | None:
    """The q-quantile (bucket upper bound, ms) of bucket counts; None when empty."""
    total = sum(counts.values())
    if not total:
        return None
    rank = q * total
    seen = 0
    for i in sorted(counts):
        seen += counts[i]
        if seen >= rank and counts[i]:
            return _BOUNDS_MS[min(i, len(_BOUNDS_MS) - 1)]
    return _BOUNDS_MS[-1]


def quantiles_between(
    before: dict[str, int] | None, after: dict[str, int], qs: tuple[float, ...] = (0.5, 0.99)
) -> tuple[int, list[float | None]]:
    """Count and quantiles of what a histogram observed between two snapshots' ``buckets``."""
    before = before or {}
    diff = {int(i): c - before.get(i, 0) for i, c in after.items()}
    diff = {i: c for i, c in diff.items() if c > 0}
    return sum(diff.values()), [quantile_of(diff, q) for q in qs]


class Metrics:
    """Thread-safe enough for our use: increments happen on one thread per process."""

    def __init__(self, process: str) -> None:
        self.process = process
        self.counters: dict[tuple[str, Labels], float] = {}
        self.gauges: dict[tuple[str, Labels], float] = {}
        self.histograms: dict[tuple[str, Labels], LatencyHistogram] = {}
        self.started = time.time()

    def inc(self, name: str, amount: float = 1, **labels: str) -> None:
        key = (name, tuple(sorted(labels.items())))
        self.counters[key] = self.counters.get(key, 0) + amount

    def set(self, name: str, value: float, **labels: str) -> None:
        self.gauges[(name, tuple(sorted(labels.items())))] = value

    def observe_ms(self, name: str, ms: float, **labels: str) -> None:
        key = (name, tuple(sorted(labels.items())))
        hist = self.histograms.get(key)
        if hist is None:
            hist = self.histograms[key] = LatencyHistogram()
        hist.observe(ms)

    def total(self, name: str) -> float:
        """Sum of a counter over all its labels."""
        return sum(v for (n, _), v in self.counters.items() if n == name)

    def snapshot(self) -> dict[str, Any]:
        def fmt(name: str, labels: Labels) -> str:
            if not labels:
                return name
            return name + "{" + ",".join(f'{k}="{v}"' for k, v in labels) + "}"

        return {
            "process": self.process,
            "pid": os.getpid(),
            "time": time.time(),
            "started": self.started,
            "counters": {fmt(n, lb): v for (n, lb), v in list(self.counters.items())},
            "gauges": {fmt(n, lb): v for (n, lb), v in list(self.gauges.items())},
            "latency_ms": {
                fmt(n, lb): {
                    "count": h.total,
                    "p50": h.quantile(0.5),
                    "p99": h.quantile(0.99),
                    "buckets": h.sparse(),
                }
                for (n, lb), h in list(self.histograms.items())
            },
        }

    def prometheus(self) -> str:
        lines: list[str] = []

        def lbl(labels: Labels, extra: tuple[tuple[str, str], ...] = ()) -> str:
            items = labels + extra
            return "{" + ",".join(f'{k}="{v}"' for k, v in items) + "}" if items else ""

        for (name, labels), value in sorted(self.counters.items()):
            lines.append(f"{name}{lbl(labels)} {value}")
        for (name, labels), value in sorted(self.gauges.items()):
            lines.append(f"{name}{lbl(labels)} {value}")
        for (name, labels), hist in sorted(self.histograms.items()):
            seen = 0
            for bound, count in zip(_BOUNDS_MS, hist.counts, strict=False):
                seen += count
                if count:
                    le = (("le", f"{bound / 1000:.6f}"),)
                    lines.append(f"{name}_seconds_bucket{lbl(labels, le)} {seen}")
            lines.append(f'{name}_seconds_bucket{lbl(labels, (("le", "+Inf"),))} {hist.total}')
            lines.append(f"{name}_seconds_sum{lbl(labels)} {hist.sum_ms / 1000:.6f}")
            lines.append(f"{name}_seconds_count{lbl(labels)} {hist.total}")
        return "\n".join(lines) + "\n"


class MetricsExporter:
    """Writes ``<snapshot_dir>/<process>.json`` every interval and serves ``/metrics``."""

    def __init__(
        self, metrics: Metrics, snapshot_dir: Path | None, port: int | None, interval_s: float
    ) -> None:
        self.metrics = metrics
        self.snapshot_dir = snapshot_dir
        self.port = port
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._server: ThreadingHTTPServer | None = None

    def start(self) -> None:
        if self.snapshot_dir is not None:
            self.snapshot_dir.mkdir(parents=True, exist_ok=True)
            threading.Thread(target=self._write_loop, name="metrics-snapshot", daemon=True).start()
        if self.port is not None:
            metrics = self.metrics

            class Handler(BaseHTTPRequestHandler):
                def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                    body = metrics.prometheus().encode()
                    self.send_response(200 if self.path.startswith("/metrics") else 404)
                    self.send_header("Content-Type", "text/plain; version=0.0.4")
                    self.end_headers()
                    self.wfile.write(body)

                def log_message(self, *args: Any) -> None:
                    return

            self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
            threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def write_now(self) -> None:
        if self.snapshot_dir is None:
            return
        target = self.snapshot_dir / f"{self.metrics.process}.json"
        tmp = target.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.metrics.snapshot()))
        tmp.replace(target)

    def _write_loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.write_now()

    def stop(self) -> None:
        self._stop.set()
        self.write_now()
        if self._server is not None:
            self._server.shutdown()


def read_snapshots(snapshot_dir: Path) -> dict[str, dict[str, Any]]:
    """All processes' latest snapshots in a folder, by process name."""
    out: dict[str, dict[str, Any]] = {}
    if snapshot_dir.is_dir():
        for file in snapshot_dir.glob("*.json"):
            try:
                out[file.stem] = json.loads(file.read_text())
            except (OSError, ValueError):
                continue
    return out
