"""A Faust worker's log: Faust's own lines and the pipeline's in one format, each with its
sink; the banner off by default."""

from __future__ import annotations

import json

import pytest

from tests.integration.scenario import Scenario

pytestmark = pytest.mark.integration


def test_faust_lines_and_ours_are_one_json_format_tagged_with_the_sink(
    scenario: Scenario,
) -> None:
    sc = scenario
    sc.env.update({"CDC_WORKER__ENGINE": "faust", "CDC_LOG_FORMAT": "json",
                   "CDC_LOG_LEVEL": "INFO"})
    sc.start("capture")
    sc.start("worker")
    sc.execute("INSERT INTO items VALUES (1, 'logged', 1, 1)")
    assert sc.converged(120), sc.processes["worker"].tail()
    sc.processes["worker"].stop()
    lines = [line for line in (sc.work / "worker.log").read_text().splitlines()
             if line.strip()]
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except ValueError:
            pytest.fail(f"a worker line is not JSON: {line!r}")
    faust_lines = [r for r in records if r["logger"].split(".")[0] in ("faust", "mode")]
    assert faust_lines, sorted({r["logger"] for r in records})  # Faust's own, reformatted
    # every line but the supervisor's (`cdc worker` starting and stopping one per sink)
    sinks = {r.get("sink") for r in records
             if r["logger"] not in ("pipeline.workers", "pipeline.compose")}
    assert sinks <= {"search", "cache"} and sinks, sinks
    assert not any("ƒaµS†" in line for line in lines)  # the banner
