"""Metrics: histogram quantiles within ~10 %, Prometheus text, JSON snapshots."""

from __future__ import annotations

import math
import random
import re

from hypothesis import given
from hypothesis import strategies as st

from pipeline.metrics import BUCKETS_S, LatencyHistogram, Metrics


def _true_quantile(values: list[float], q: float) -> float:
    """Nearest-rank quantile: the ceil(q*n)-th smallest value."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[rank - 1]


def _hist(values: list[float]) -> LatencyHistogram:
    h = LatencyHistogram()
    for v in values:
        h.observe(v)
    return h


def _close(estimate: float | None, true: float, tolerance: float = 0.10) -> bool:
    return estimate is not None and abs(estimate - true) <= tolerance * true


def test_empty_histogram_has_no_quantile() -> None:
    assert LatencyHistogram().quantile(0.5) is None


def test_uniform_distribution() -> None:
    values = [float(v) for v in range(1, 1001)]  # 1 ms .. 1000 ms
    h = _hist(values)
    assert _close(h.quantile(0.5), 500)
    assert _close(h.quantile(0.9), 900)
    assert _close(h.quantile(0.99), 990)
    assert h.total == 1000
    assert math.isclose(h.sum_ms, sum(values))


def test_exponential_distribution() -> None:
    rng = random.Random(1234)
    values = [rng.expovariate(1 / 20.0) + 0.1 for _ in range(20_000)]  # mean ~20 ms
    h = _hist(values)
    for q in (0.5, 0.9, 0.99, 0.999):
        assert _close(h.quantile(q), _true_quantile(values, q)), q
    # and against the analytic quantiles of the distribution (sampling error is small here)
    assert _close(h.quantile(0.5), 20 * math.log(2) + 0.1, 0.15)
    assert _close(h.quantile(0.99), 20 * math.log(100) + 0.1, 0.15)


def test_lognormal_wide_range() -> None:
    rng = random.Random(99)
    values = [rng.lognormvariate(math.log(50), 2.0) for _ in range(10_000)]
    values = [min(max(v, 0.06), 500_000) for v in values]
    h = _hist(values)
    for q in (0.01, 0.25, 0.5, 0.75, 0.99):
        assert _close(h.quantile(q), _true_quantile(values, q)), q


def test_constant_values() -> None:
    h = _hist([250.0] * 100)
    for q in (0.0, 0.5, 1.0):
        assert _close(h.quantile(q), 250.0)


@given(
    st.lists(st.floats(min_value=0.06, max_value=500_000), min_size=1, max_size=200),
    st.floats(min_value=0.01, max_value=1.0),
)
def test_quantile_within_ten_percent_property(values: list[float], q: float) -> None:
    assert _close(_hist(values).quantile(q), _true_quantile(values, q))


# --- Prometheus text ---------------------------------------------------------------------

LINE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$')


def _parse(text: str) -> list[tuple[str, dict[str, str], float]]:
    out = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = LINE.match(line)
        assert m, f"not a Prometheus sample line: {line!r}"
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
        out.append((m.group(1), labels, float(m.group(3))))
    return out


def test_prometheus_text_counters_gauges_histograms() -> None:
    m = Metrics("worker")
    m.inc("cdc_sink_events_total", 3, sink="search")
    m.inc("cdc_sink_events_total", 2, sink="search")
    m.inc("cdc_sink_events_total", 7, sink="cache")
    m.inc("cdc_worker_records_total")
    m.set("cdc_capture_lag_seconds", 1.5)
    for ms in (5.0, 5.0, 50.0, 2000.0):
        m.observe_ms("cdc_sink_batch_latency", ms, sink="search")
    text = m.prometheus()
    assert text.endswith("\n")
    samples = _parse(text)

    def value(name: str, **labels: str) -> float:
        (v,) = [v for n, lb, v in samples if n == name and lb == labels]
        return v

    assert value("cdc_sink_events_total", sink="search") == 5
    assert value("cdc_sink_events_total", sink="cache") == 7
    assert value("cdc_worker_records_total") == 1
    assert value("cdc_capture_lag_seconds") == 1.5

    base = "cdc_sink_batch_latency_seconds"
    assert value(f"{base}_count", sink="search") == 4
    assert math.isclose(value(f"{base}_sum", sink="search"), 2.060, rel_tol=1e-6)
    buckets = [(lb["le"], v) for n, lb, v in samples if n == f"{base}_bucket"]
    assert buckets[-1] == ("+Inf", 4)
    finite = dict((float(le), v) for le, v in buckets[:-1])
    # every fixed bucket is exposed, empty ones too, so series add up across processes
    assert sorted(finite) == list(BUCKETS_S)
    assert list(finite.values()) == sorted(finite.values())  # cumulative
    assert finite[0.001] == 0
    assert finite[0.005] == 2
    assert finite[0.025] == 2
    assert finite[0.05] == 3
    assert finite[1.0] == 3
    assert finite[2.5] == 4


def test_prometheus_without_metrics_has_only_the_process_collector() -> None:
    samples = _parse(Metrics("x").prometheus())
    assert not [n for n, _, _ in samples if n.startswith("cdc_")]
    assert {n for n, _, _ in samples} >= {"process_cpu_seconds_total",
                                          "process_resident_memory_bytes", "python_info"}


def test_total_sums_over_labels() -> None:
    m = Metrics("x")
    m.inc("cdc_dead_letters_total", stage="decode")
    m.inc("cdc_dead_letters_total", 2, stage="sink:search")
    assert m.total("cdc_dead_letters_total") == 3
    assert m.total("unknown_total") == 0


def test_snapshot() -> None:
    m = Metrics("capture")
    m.inc("cdc_capture_events_total", 4, table="public.orders")
    m.set("cdc_capture_confirmed_lsn", 1234)
    for ms in range(1, 101):
        m.observe_ms("cdc_commit_to_sink_latency", float(ms), sink="search")
    snap = m.snapshot()
    assert snap["process"] == "capture"
    assert snap["counters"] == {'cdc_capture_events_total{table="public.orders"}': 4}
    assert snap["gauges"] == {"cdc_capture_confirmed_lsn": 1234}
    lat = snap["latency_ms"]['cdc_commit_to_sink_latency{sink="search"}']
    assert lat["count"] == 100
    assert _close(lat["p50"], 50)
    assert _close(lat["p99"], 99)
