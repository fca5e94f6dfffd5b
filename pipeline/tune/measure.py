"""What ``cdc tune`` measures in a running pipeline: two readings of every process's
Prometheus metrics ``window`` seconds apart, and the rates, costs and latencies between them.

The processes are found as ``cdc worker`` places them: ``cdc capture`` on ``metrics.port``,
the worker of the i-th sink on ``metrics.port + 1 + i`` (``pipeline/workers.py``); or given
as ``/metrics`` URLs; or read from a Prometheus server that scrapes them (two instant
queries, ``window`` seconds apart, one process per ``instance`` label).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import httpx
from prometheus_client.parser import text_string_to_metric_families

from pipeline.config import Settings
from pipeline.errors import CdcError
from pipeline.sinks.registry import sink_names

Labels = frozenset[tuple[str, str]]
Series = dict[tuple[str, Labels], float]

#: The series tune reads (counters, histogram parts, process CPU).
WANTED = (
    "cdc_capture_events_total", "cdc_commit_to_kafka_latency_seconds_bucket",
    "cdc_worker_records_total", "cdc_worker_batches_total",
    "cdc_worker_batch_processing_seconds_sum", "cdc_worker_batch_processing_seconds_count",
    "cdc_sink_events_total", "cdc_sink_batch_latency_seconds_sum",
    "cdc_sink_batch_latency_seconds_count", "cdc_commit_to_sink_latency_seconds_bucket",
    "cdc_worker_consumer_lag_records", "process_cpu_seconds_total",
)


class NothingRunning(CdcError):
    """No process answered: nothing to measure."""


class NothingFlowing(CdcError):
    """Processes answered, but no change went through them during the window."""


@dataclass(frozen=True)
class Target:
    """One process's ``/metrics``: its expected role (capture, a sink name, or unknown)."""

    url: str
    role: str | None = None


def targets(settings: Settings, urls: Iterable[str] = ()) -> list[Target]:
    """The URLs given, else the ports ``metrics.port`` assigns."""
    given = [Target(u if "/" in u.split("://", 1)[-1] else u.rstrip("/") + "/metrics")
             for u in urls]
    if given:
        return given
    base = settings.metrics.port
    if base is None:
        from pipeline.errors import ConfigError

        raise ConfigError("metrics.port", "is not set, so no process serves /metrics to "
                                          "measure: set it (capture serves on it, the worker "
                                          "of the i-th sink on port + 1 + i), or give "
                                          "--endpoint URL or --prometheus URL")
    found = [Target(f"http://127.0.0.1:{base}/metrics", "capture")]
    found += [Target(f"http://127.0.0.1:{base + 1 + i}/metrics", name)
              for i, name in enumerate(sink_names(settings))]
    return found


def parse(text: str) -> Series:
    """The wanted series of one Prometheus text exposition."""
    out: Series = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in WANTED:
                out[(sample.name, frozenset(sample.labels.items()))] = float(sample.value)
    return out


def scrape(target: Target, timeout: float = 3.0) -> Series | None:
    """One reading of a process; None when it does not answer."""
    try:
        response = httpx.get(target.url, timeout=timeout)
        response.raise_for_status()
    except httpx.HTTPError:
        return None
    return parse(response.text)


def prometheus_readings(url: str, at: float, timeout: float = 10.0) -> dict[str, Series]:
    """The wanted series as a Prometheus server had them at ``at``, per ``instance``."""
    query = '{__name__=~"' + "|".join(WANTED) + '"}'
    try:
        response = httpx.get(url.rstrip("/") + "/api/v1/query",
                             params={"query": query, "time": f"{at:.3f}"}, timeout=timeout)
        response.raise_for_status()
        body = response.json()
    except (httpx.HTTPError, ValueError) as exc:
        raise NothingRunning(f"Prometheus at {url} did not answer: {exc}") from exc
    out: dict[str, Series] = {}
    for item in body.get("data", {}).get("result", []):
        labels = dict(item["metric"])
        name = labels.pop("__name__")
        instance = labels.pop("instance", "?")
        labels.pop("job", None)
        out.setdefault(instance, {})[(name, frozenset(labels.items()))] = float(
            item["value"][1])
    return out


@dataclass
class Reading:
    """Two readings of one process."""

    name: str  # where it was read (URL or instance)
    role: str | None
    before: Series
    after: Series
    seconds: float

    def delta(self, name: str, **labels: str) -> float:
        want = set(labels.items())
        return sum(v - self.before.get(key, 0.0) for key, v in self.after.items()
                   if key[0] == name and want <= key[1])

    def label_values(self, name: str, label: str) -> set[str]:
        return {dict(key[1])[label] for key in self.after
                if key[0] == name and label in dict(key[1])}

    def quantile(self, histogram: str, q: float, **labels: str) -> float | None:
        """The q-quantile (seconds) of what a histogram observed between the readings,
        interpolated in its bucket as Prometheus's histogram_quantile does."""
        counts: dict[float, float] = {}
        want = set(labels.items())
        for key, value in self.after.items():
            if key[0] != f"{histogram}_bucket" or not want <= key[1]:
                continue
            le = float(dict(key[1])["le"])
            counts[le] = counts.get(le, 0.0) + value - self.before.get(key, 0.0)
        return bucket_quantile(counts, q)

    @property
    def is_capture(self) -> bool:
        return self.role == "capture" or any(
            k[0] == "cdc_capture_events_total" for k in self.after)

    @property
    def sink(self) -> str | None:
        sinks = (self.label_values("cdc_sink_batch_latency_seconds_count", "sink")
                 | self.label_values("cdc_sink_events_total", "sink"))
        if len(sinks) == 1:
            return sinks.pop()
        return self.role if self.role not in (None, "capture") else None


