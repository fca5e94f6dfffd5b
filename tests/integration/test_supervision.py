"""Issue 9, item 6, against the real servers: `cdc worker` children die with a SIGKILLed
supervisor, and with `metrics.port` set every child serves its own `/metrics`."""

from __future__ import annotations

import os
import random
import signal
import time
from functools import partial
from pathlib import Path

import httpx
import pytest

from pipeline.harness import wait_until
from pipeline.stack.ports import is_port_free
from tests.integration.scenario import Scenario

pytestmark = pytest.mark.integration


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(c) for c in path.read_text().split()] if path.exists() else []


def _alive(pid: int) -> bool:
    stat = Path(f"/proc/{pid}/stat")
    try:
        return not stat.read_text().split(") ")[-1].startswith("Z")
    except OSError:
        return False


def _serves_metrics(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _free_run(count: int) -> int:
    """The first of ``count`` consecutive free ports."""
    start = random.randrange(20_000, 50_000)
    return next(p for p in range(start, 60_000) if all(is_port_free(p + i)
                                                       for i in range(count)))


def test_children_serve_own_metrics_and_die_with_a_sigkilled_supervisor(
        scenario: Scenario) -> None:
    sc = scenario
    base = _free_run(4)  # capture's (unused here) and the three children's
    sc.env["CDC_METRICS__PORT"] = str(base)
    sc.env["CDC_SINKS__AUDIT__TYPE"] = "webhook"
    sc.env["CDC_SINKS__AUDIT__URL"] = "http://127.0.0.1:1/hook"
    supervisor = sc.start("worker")
    children: list[int] = []
    try:
        assert wait_until(lambda: len(_children(supervisor.proc.pid)) == 3, 60), \
            supervisor.tail()
        children = _children(supervisor.proc.pid)
        # search, cache, audit: metrics.port + 1, + 2, + 3, each its own process
        for port in range(base + 1, base + 4):
            assert wait_until(partial(_serves_metrics, port), 90), (port, supervisor.tail())
        assert all(supervisor.alive() and _alive(c) for c in children), supervisor.tail()

        os.kill(supervisor.proc.pid, signal.SIGKILL)  # the supervisor only, not its group
        supervisor.proc.wait(10)
        assert wait_until(lambda: not any(_alive(c) for c in children), 40), \
            [c for c in children if _alive(c)]
    finally:
        for c in children:
            if _alive(c):
                os.kill(c, signal.SIGKILL)


def test_sigterm_stops_the_supervisor_promptly_and_starts_no_child(scenario: Scenario) -> None:
    """It used to take ~20 s, sleeping in a restart backoff and starting one more child."""
    sc = scenario
    sc.env["CDC_SINKS__AUDIT__TYPE"] = "webhook"
    sc.env["CDC_SINKS__AUDIT__URL"] = "http://127.0.0.1:1/hook"
    supervisor = sc.start("worker")
    assert wait_until(lambda: len(_children(supervisor.proc.pid)) == 3, 60), supervisor.tail()
    time.sleep(5)  # the children are up and joined their groups
    crashed = _children(supervisor.proc.pid)[0]
    os.kill(crashed, signal.SIGKILL)  # a crash: the supervisor enters its restart backoff
    assert wait_until(lambda: "restarting in" in supervisor.tail(200), 10), supervisor.tail()
    before = set(_children(supervisor.proc.pid))
    started = time.monotonic()
    os.kill(supervisor.proc.pid, signal.SIGTERM)
    supervisor.proc.wait(40)
    took = time.monotonic() - started
    assert took < 15, (took, supervisor.tail())
    assert not any(_alive(c) for c in before)
    # The three first starts, and no restart of the crashed one after the SIGTERM.
    assert supervisor.tail(2000).count("started the worker for sink") == 3, supervisor.tail()
