"""Reading two scrapes of the pipeline's own /metrics text into rates, costs and p99s."""

from __future__ import annotations

import pytest

from pipeline.metrics import Metrics
from pipeline.tune.advice import advise, render, sink_costs
from pipeline.tune.measure import NothingFlowing, Reading, bucket_quantile, parse, summarise


def _worker_readings() -> tuple[Reading, Reading]:
    capture, worker = Metrics("capture"), Metrics("worker-search")
    before = parse(capture.prometheus()), parse(worker.prometheus())
    capture.inc("cdc_capture_events_total", 900, table="s.a", op="c")
    capture.inc("cdc_capture_events_total", 100, table="s.b", op="u")
    for _ in range(100):  # 100 batches of 10 records: 4 ms writing, 6 ms in all
        worker.inc("cdc_worker_records_total", 10)
        worker.inc("cdc_worker_batches_total")
        worker.observe_ms("cdc_sink_batch_latency", 4.0, sink="search")
        worker.observe_ms("cdc_worker_batch_processing", 6.0)
    for ms in [20.0] * 98 + [400.0] * 2:
        worker.observe_ms("cdc_commit_to_sink_latency", ms, sink="search")
    return (Reading("capture", "capture", before[0], parse(capture.prometheus()), 10.0),
            Reading("worker", None, before[1], parse(worker.prometheus()), 10.0))


def test_rates_costs_and_quantiles_from_two_scrapes() -> None:
    measured = summarise(list(_worker_readings()), [])
    assert measured.changes_per_s == {"s.a": 90.0, "s.b": 10.0}
    search = measured.sinks["search"]  # named by its metrics' sink label
    assert search.workers == 1 and search.records_per_s == 100.0
    assert search.mean_batch == 10.0
    assert search.busy == pytest.approx(0.06)  # 100 batches * 6 ms in 10 s
    costs = sink_costs(search)
    assert costs is not None
    assert costs.per_batch_s == pytest.approx(0.004)
    assert costs.per_event_s == pytest.approx(0.0002)  # (6 - 4) ms over 10 records
    # 98 at 20 ms, 2 at 400 ms: the 99th of 100 is in the (250 ms, 500 ms] bucket
    assert 0.25 < search.p99_s <= 0.5  # type: ignore[operator]


def test_advice_renders_every_stage() -> None:
    measured = summarise(list(_worker_readings()), [])
    text = render(advise(measured, 3, 500, 0.02, 1.0))
    assert "sink search" in text and "saturates first:" in text
    assert "for p99 freshness <= 1,000 ms at 100 changes/s" in text


def test_bucket_quantile_interpolates_as_prometheus_does() -> None:
    # 10 in (0, 1], 10 more in (1, 2]: the median is 1, the 75th percentile 1.5
    cumulative = {1.0: 10.0, 2.0: 20.0, float("inf"): 20.0}
    assert bucket_quantile(cumulative, 0.5) == pytest.approx(1.0)
    assert bucket_quantile(cumulative, 0.75) == pytest.approx(1.5)
    assert bucket_quantile({1.0: 0.0, float("inf"): 0.0}, 0.99) is None


def test_no_change_in_the_window_is_said_so() -> None:
    idle = Metrics("capture")
    text = parse(idle.prometheus())
    with pytest.raises(NothingFlowing, match="no change went through"):
        summarise([Reading("capture", "capture", text, text, 5.0)], [])
