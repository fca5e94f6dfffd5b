"""The alert rules load in Prometheus's own checker, and fire as their unit tests say:
``promtool`` from Debian's ``prometheus`` package, unpacked into the cache (nothing is
installed or started)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from pipeline.stack.install import apt_tool

pytestmark = pytest.mark.integration

FOLDER = Path(__file__).resolve().parents[2] / "ops" / "prometheus"


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    tool = apt_tool("prometheus", "promtool")
    return subprocess.run([str(tool), *args], cwd=FOLDER, capture_output=True, text=True,
                          timeout=120)


def test_the_rules_are_valid() -> None:
    result = _promtool("check", "rules", "cdc-alerts.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_each_alert_fires_on_its_series_and_only_after_its_for() -> None:
    result = _promtool("test", "rules", "cdc-alerts.test.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_example_scrape_config_is_valid() -> None:
    result = _promtool("check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 1 rule files found" in result.stdout
