"""The Grafana dashboard imports as is (a datasource variable, no fixed uid), and its
queries name only metrics the code emits, histograms through their fixed buckets.
``tests/integration/test_prometheus_scrape.py`` runs every query on a real Prometheus."""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "ops" / "grafana" / "cdc-pipeline.json"


def _doc() -> dict:  # type: ignore[type-arg]
    return json.loads(DASHBOARD.read_text())


def _sources() -> str:
    return "\n".join(p.read_text() for folder in ("pipeline", "agents")
                     for p in sorted((ROOT / folder).rglob("*.py")))


def test_importable_with_any_prometheus_datasource() -> None:
    doc = _doc()
    assert doc["uid"] and doc["title"] and doc["schemaVersion"] >= 30
    (var,) = [v for v in doc["templating"]["list"] if v["type"] == "datasource"]
    assert var["query"] == "prometheus"
    uid = "${" + var["name"] + "}"
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids))
    for panel in doc["panels"]:
        assert panel["datasource"]["uid"] == uid, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == uid, panel["title"]
            assert target["expr"].count("(") == target["expr"].count(")"), target["expr"]


def test_covers_what_the_issue_asks() -> None:
    exprs = " ".join(t["expr"] for p in _doc()["panels"] for t in p["targets"])
    for metric in ("cdc_capture_events_total", "cdc_sink_events_total",
                   "cdc_commit_to_sink_latency_seconds_bucket", "cdc_replication_lag_seconds",
                   "cdc_capture_slot_retained_wal_bytes", "cdc_worker_consumer_lag_records",
                   "cdc_sink_batch_latency_seconds_bucket", "cdc_dead_letters_total",
                   "cdc_sink_retries_total", "cdc_capture_backfill_progress_ratio",
                   "cdc_capture_backfill_rows_total"):
        assert metric in exprs, metric
    assert "histogram_quantile(0.99, sum by (le, sink)" in exprs


def test_every_metric_in_a_query_is_emitted() -> None:
    source = _sources()
    emitted = set(re.findall(r'"(cdc_[a-z_]+)"', source))
    histograms = set(re.findall(r'observe(?:_many)?_ms\(\s*"(cdc_[a-z_]+)"', source))
    for panel in _doc()["panels"]:
        for target in panel["targets"]:
            for name in re.findall(r"\bcdc_[a-z_]+", target["expr"]):
                base = name.removesuffix("_seconds_bucket")
                assert base in emitted, f"{panel['title']}: no code emits {base}"
                assert (base != name) == (base in histograms), f"{panel['title']}: {name}"
