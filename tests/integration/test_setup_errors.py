"""Misconfiguration stops capture at once with a message that says what to fix."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.integration.scenario import Scenario

pytestmark = pytest.mark.integration


def _capture(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "capture"],
        env={**os.environ, **env}, capture_output=True, text=True, timeout=60,
    )


def test_role_without_replication_rights_is_named(scenario: Scenario) -> None:
    role = f"norep_{scenario.uid}"
    scenario.execute(f"CREATE ROLE {role} LOGIN")
    dsn = scenario.dsn.replace("user=postgres", f"user={role}")
    result = _capture({**scenario.env, "CDC_POSTGRES__DSN": dsn})
    assert result.returncode == 1
    assert "neither REPLICATION nor SUPERUSER" in result.stderr
    assert "ALTER ROLE" in result.stderr


def test_table_without_primary_key_is_named(scenario: Scenario) -> None:
    scenario.execute(f"CREATE TABLE {scenario.schema}.nokey (a int, b text)")
    result = _capture({**scenario.env, "CDC_POSTGRES__TABLES": f"[{scenario.schema}.nokey]"})
    assert result.returncode == 1
    assert f"table '{scenario.schema}.nokey' has no primary key" in result.stderr


def test_missing_table_is_named(scenario: Scenario) -> None:
    result = _capture({**scenario.env, "CDC_POSTGRES__TABLES": f"[{scenario.schema}.nope]"})
    assert result.returncode == 1
    assert f"'{scenario.schema}.nope', which does not exist" in result.stderr


def test_bad_setting_is_named_with_its_problem(scenario: Scenario) -> None:
    result = _capture({**scenario.env, "CDC_KAFKA__PARTITIONS": "0"})
    assert result.returncode == 2
    assert "configuration error in 'kafka.partitions'" in result.stderr
