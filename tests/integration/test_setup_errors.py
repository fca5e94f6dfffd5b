"""Misconfiguration stops capture at once with a message that says what to fix."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from pipeline.errors import EXIT_PERMANENT
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
    assert result.returncode == EXIT_PERMANENT
    assert "neither REPLICATION nor SUPERUSER" in result.stderr
    assert "ALTER ROLE" in result.stderr


def test_table_without_primary_key_is_named(scenario: Scenario) -> None:
    scenario.execute(f"CREATE TABLE {scenario.schema}.nokey (a int, b text)")
    result = _capture({**scenario.env, "CDC_POSTGRES__TABLES": f"[{scenario.schema}.nokey]"})
    assert result.returncode == EXIT_PERMANENT
    assert f"table '{scenario.schema}.nokey' has no primary key" in result.stderr


def test_a_replica_identity_index_without_the_primary_key_is_named(
        scenario: Scenario) -> None:
    table = f"{scenario.schema}.slugs"
    scenario.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, slug text NOT NULL UNIQUE, "
                     "v text); "
                     f"ALTER TABLE {table} REPLICA IDENTITY USING INDEX slugs_slug_key")
    result = _capture({**scenario.env, "CDC_POSTGRES__TABLES": f"[{table}]"})
    assert result.returncode == EXIT_PERMANENT, result.stderr
    assert f"table '{table}' has REPLICA IDENTITY USING INDEX on an index without" \
        in result.stderr
    # an identity index holding the primary key's columns is fine
    scenario.execute(f"CREATE UNIQUE INDEX slugs_both ON {table} (slug, id); "
                     f"ALTER TABLE {table} REPLICA IDENTITY USING INDEX slugs_both")
    from pipeline.sources.postgres.slot import ReplicationSlot

    settings = scenario.settings.postgres.model_copy(update={"tables": (table,)})
    conn = scenario.connect()
    try:
        with conn.cursor() as cur:
            ReplicationSlot(settings)._check_tables(cur)  # no error
    finally:
        conn.close()


def test_missing_table_is_named(scenario: Scenario) -> None:
    result = _capture({**scenario.env, "CDC_POSTGRES__TABLES": f"[{scenario.schema}.nope]"})
    assert result.returncode == EXIT_PERMANENT
    assert f"'{scenario.schema}.nope', which does not exist" in result.stderr


def test_bad_setting_is_named_with_its_problem(scenario: Scenario) -> None:
    result = _capture({**scenario.env, "CDC_KAFKA__PARTITIONS": "0"})
    assert result.returncode == 2
    assert "configuration error in 'kafka.partitions'" in result.stderr


def test_a_wrong_role_is_refused_not_retried(scenario: Scenario) -> None:
    """Issue 9 item 6: a refused login used to be "PostgreSQL is unreachable", retried for
    ever, so systemd or Kubernetes never saw a failure."""
    dsn = scenario.dsn.replace("user=postgres", f"user=nobody_{scenario.uid}")
    started = time.monotonic()
    result = _capture({**scenario.env, "CDC_POSTGRES__DSN": dsn})
    assert result.returncode == EXIT_PERMANENT, result.stderr
    assert time.monotonic() - started < 30
    assert "PostgreSQL refused the login" in result.stderr
    assert f'role "nobody_{scenario.uid}" does not exist' in result.stderr
    assert "unreachable" not in result.stderr


def test_a_missing_database_is_refused_not_retried(scenario: Scenario) -> None:
    dsn = scenario.dsn.replace("dbname=cdc", f"dbname=nodb_{scenario.uid}")
    result = _capture({**scenario.env, "CDC_POSTGRES__DSN": dsn})
    assert result.returncode == EXIT_PERMANENT, result.stderr
    assert f'database "nodb_{scenario.uid}" does not exist' in result.stderr


def test_an_outage_is_retried_only_as_long_as_errors_retry_timeout_s(scenario: Scenario) -> None:
    """Nothing listens on port 1: an outage, retried until the bound, then exit 3."""
    dsn = " ".join(p for p in scenario.dsn.split() if not p.startswith("port=")) + " port=1"
    started = time.monotonic()
    result = _capture({**scenario.env, "CDC_POSTGRES__DSN": dsn,
                       "CDC_ERRORS__RETRY_TIMEOUT_S": "3"})
    assert result.returncode == EXIT_PERMANENT, result.stderr
    assert 3 <= time.monotonic() - started < 30
    assert "gave up after" in result.stderr and "unreachable" in result.stderr
