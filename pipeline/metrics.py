"""Counters, gauges and latency histograms; Prometheus text and JSON snapshots.

One ``Metrics`` per process. Metric names follow Prometheus conventions (``cdc_*_total``
counters, ``*_seconds`` gauges). Each value is kept twice:

* in a ``prometheus_client`` registry of its own (``/metrics``: ``# HELP``/``# TYPE``,
  ``process_*``, histograms with the fixed ``BUCKETS_S`` so ``sum by (le)`` across processes
  is right);
* in plain dicts for the JSON snapshot files ``cdc status``, the demo and the tests read;
  their histograms use log-spaced buckets 10 % apart, so quantiles are accurate to ~10 %.
"""

from __future__ import annotations

import bisect
import json
import logging
import math
import os
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import prometheus_client
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
    start_http_server,
)

from pipeline.metric_help import HELP

log = logging.getLogger(__name__)

Labels = tuple[tuple[str, str], ...]

#: Prometheus histogram buckets (seconds), the same in every process and for every
#: histogram, all exposed (empty ones too) so series add up across processes.
BUCKETS_S: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
)

# ``*_created`` series double the output and no rule or panel reads them.
prometheus_client.disable_created_metrics()

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


def _observe_all(child: Any, seconds: list[float]) -> None:
    """``child.observe`` for each value, as one update per bucket: prometheus_client takes a
    lock per bucket and per sum on each observation (a sink observes every event). Falls back
    to one observation each where a later prometheus_client keeps its buckets otherwise."""
    bounds: Any = getattr(child, "_upper_bounds", None)
    buckets: Any = getattr(child, "_buckets", None)
    total: Any = getattr(child, "_sum", None)
    if not (isinstance(bounds, list) and isinstance(buckets, list) and hasattr(total, "inc")
            and len(bounds) == len(buckets)):
        for value in seconds:
            child.observe(value)
        return
    counts = [0] * len(bounds)
    for value in seconds:  # the first bucket whose bound is >= the value, as observe()
        counts[bisect.bisect_left(bounds, value)] += 1
    total.inc(sum(seconds))
    for bucket, count in zip(buckets, counts, strict=True):
        if count:
            bucket.inc(count)


class _Exposed:
    """The ``prometheus_client`` side of one ``Metrics``: a registry with the process
    collector and one Counter/Gauge/Histogram per name, its label names fixed by the first
    use (``tests/unit/test_metrics_exposition.py`` checks the code uses one set per name)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self._metrics: dict[str, Any] = {}
        self._lock = threading.Lock()

    def child(self, kind: type[Any], name: str, labels: dict[str, str]) -> Any:
        metric = self._metrics.get(name)
        if metric is None:
            with self._lock:
                metric = self._metrics.get(name)
                if metric is None:
                    metric = self._metrics[name] = self._make(kind, name, sorted(labels))
        names: tuple[str, ...] = metric._labelnames
        if not names:
            return metric
        if set(labels) != set(names):
            log.warning("metric %s is exposed with labels %s, not %s: extra labels dropped",
                        name, ",".join(names), ",".join(sorted(labels)))
        return metric.labels(*(labels.get(n, "") for n in names))

    def _make(self, kind: type[Any], name: str, labelnames: list[str]) -> Any:
        help_text = HELP.get(name, f"{name} (no help written yet)")
        if kind is Histogram:
            return Histogram(f"{name}_seconds", help_text, labelnames, registry=self.registry,
                             buckets=BUCKETS_S)
        return kind(name, help_text, labelnames, registry=self.registry)


class Metrics:
    """One process's metrics. Increments happen on one thread per process; the
    ``prometheus_client`` side is thread-safe for the scrapes."""

    def __init__(self, process: str) -> None:
        self.process = process
        self.counters: dict[tuple[str, Labels], float] = {}
        self.gauges: dict[tuple[str, Labels], float] = {}
        self.histograms: dict[tuple[str, Labels], LatencyHistogram] = {}
        self.started = time.time()
        self._exposed = _Exposed()
        # the prometheus_client child of each (name, labels), so a hot path looks it up once
        self._children: dict[tuple[str, Labels], Any] = {}

    @property
    def registry(self) -> CollectorRegistry:
        return self._exposed.registry

    def _child(self, kind: type[Any], key: tuple[str, Labels], labels: dict[str, str]) -> Any:
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self._exposed.child(kind, key[0], labels)
        return child

    def inc(self, name: str, amount: float = 1, **labels: str) -> None:
        key = (name, tuple(sorted(labels.items())))
        self.counters[key] = self.counters.get(key, 0) + amount
        if amount >= 0:  # a Prometheus counter only goes up
            self._child(Counter, key, labels).inc(amount)

    def set(self, name: str, value: float, **labels: str) -> None:
        key = (name, tuple(sorted(labels.items())))
        self.gauges[key] = value
        self._child(Gauge, key, labels).set(value)

    def observe_ms(self, name: str, ms: float, **labels: str) -> None:
        key = (name, tuple(sorted(labels.items())))
        hist = self.histograms.get(key)
        if hist is None:
            hist = self.histograms[key] = LatencyHistogram()
        hist.observe(ms)
        self._child(Histogram, key, labels).observe(ms / 1000)

    def observe_many_ms(self, name: str, values: Iterable[float], **labels: str) -> None:
        """``observe_ms`` for each value, the histogram looked up once (a sink observes
        every event of a batch)."""
        key = (name, tuple(sorted(labels.items())))
        hist = self.histograms.get(key)
        if hist is None:
            hist = self.histograms[key] = LatencyHistogram()
        child = self._child(Histogram, key, labels)
        observe = hist.observe
        seconds = []
        for ms in values:
            observe(ms)
            seconds.append(ms / 1000)
        _observe_all(child, seconds)

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
        """The Prometheus text exposition of this process (what ``/metrics`` serves)."""
        return generate_latest(self.registry).decode()


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
        self._server: Any = None

    def start(self) -> None:
        if self.snapshot_dir is not None:
            self.snapshot_dir.mkdir(parents=True, exist_ok=True)
            threading.Thread(target=self._write_loop, name="metrics-snapshot", daemon=True).start()
        if self.port is not None:
            self._server, _ = start_http_server(self.port, "127.0.0.1",
                                                registry=self.metrics.registry)

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
