"""The worker bench's rounds: no engine always drains first, and the median round counts."""

from __future__ import annotations

from bench.common import median_round
from bench.worker import ENGINES, round_order


def test_every_engine_drains_first_once_in_as_many_rounds_as_engines() -> None:
    orders = [round_order(r) for r in range(len(ENGINES))]
    assert all(sorted(o) == sorted(ENGINES) for o in orders)
    assert sorted(o[0] for o in orders) == sorted(ENGINES)


def test_the_median_round_stands_for_the_engine_and_every_round_is_kept() -> None:
    runs = [{"events_per_s": 300.0, "seconds": 1}, {"events_per_s": 100.0, "seconds": 3},
            {"events_per_s": 200.0, "seconds": 2}]
    got = median_round(runs, "events_per_s")
    assert got["events_per_s"] == 200.0 and got["seconds"] == 2
    assert got["rounds_events_per_s"] == [300.0, 100.0, 200.0]
    # With two rounds the slower one counts (no averaged figure that no run produced).
    assert median_round(runs[:2], "events_per_s")["events_per_s"] == 100.0
