"""The snapshot bench's report: the median round stands for each reader, and every round and
the servers' CPU beside it are shown."""

from __future__ import annotations

from bench.common import median_round
from bench.report import snapshot_rows


def _run(rate: float, kafka: float) -> dict[str, object]:
    return {"rows": 1000, "rows_per_s": rate, "rows_per_s_from_start": rate / 2,
            "chunk_size": 2048, "cpu_ms_per_1k_rows": 30.0, "peak_rss_mb": 100.0,
            "kafka_cpu_ms_per_1k_rows": kafka, "postgres_cpu_ms_per_1k_rows": 11.0,
            "machine_busy_cores": 1.9}


def test_the_ratio_is_of_the_median_rounds_and_every_round_is_listed() -> None:
    ours = median_round([_run(40_000.0, 20.0), _run(30_000.0, 21.0),
                         {**_run(35_000.0, 22.0), "threads_cpu_ms_per_1k_rows": {
                             "rdk:broker1": 12.5, "main": 17.0}}], "rows_per_s")
    theirs = median_round([_run(14_000.0, 18.0), _run(9_000.0, 17.0), _run(11_000.0, 16.0)],
                          "rows_per_s")
    table = {"rows": 1000, "row_bytes": 4000, "ours": {"2048": ours}, "debezium": theirs}
    got = {name: (value, note) for name, value, note in
           snapshot_rows({"snapshot": {"tables": {"wide": table}}})}
    ours_row = got["snapshot 1,000 rows of ~4,000 B: ours, chunk 2048, 1 reader(s)"]
    assert ours_row[0] == "35,000 rows/s"
    assert "median of 40,000, 30,000, 35,000" in ours_row[1]
    assert "Kafka broker 22.0, PostgreSQL 11.0 CPU-ms/1k rows" in ours_row[1]
    assert "(threads: main 17.0, rdk:broker1 12.5)" in ours_row[1]  # the busiest first
    debezium_row = got["snapshot 1,000 rows of ~4,000 B: Debezium"]
    assert debezium_row[0] == "11,000 rows/s"
    assert "median of 14,000, 9,000, 11,000" in debezium_row[1]
    (ratio,) = [v for k, (v, _n) in got.items() if k.endswith("median rounds")]
    assert ratio == "3.18x"  # 35,000 / 11,000: the medians, not the best rounds (40k / 14k)


def test_a_single_round_adds_no_rounds_note() -> None:
    one = median_round([_run(40_000.0, 20.0)], "rows_per_s")
    table = {"rows": 1000, "row_bytes": 200, "ours": {"2048": one}}
    (row,) = snapshot_rows({"snapshot": {"tables": {"narrow": table}}})
    assert "median of" not in row[2]


def test_threads_cpu_sums_a_live_process_by_role() -> None:
    import os
    import threading

    from bench.common import threads_cpu

    done = threading.Event()
    helper = threading.Thread(target=done.wait, name="helper")
    helper.start()
    try:
        sum(i * i for i in range(300_000))  # some CPU on the main thread
        got = threads_cpu(os.getpid())
    finally:
        done.set()
        helper.join()
    assert got["main"] > 0
    assert set(got) >= {"main"} and all(v >= 0 for v in got.values())
