"""Logging: log_level from the settings file honoured (the flag still wins), the JSON
format, and capture's periodic throughput line."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from pipeline import logs
from pipeline.capture.throughput import ThroughputLog, hms
from pipeline.cli import main


@pytest.fixture(autouse=True)
def _restore_root() -> Iterator[None]:
    root = logging.getLogger()
    level, formatters = root.level, [h.formatter for h in root.handlers]
    yield
    root.setLevel(level)
    for handler, formatter in zip(root.handlers, formatters, strict=False):
        handler.setFormatter(formatter)


def _config(tmp_path: Path, text: str) -> str:
    path = tmp_path / "cdc.yml"
    path.write_text("postgres:\n  tables: [public.orders]\n" + text)
    return str(path)


def test_log_level_from_the_settings_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CDC_LOG_LEVEL", raising=False)
    result = CliRunner().invoke(main, ["-c", _config(tmp_path, "log_level: WARNING\n"), "config"])
    assert result.exit_code == 0, result.output
    assert logging.getLogger().level == logging.WARNING


def test_the_environment_wins_over_the_settings_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CDC_LOG_LEVEL", "ERROR")
    result = CliRunner().invoke(main, ["-c", _config(tmp_path, "log_level: WARNING\n"), "config"])
    assert result.exit_code == 0, result.output
    assert logging.getLogger().level == logging.ERROR


def test_the_flag_wins_over_the_settings_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CDC_LOG_LEVEL", raising=False)
    config = _config(tmp_path, "log_level: WARNING\n")
    result = CliRunner().invoke(main, ["-c", config, "--log-level", "debug", "config"])
    assert result.exit_code == 0, result.output
    assert logging.getLogger().level == logging.DEBUG


def test_json_format_from_the_settings_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CDC_LOG_FORMAT", raising=False)
    result = CliRunner().invoke(main, ["-c", _config(tmp_path, "log_format: json\n"), "config"])
    assert result.exit_code == 0, result.output
    assert all(isinstance(h.formatter, logs.JsonFormatter) for h in logging.getLogger().handlers)


def test_json_lines() -> None:
    formatter = logs.JsonFormatter()
    record = logging.LogRecord("pipeline.capture", logging.WARNING, __file__, 1,
                               "slot %s lags", ("s1",), None)
    record.sink = "search"
    line = json.loads(formatter.format(record))
    assert line["level"] == "WARNING" and line["logger"] == "pipeline.capture"
    assert line["message"] == "slot s1 lags" and line["sink"] == "search"
    assert line["time"].endswith("Z") and "T" in line["time"]
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        record.exc_info = sys.exc_info()
    assert "ValueError: boom" in json.loads(formatter.format(record))["exception"]


def test_throughput_line_like_debezium(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    tp = ThroughputLog("logical", 60.0, clock=lambda: now[0])
    tp.add(500)
    now[0] = 30.0
    assert tp.tick("0/16B3748") is None  # not yet a minute
    tp.add(734)
    now[0] = 60.0
    with caplog.at_level(logging.INFO, logger="pipeline.capture"):
        line = tp.tick("0/16B3748")
    assert line == ("logical: 1234 records sent during previous 00:01:00, "
                    "last confirmed position 0/16B3748")
    assert line in caplog.text
    now[0] = 125.0
    assert tp.tick("0/16B3748") is None  # nothing sent: no line
    assert ThroughputLog("x", None).tick(1) is None
    assert hms(3725) == "01:02:05"


def test_a_sink_worker_tags_every_line() -> None:
    root = logging.getLogger()
    logs.configure("INFO", "text", sink="search")
    record = logging.LogRecord("pipeline.kafka", logging.INFO, __file__, 1, "wrote %d", (5,), None)
    (handler,) = root.handlers[:1]
    assert handler.filter(record)
    assert handler.format(record).endswith("INFO [search] pipeline.kafka: wrote 5")
    logs.configure("INFO", "json", sink="search")
    assert handler.filter(record)
    assert json.loads(handler.format(record))["sink"] == "search"
    logs.configure("INFO", "text")
    plain = logging.LogRecord("x", logging.INFO, __file__, 1, "m", None, None)
    assert handler.filter(plain) and not hasattr(plain, "sink")
    assert handler.format(plain).endswith("INFO x: m")
