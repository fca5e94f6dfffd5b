"""Issue 9, item 6: outages may be retried for a bounded time (``errors.retry_timeout_s``),
after which the process stops with a permanent error; off by default."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from typing import Any

import pytest

from pipeline.capture.loop import CaptureLoop
from pipeline.config import KafkaSettings, load_settings
from pipeline.errors import (
    EXIT_CONFIG,
    EXIT_PERMANENT,
    ConfigError,
    PermanentError,
    RetriableError,
    SourceSetupError,
    exit_code,
)
from pipeline.events import ChangeEvent, SourceInfo
from pipeline.metrics import Metrics
from pipeline.retry import Backoff
from pipeline.sinks.base import Rejection, RetryingSink
from pipeline.sinks.outage import OutageLimit


class _Unreachable:
    """A source whose server is down: every open fails."""

    name = "down"

    def __init__(self) -> None:
        self.opens = 0

    def open(self) -> list[str]:
        self.opens += 1
        raise RetriableError("PostgreSQL is unreachable: Connection refused")

    def close(self) -> None:
        pass


class _Publisher:
    while_waiting: Any = None

    def flush(self, timeout: float) -> int:
        return 0


def _loop(source: Any, timeout: float | None) -> CaptureLoop:
    return CaptureLoop(source, _Publisher(), KafkaSettings(), Metrics("t"),  # type: ignore[arg-type]
                       backoff=Backoff(0.01, 0.02), create_topics=False,
                       retry_timeout_s=timeout)


def test_capture_gives_up_after_the_retry_timeout() -> None:
    source = _Unreachable()
    started = time.monotonic()
    with pytest.raises(PermanentError, match="errors.retry_timeout_s = 0.3.*Connection refused"):
        _loop(source, 0.3).run(threading.Event())
    assert 0.3 <= time.monotonic() - started < 2
    assert source.opens > 3


def test_capture_retries_for_ever_by_default() -> None:
    source = _Unreachable()
    stop = threading.Event()
    timer = threading.Timer(0.5, stop.set)
    timer.start()
    _loop(source, None).run(stop)  # returns only because of the stop
    assert source.opens > 3


def _event() -> ChangeEvent:
    src = SourceInfo("postgresql", "cdc", "db", "public", "t", ts_us=1, lsn=1)
    return ChangeEvent("c", {"id": 1}, None, {"id": 1}, src)


class _DownSink:
    name = "down"

    def __init__(self, recover_after: int | None = None) -> None:
        self.calls = 0
        self.recover_after = recover_after

    async def write(self, batch: Sequence[ChangeEvent]) -> list[Rejection]:
        self.calls += 1
        if self.recover_after is None or self.calls <= self.recover_after:
            raise RetriableError("Redis unavailable: Connection refused")
        return []

    async def close(self) -> None:
        pass


def test_a_sink_outage_past_the_timeout_is_permanent() -> None:
    sink = RetryingSink(OutageLimit(_DownSink(), 0.2), 0.01, 0.02, Metrics("t"))
    with pytest.raises(PermanentError, match="sink down: gave up.*Connection refused"):
        asyncio.run(asyncio.wait_for(sink.write([_event()]), 5))


def test_a_confirmed_batch_ends_the_outage() -> None:
    inner = _DownSink(recover_after=3)
    limited = OutageLimit(inner, 10)
    sink = RetryingSink(limited, 0.01, 0.02, Metrics("t"))
    assert asyncio.run(sink.write([_event()])) == []
    assert limited._since is None


def test_the_setting_is_off_by_default_and_validated(tmp_path: Any) -> None:
    base = {"CDC_POSTGRES__TABLES": "[public.t]"}
    assert load_settings(None, base).errors.retry_timeout_s is None
    assert load_settings(None, {**base, "CDC_ERRORS__RETRY_TIMEOUT_S": "300"}
                         ).errors.retry_timeout_s == 300
    with pytest.raises(ConfigError, match="errors.retry_timeout_s"):
        load_settings(None, {**base, "CDC_ERRORS__RETRY_TIMEOUT_S": "0"})


def test_exit_codes_tell_a_supervisor_not_to_restart() -> None:
    assert exit_code(ConfigError("x", "y")) == EXIT_CONFIG
    assert exit_code(SourceSetupError("refused")) == EXIT_PERMANENT
    assert exit_code(PermanentError("refused")) == EXIT_PERMANENT
    assert exit_code(RetriableError("down")) == 1


def test_kafka_refusing_credentials_is_permanent_and_an_outage_retriable() -> None:
    from confluent_kafka import KafkaError, KafkaException

    from pipeline.capture.publisher import kafka_failure

    refused = kafka_failure(KafkaException(KafkaError(KafkaError.SASL_AUTHENTICATION_FAILED)),
                            "Kafka at k:9092")
    assert isinstance(refused, PermanentError) and "refused the credentials" in str(refused)
    denied = kafka_failure(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED), "consuming")
    assert isinstance(denied, PermanentError)
    down = kafka_failure(KafkaException(KafkaError(KafkaError._TRANSPORT)), "Kafka at k:9092")
    assert type(down) is RetriableError
