"""The queueing model of ``cdc tune`` against textbook M/M/1 and M/M/c values (worked by
hand from the formulas, not from the code) and a simulated M/M/2 queue."""

from __future__ import annotations

import math
import random

import pytest

from pipeline.tune.model import (
    UTILISATION_CEILING,
    Layout,
    SinkCosts,
    batch_events,
    erlang_c,
    mmc,
    predict_capture,
    predict_sink,
    recommend,
    saturates_first,
    worker_share,
)


def test_mm1_textbook_values() -> None:
    # lambda 2/s, mu 3/s: rho 2/3, Wq = rho/(mu-lambda) = 2/3 s, W = 1/(mu-lambda) = 1 s,
    # P(wait) = rho, and the sojourn is Exp(mu - lambda): p99 = ln(100) s.
    q = mmc(2.0, 3.0, 1)
    assert q.utilisation == pytest.approx(2 / 3)
    assert q.wait_probability == pytest.approx(2 / 3)
    assert q.mean_wait_s == pytest.approx(2 / 3)
    assert q.mean_sojourn_s == pytest.approx(1.0)
    assert q.sojourn_quantile(0.99) == pytest.approx(math.log(100), rel=1e-6)
    assert q.sojourn_tail(1.0) == pytest.approx(math.exp(-1.0))


def test_mm2_textbook_values() -> None:
    # c = 2, lambda 1.5, mu 1: a = 1.5, rho = 0.75;
    # P0 = 1 / (1 + 1.5 + 1.5^2 / (2! * 0.25)) = 1/7; C = (1.5^2/2!) / 0.25 * P0 = 4.5/7;
    # Wq = C / (c*mu - lambda) = 9/7 s; Lq = lambda * Wq = 27/14 (Little's law).
    q = mmc(1.5, 1.0, 2)
    assert q.utilisation == pytest.approx(0.75)
    assert q.wait_probability == pytest.approx(4.5 / 7)
    assert q.mean_wait_s == pytest.approx(9 / 7)
    assert q.mean_sojourn_s == pytest.approx(9 / 7 + 1)
    assert q.arrival * q.mean_wait_s == pytest.approx(27 / 14)


def test_erlang_c_three_servers() -> None:
    # c = 3, a = 2: P0 = 1 / (1 + 2 + 2 + 8/6 / (1 - 2/3)) = 1/9; C = (8/6) / (1/3) / 9 = 4/9
    assert erlang_c(3, 2.0) == pytest.approx(4 / 9)
    assert erlang_c(1, 0.5) == pytest.approx(0.5)  # M/M/1: P(wait) = rho
    assert erlang_c(2, 2.0) == 1.0  # unstable
    assert erlang_c(200, 150.0) < 1  # no overflow with many servers


def test_unstable_queue_is_infinite() -> None:
    q = mmc(3.0, 3.0, 1)
    assert not q.stable
    assert math.isinf(q.mean_sojourn_s) and math.isinf(q.sojourn_quantile())


def test_mm2_sojourn_p99_matches_a_simulation() -> None:
    """The exact M/M/c tail (Erlang C wait + service) against 200k simulated customers."""
    rng = random.Random(7)
    lam, mu, servers = 1.5, 1.0, 2
    free_at = [0.0] * servers
    t = 0.0
    sojourns = []
    for _ in range(200_000):
        t += rng.expovariate(lam)
        i = min(range(servers), key=free_at.__getitem__)
        start = max(t, free_at[i])
        free_at[i] = start + rng.expovariate(mu)
        sojourns.append(free_at[i] - t)
    sojourns = sorted(sojourns[10_000:])
    simulated = sojourns[int(0.99 * len(sojourns))]
    assert mmc(lam, mu, servers).sojourn_quantile(0.99) == pytest.approx(simulated, rel=0.08)


