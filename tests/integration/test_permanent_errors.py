"""Issue 9, item 6: a sink refusing the credentials stops its worker with exit code 3 and
the reason (it used to be retried for ever, so systemd or Kubernetes never saw it)."""

from __future__ import annotations

import pytest

from pipeline.errors import EXIT_PERMANENT
from pipeline.harness import PipelineProcess, wait_until
from tests.integration.scenario import Scenario

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("engine", ["faust", "kafka"])
def test_redis_refusing_the_password_stops_the_worker(scenario: Scenario, engine: str) -> None:
    sc = scenario
    sc.start("capture")
    # The local Redis knows no user "nobody": AUTH as it is refused.
    url = sc.settings.redis.url.get_secret_value()  # type: ignore[union-attr]
    env = {**sc.env, "CDC_WORKER__ENGINE": engine,
           "CDC_REDIS__URL": url.replace("redis://", "redis://nobody:wrong-password@")}
    worker = PipelineProcess("worker --sink cache", env, sc.work / "worker.log")
    try:
        sc.execute("INSERT INTO items VALUES (1, 'a', 1, 1.5)")
        assert wait_until(lambda: not worker.alive(), 90), worker.tail()
        assert worker.proc.returncode == EXIT_PERMANENT, worker.tail()
        assert "Redis refused the credentials" in worker.tail(200)
        assert "wrong-password" not in worker.tail(2000)
    finally:
        worker.stop()


def test_the_supervisor_stops_when_a_child_fails_for_good(scenario: Scenario) -> None:
    sc = scenario
    sc.start("capture")
    url = sc.settings.redis.url.get_secret_value()  # type: ignore[union-attr]
    sc.env["CDC_REDIS__URL"] = url.replace("redis://", "redis://nobody:wrong-password@")
    supervisor = sc.start("worker")
    sc.execute("INSERT INTO items VALUES (1, 'a', 1, 1.5)")
    assert wait_until(lambda: not supervisor.alive(), 120), supervisor.tail()
    assert supervisor.proc.returncode == EXIT_PERMANENT, supervisor.tail()
    assert "worker for sink cache stopped with a permanent error" in supervisor.tail(400)


def test_a_sink_outage_is_retried_only_as_long_as_errors_retry_timeout_s(
        scenario: Scenario) -> None:
    sc = scenario
    sc.start("capture")
    url = sc.settings.redis.url.get_secret_value()  # type: ignore[union-attr]
    env = {**sc.env, "CDC_ERRORS__RETRY_TIMEOUT_S": "3",
           "CDC_REDIS__URL": url.rsplit(":", 1)[0] + ":1/0"}  # nothing listens on port 1
    worker = PipelineProcess("worker --sink cache", env, sc.work / "worker.log")
    try:
        sc.execute("INSERT INTO items VALUES (1, 'a', 1, 1.5)")
        assert wait_until(lambda: not worker.alive(), 90), worker.tail()
        assert worker.proc.returncode == EXIT_PERMANENT, worker.tail()
        assert "gave up after" in worker.tail(200) and "Redis unavailable" in worker.tail(200)
    finally:
        worker.stop()