def bucket_quantile(cumulative: dict[float, float], q: float) -> float | None:
    """histogram_quantile over cumulative bucket counts by upper bound."""
    bounds = sorted(cumulative)
    if not bounds or cumulative[bounds[-1]] <= 0:
        return None
    rank = q * cumulative[bounds[-1]]
    lower, below = 0.0, 0.0
    for le in bounds:
        count = cumulative[le]
        if count >= rank:
            if math.isinf(le):
                return lower  # in the open bucket: its lower bound, as Prometheus does
            return lower + (le - lower) * (rank - below) / max(count - below, 1e-12)
        lower, below = le, count
    return bounds[-1]


def read_window(settings: Settings, window_s: float, urls: Iterable[str] = (),
                prometheus: str | None = None) -> tuple[list[Reading], list[str]]:
    """Readings of every process ``window_s`` apart; and the places that did not answer."""
    if prometheus is not None:
        now = time.time()
        earlier = prometheus_readings(prometheus, now - window_s)
        later = prometheus_readings(prometheus, now)
        readings = [Reading(i, None, earlier.get(i, {}), s, window_s) for i, s in later.items()
                    if any(k[0].startswith("cdc_") for k in s)]
        if not readings:
            raise NothingRunning(f"Prometheus at {prometheus} holds no cdc_* series: is it "
                                 f"scraping cdc capture and cdc worker?")
        return readings, []
    found = targets(settings, urls)
    first = {t: scrape(t) for t in found}
    started = time.monotonic()
    up = [t for t, s in first.items() if s is not None]
    down = [t.url for t, s in first.items() if s is None]
    if not up:
        raise NothingRunning("no process answered on " + ", ".join(down) + ": start "
                             "`cdc capture` and `cdc worker` with metrics.port set (or give "
                             "--endpoint / --prometheus)")
    time.sleep(window_s)
    readings = []
    for t in up:
        second = scrape(t)
        if second is None:
            down.append(t.url)
            continue
        before = first[t]
        assert before is not None
        readings.append(Reading(t.url, t.role, before, second, time.monotonic() - started))
    return readings, down


@dataclass
class SinkFigures:
    """One sink's workers between the readings."""

    name: str
    workers: int
    records_per_s: float
    batches: float
    writes: float
    write_s: float  # seconds spent in sink writes (all workers)
    busy_s: float  # seconds spent on batches, writes included (all workers)
    cpu_s: float  # process CPU of its workers (stands in for busy_s if that is missing)
    seconds: float
    p99_s: float | None  # commit-to-sink (freshness), measured
    consumer_lag: float

    @property
    def busy(self) -> float:
        """Share of the time a worker spent on batches, averaged over its workers."""
        return min(1.0, self.busy_s / (self.seconds * self.workers))

    @property
    def mean_batch(self) -> float:
        return self.records_per_s * self.seconds / self.batches if self.batches else 0.0


@dataclass
class Measured:
    seconds: float
    processes: int
    changes_per_s: dict[str, float] = field(default_factory=dict)  # per table
    capture_cpu_s: float | None = None
    capture_p99_s: float | None = None
    sinks: dict[str, SinkFigures] = field(default_factory=dict)
    down: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return sum(self.changes_per_s.values())


def summarise(readings: list[Reading], down: list[str]) -> Measured:
    seconds = max(r.seconds for r in readings)
    out = Measured(seconds, len(readings), down=list(down))
    for r in readings:
        if r.is_capture:
            for table in r.label_values("cdc_capture_events_total", "table"):
                n = r.delta("cdc_capture_events_total", table=table)
                out.changes_per_s[table] = out.changes_per_s.get(table, 0.0) + n / r.seconds
            out.capture_cpu_s = (out.capture_cpu_s or 0.0) + r.delta("process_cpu_seconds_total")
            out.capture_p99_s = r.quantile("cdc_commit_to_kafka_latency_seconds", 0.99)
            continue
        name = r.sink
        if name is None:
            continue
        s = out.sinks.get(name) or SinkFigures(name, 0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
                                                r.seconds, None, 0.0)
        s.workers += 1
        s.records_per_s += r.delta("cdc_worker_records_total") / r.seconds
        s.batches += r.delta("cdc_worker_batches_total")
        s.writes += r.delta("cdc_sink_batch_latency_seconds_count", sink=name)
        s.write_s += r.delta("cdc_sink_batch_latency_seconds_sum", sink=name)
        cpu = r.delta("process_cpu_seconds_total")
        s.cpu_s += cpu
        processed = r.delta("cdc_worker_batch_processing_seconds_count")
        # a worker without the batch timer (an older one): its writes plus its CPU, an
        # upper bound (idle polling and the CPU of a write count too)
        s.busy_s += (r.delta("cdc_worker_batch_processing_seconds_sum") if processed
                     else r.delta("cdc_sink_batch_latency_seconds_sum", sink=name) + cpu)
        s.consumer_lag += sum(v for k, v in r.after.items()
                              if k[0] == "cdc_worker_consumer_lag_records")
        p99 = r.quantile("cdc_commit_to_sink_latency_seconds", 0.99, sink=name)
        if p99 is not None:
            s.p99_s = max(s.p99_s or 0.0, p99)
        out.sinks[name] = s
    if not any(out.changes_per_s.values()) and not any(
            s.records_per_s for s in out.sinks.values()):
        raise NothingFlowing(f"{len(readings)} process(es) answered, but no change went "
                             f"through them in {seconds:.0f} s: tune needs traffic to measure "
                             f"costs (write to a captured table, or measure longer with "
                             f"--window)")
    return out