def test_worker_share_follows_whole_partitions() -> None:
    assert worker_share(3, 1) == 1
    assert worker_share(3, 2) == pytest.approx(2 / 3)  # one worker has two of three
    assert worker_share(4, 2) == pytest.approx(1 / 2)
    assert worker_share(3, 5) == pytest.approx(1 / 3)  # two workers sit idle


def test_a_batch_holds_what_arrives_during_one_wait_and_one_write() -> None:
    costs = SinkCosts(per_batch_s=0.01, per_event_s=0.0001)
    layout = Layout(partitions=1, workers=1, batch_size=500, batch_wait_s=0.02)
    b, fill = batch_events(1000.0, costs, layout)
    assert b == pytest.approx(1000.0 * (0.02 + costs.batch_s(b)))
    assert fill == 0.02
    # at 8000/s the batch fills before the wait ends: full batches, open 500/8000 s minus
    # the write of the batch before
    b, fill = batch_events(8000.0, costs, layout)
    assert b == 500 and fill == pytest.approx(500 / 8000 - costs.batch_s(500))


def test_sink_saturates_at_full_batches() -> None:
    costs = SinkCosts(per_batch_s=0.01, per_event_s=0.0001)
    layout = Layout(partitions=3, workers=1, batch_size=500, batch_wait_s=0.02)
    # one worker: 500 events per 0.01 + 0.05 s = 8333/s
    assert predict_sink(100, costs, layout).saturation_rate == pytest.approx(500 / 0.06)
    below = predict_sink(5000, costs, layout)
    assert below.queue.stable and below.p99_s < 1
    assert math.isinf(predict_sink(9000, costs, layout).p99_s)
    # p99 grows with load
    assert predict_sink(1000, costs, layout).p99_s < predict_sink(7000, costs, layout).p99_s


def test_capture_keeps_its_measured_fixed_cost() -> None:
    now = predict_capture(1000, 0.0002, measured_rate=1000, measured_p99_s=0.012)
    assert now.p99_s == pytest.approx(0.012)
    assert now.utilisation == pytest.approx(0.2)
    later = predict_capture(4000, 0.0002, measured_rate=1000, measured_p99_s=0.012)
    assert later.p99_s > 0.012 and later.utilisation == pytest.approx(0.8)
    assert later.saturation_rate == pytest.approx(5000)


def test_recommendation_adds_workers_and_partitions_for_a_load_one_cannot_carry() -> None:
    costs = SinkCosts(per_batch_s=0.02, per_event_s=0.0004)  # ~2400/s per worker at most
    current = Layout(partitions=3, workers=1, batch_size=500, batch_wait_s=0.02)
    capture = predict_capture(6000, 0.00005, 6000, 0.01)
    rec = recommend(6000, {"search": costs}, current, 2.0, capture)
    search = rec.sinks["search"]
    assert rec.met
    assert search.layout.workers >= 4 and rec.partitions >= search.layout.workers
    assert search.load <= UTILISATION_CEILING
    assert capture.p99_s + search.p99_s <= 2.0


def test_recommendation_says_when_the_target_cannot_be_met() -> None:
    costs = SinkCosts(per_batch_s=0.05, per_event_s=0.0001)
    current = Layout(partitions=3, workers=1, batch_size=500, batch_wait_s=0.02)
    capture = predict_capture(100, 0.0001, 100, 0.2)
    rec = recommend(100, {"search": costs}, current, 0.1, capture)  # capture alone: 200 ms
    assert not rec.met


def test_the_stage_with_the_lowest_saturation_rate_saturates_first() -> None:
    capture = predict_capture(1000, 0.0001, 1000, 0.01)  # saturates at 10k/s
    slow = predict_sink(1000, SinkCosts(0.01, 0.0002),
                        Layout(3, 1, 500, 0.02))  # 500 / 0.11 s = 4545/s
    fast = predict_sink(1000, SinkCosts(0.001, 0.00002), Layout(3, 1, 500, 0.02))
    name, rate = saturates_first(capture, [("search", slow), ("cache", fast)])
    assert name == "sink search" and rate == pytest.approx(500 / 0.11)
