"""Every Kafka client reaches a cluster that demands SASL/SCRAM-SHA-256, and a wrong
password stops each command with the broker's refusal instead of a hang.

A private broker (``secured_kafka``) whose only client listener is SASL_PLAINTEXT; the rest
of the stack (PostgreSQL, Elasticsearch, Redis) is the shared one.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.config import load_settings
from pipeline.harness import wait_until
from tests.integration.scenario import Scenario
from tests.integration.secured_kafka import MECHANISM, SecuredBroker, start_secured_broker

pytestmark = pytest.mark.integration

USER, PASSWORD = "cdc", "cdc-Scram-Secret-1"


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecuredBroker]:
    secured = start_secured_broker(tmp_path_factory.mktemp("secured-kafka"), {USER: PASSWORD})
    yield secured
    secured.stop()


def _secure(sc: Scenario, broker: SecuredBroker, password: str, engine: str) -> Scenario:
    sc.env.update({
        "CDC_KAFKA__BOOTSTRAP_SERVERS": broker.bootstrap,
        "CDC_KAFKA__CLIENT__SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "CDC_KAFKA__CLIENT__SASL_MECHANISM": MECHANISM,
        "CDC_KAFKA__CLIENT__SASL_USERNAME": USER,
        "CDC_KAFKA__CLIENT__SASL_PASSWORD": password,
        "CDC_WORKER__ENGINE": engine,
    })
    sc.settings = load_settings(None, sc.env)
    return sc


def _cdc(sc: Scenario, *args: str, timeout: float = 120) -> tuple[int, str, float]:
    """Run ``cdc <args>`` to its end: exit code, output, seconds taken."""
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "pipeline.cli", *args],
                          env={**os.environ, **sc.env}, capture_output=True, text=True,
                          timeout=timeout)
    return done.returncode, done.stdout + done.stderr, time.monotonic() - started


@pytest.mark.parametrize("engine", ["faust", "kafka"])
def test_capture_worker_and_status_authenticate(scenario: Scenario, broker: SecuredBroker,
                                                engine: str) -> None:
    sc = _secure(scenario, broker, PASSWORD, engine)
    sc.start("capture")
    sc.start("worker")
    sc.execute("INSERT INTO items VALUES (1, 'one', 1, 1.50), (2, 'two', 2, 2.50)")
    sc.execute("UPDATE items SET qty = 20 WHERE id = 2")
    sc.execute("DELETE FROM items WHERE id = 1")
    assert sc.converged(90), (sc.processes["capture"].tail(), sc.processes["worker"].tail())
    assert sc.indexed() == {"2": {"id": 2, "name": "two", "qty": 20, "price": "2.50"}}
    # capture published through the SCRAM listener: the raw topic holds its records
    assert len(sc.read_topic(sc.topic)) >= 3
    group = sc.settings.group_id("search")
    assert wait_until(lambda: f"consumer lag {group} {sc.topic}: 0" in _cdc(sc, "status")[1],
                      60, 1.0)
    code, out, _ = _cdc(sc, "status")
    assert code == 0, out
    assert "refused" not in out


def test_a_wrong_password_stops_every_command_with_the_refusal(
    scenario: Scenario, broker: SecuredBroker, tmp_path: Path
) -> None:
    sc = _secure(scenario, broker, "not-the-password", "faust")
    commands = {
        "capture": ("capture",),
        "worker (faust)": ("worker", "--sink", "search"),
        "status": ("status",),
        "dlq": ("dlq", "list"),
    }
    for name, args in commands.items():
        code, out, took = _cdc(sc, *args)
        assert code in (1, 3), (name, out)  # 3: a permanent error (refused credentials)
        assert "Kafka refused the connection" in out, (name, out)
        assert "Authentication failed" in out, (name, out)
        assert took < 60, (name, took)
    sc.env["CDC_WORKER__ENGINE"] = "kafka"
    code, out, took = _cdc(sc, "worker", "--sink", "search")
    assert code in (1, 3) and "Kafka refused the connection" in out, out
    assert took < 60, took
