"""``/metrics`` as prometheus_client writes it: HELP and TYPE for every family, one label
set per metric name in the code (prometheus_client fixes a metric's label names at its first
use), a help line for every name, and the exporter serving a real HTTP scrape."""

from __future__ import annotations

import ast
import json
import socket
import urllib.request
from collections import defaultdict
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from pipeline.metric_help import HELP
from pipeline.metrics import Metrics, MetricsExporter, read_snapshots

ROOT = Path(__file__).resolve().parents[2]


def _calls() -> dict[str, set[tuple[str, tuple[str, ...]]]]:
    """Every ``.inc/.set/.observe_ms("cdc_…", …)`` in the code (``observe_many_ms`` is
    ``observe_ms`` for several values): name -> {(method, labels)}."""
    found: dict[str, set[tuple[str, tuple[str, ...]]]] = defaultdict(set)
    paths = [p for folder in ("pipeline", "agents") for p in (ROOT / folder).rglob("*.py")]
    for path in sorted(paths):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in ("inc", "set", "observe_ms", "observe_many_ms")
                    and node.args and isinstance(node.args[0], ast.Constant)
                    and str(node.args[0].value).startswith("cdc_")):
                labels = tuple(sorted(k.arg or "**" for k in node.keywords))
                kind = "observe_ms" if node.func.attr == "observe_many_ms" else node.func.attr
                found[str(node.args[0].value)].add((kind, labels))
    return found


def test_the_scan_sees_the_code() -> None:
    calls = _calls()
    assert ("observe_ms", ("sink",)) in calls["cdc_commit_to_sink_latency"]
    assert ("inc", ("op", "table")) in calls["cdc_capture_events_total"]
    assert ("inc", ()) in calls["cdc_worker_rereads_total"]  # agents/ too


def test_each_metric_name_has_one_kind_and_one_label_set() -> None:
    for name, uses in _calls().items():
        assert len(uses) == 1, f"{name} is used as {sorted(uses)}"
        (method, labels), = uses
        assert "**" not in labels, f"{name}: labels must be named at the call"
        assert (method == "inc") == name.endswith("_total"), name


def test_every_metric_has_a_help_line() -> None:
    missing = sorted(set(_calls()) - set(HELP))
    assert not missing, f"add to pipeline/metric_help.py: {missing}"


def test_help_and_type_for_every_family() -> None:
    m = Metrics("worker")
    m.inc("cdc_sink_events_total", 2, sink="search")
    m.set("cdc_worker_consumer_lag_records", 7, topic="cdc.public.t")
    m.observe_ms("cdc_commit_to_sink_latency", 40.0, sink="search")
    text = m.prometheus()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families["cdc_sink_events"].type == "counter"
    assert families["cdc_sink_events"].documentation == HELP["cdc_sink_events_total"]
    assert families["cdc_worker_consumer_lag_records"].type == "gauge"
    assert families["cdc_commit_to_sink_latency_seconds"].type == "histogram"
    assert "# TYPE cdc_sink_events_total counter" in text
    assert "# HELP cdc_commit_to_sink_latency_seconds " in text
    assert "process_cpu_seconds_total" in families or "process_cpu_seconds" in families


def test_a_label_set_other_than_the_first_does_not_crash() -> None:
    m = Metrics("x")
    m.inc("cdc_worker_errors_total", kind="A")
    m.inc("cdc_worker_errors_total", kind="B", extra="dropped")
    m.inc("cdc_worker_errors_total")
    text = m.prometheus()
    assert 'cdc_worker_errors_total{kind="A"} 1.0' in text
    assert 'cdc_worker_errors_total{kind="B"} 1.0' in text
    assert 'cdc_worker_errors_total{kind=""} 1.0' in text
    assert m.total("cdc_worker_errors_total") == 3  # the snapshot keeps every label


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_exporter_serves_metrics_and_writes_snapshots(tmp_path: Path) -> None:
    m = Metrics("capture")
    m.set("cdc_replication_lag_seconds", 2.5)
    m.inc("cdc_capture_events_total", 3, table="public.t", op="c")
    port = _free_port()
    exporter = MetricsExporter(m, tmp_path, port, interval_s=60)
    exporter.start()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            assert resp.headers["Content-Type"].startswith("text/plain")
            body = resp.read().decode()
    finally:
        exporter.stop()
    assert "cdc_replication_lag_seconds 2.5" in body
    assert 'cdc_capture_events_total{op="c",table="public.t"} 3.0' in body
    assert "process_resident_memory_bytes" in body
    snap = read_snapshots(tmp_path)["capture"]
    assert snap["gauges"] == {"cdc_replication_lag_seconds": 2.5}
    assert json.loads((tmp_path / "capture.json").read_text())["process"] == "capture"


def test_values_observed_at_once_are_each_counted() -> None:
    m = Metrics("worker")
    m.observe_many_ms("cdc_commit_to_sink_latency", [10.0, 20.0, 4000.0], sink="search")
    m.observe_ms("cdc_commit_to_sink_latency", 30.0, sink="search")
    family = {f.name: f for f in text_string_to_metric_families(m.prometheus())}[
        "cdc_commit_to_sink_latency_seconds"]
    samples = {s.name: s.value for s in family.samples}
    assert samples["cdc_commit_to_sink_latency_seconds_count"] == 4
    assert abs(samples["cdc_commit_to_sink_latency_seconds_sum"] - 4.06) < 1e-9
    assert m.snapshot()["latency_ms"]['cdc_commit_to_sink_latency{sink="search"}']["count"] == 4


def test_values_observed_at_once_land_in_the_buckets_one_at_a_time_would() -> None:
    values = [0.0, 1.0, 2.5, 2.6, 999.0, 1000.0, 1000.1, 600_000.0, 700_000.0, 10.0]
    at_once, one_by_one = Metrics("a"), Metrics("b")
    at_once.observe_many_ms("cdc_commit_to_sink_latency", values, sink="cache")
    for value in values:
        one_by_one.observe_ms("cdc_commit_to_sink_latency", value, sink="cache")

    def samples(m: Metrics) -> dict[tuple[str, str], float]:
        family = {f.name: f for f in text_string_to_metric_families(m.prometheus())}[
            "cdc_commit_to_sink_latency_seconds"]
        return {(s.name, s.labels.get("le", "")): s.value for s in family.samples}

    got = samples(at_once)
    assert got == samples(one_by_one)
    bucket = "cdc_commit_to_sink_latency_seconds_bucket"  # cumulative, each bound inclusive
    assert got[(bucket, "0.0025")] == 3 and got[(bucket, "1.0")] == 7
    assert got[(bucket, "+Inf")] == len(values)


def test_a_histogram_without_the_known_buckets_is_observed_one_value_at_a_time() -> None:
    from pipeline.metrics import _observe_all

    class Child:
        def __init__(self) -> None:
            self.seen: list[float] = []

        def observe(self, value: float) -> None:
            self.seen.append(value)

    child = Child()
    _observe_all(child, [0.5, 2.0])
    assert child.seen == [0.5, 2.0]
