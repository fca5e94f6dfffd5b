"""RetryingSink (transient failures retried with capped backoff) and MeasuredSink (counts)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import pytest

from pipeline.errors import (
    BadDataError,
    ConfigError,
    PermanentError,
    RetriableError,
    SinkRejectedError,
    SinkUnavailableError,
)
from pipeline.events import ChangeEvent, SourceInfo
from pipeline.metrics import Metrics
from pipeline.sinks import base
from pipeline.sinks.base import MeasuredSink, Rejection, RetryingSink


def _event(i: int, snapshot: str = "false", age_s: float = 0.0) -> ChangeEvent:
    ts_us = int((time.time() - age_s) * 1e6)
    src = SourceInfo(connector="postgresql", name="n", db="d", schema="public", table="t",
                     ts_us=ts_us, lsn=100 + i, snapshot=snapshot)
    return ChangeEvent("c", {"id": i}, None, {"id": i}, src)


class ScriptedSink:
    """Raises the scripted errors one per call, then returns ``result``."""

    name = "fake"

    def __init__(self, errors: Sequence[BaseException] = (), result: list[Rejection] | None = None):
        self.errors = list(errors)
        self.result = result or []
        self.calls: list[list[ChangeEvent]] = []
        self.closed = False

    async def write(self, batch: Sequence[ChangeEvent]) -> list[Rejection]:
        self.calls.append(list(batch))
        if self.errors:
            raise self.errors.pop(0)
        return self.result

    async def close(self) -> None:
        self.closed = True


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    recorded: list[float] = []

    async def no_wait(seconds: float) -> None:
        recorded.append(seconds)

    monkeypatch.setattr(base.asyncio, "sleep", no_wait)
    return recorded


def test_retries_until_success(sleeps: list[float]) -> None:
    inner = ScriptedSink([SinkUnavailableError("down"), RetriableError("slow"),
                          SinkUnavailableError("down")])
    metrics = Metrics("test")
    sink = RetryingSink(inner, initial_s=0.1, max_s=5.0, metrics=metrics)
    batch = [_event(1), _event(2)]
    assert asyncio.run(sink.write(batch)) == []
    assert len(inner.calls) == 4
    assert all(call == batch for call in inner.calls)  # the same batch each time
    assert len(sleeps) == 3
    assert metrics.total("cdc_sink_retries_total") == 3
    assert sink.name == "fake"


def test_backoff_grows_and_is_capped(sleeps: list[float]) -> None:
    inner = ScriptedSink([SinkUnavailableError("down")] * 8)
    sink = RetryingSink(inner, initial_s=0.1, max_s=0.5, metrics=Metrics("t"))
    asyncio.run(sink.write([_event(1)]))
    nominal = [0.1, 0.2, 0.4, 0.5, 0.5, 0.5, 0.5, 0.5]
    assert len(sleeps) == len(nominal)
    for slept, delay in zip(sleeps, nominal, strict=True):
        assert delay * 0.5 - 1e-9 <= slept <= delay + 1e-9  # jitter within [d/2, d]


@pytest.mark.parametrize("error", [PermanentError("auth"), ConfigError("redis.url", "bad")])
def test_environment_errors_propagate_at_once(sleeps: list[float], error: Exception) -> None:
    inner = ScriptedSink([error])
    sink = RetryingSink(inner, initial_s=0.1, max_s=1.0, metrics=Metrics("t"))
    with pytest.raises(type(error)):
        asyncio.run(sink.write([_event(1), _event(2)]))
    assert len(inner.calls) == 1  # not retried, not split: the data is not to blame
    assert sleeps == []


class PickySink:
    """Raises ``error`` for any batch holding one of the ``bad`` ids; remembers what it wrote."""

    name = "picky"

    def __init__(self, bad: set[int], error: Exception) -> None:
        self.bad = bad
        self.error = error
        self.written: list[int] = []
        self.calls = 0

    async def write(self, batch: Sequence[ChangeEvent]) -> list[Rejection]:
        self.calls += 1
        if any(e.key["id"] in self.bad for e in batch):  # type: ignore[index]
            raise self.error
        self.written.extend(e.key["id"] for e in batch)  # type: ignore[index]
        return []

    async def close(self) -> None:
        pass


@pytest.mark.parametrize("error", [ValueError("unexpected"), KeyError("price"),
                                   BadDataError("bad"), SinkRejectedError("bad", sink="picky")])
def test_a_raising_event_is_isolated_and_rejected(sleeps: list[float], error: Exception) -> None:
    # Neither retried forever nor blamed on the whole batch: the good events are written.
    inner = PickySink(bad={3}, error=error)
    metrics = Metrics("t")
    sink = RetryingSink(inner, initial_s=0.1, max_s=1.0, metrics=metrics)
    rejected = asyncio.run(sink.write([_event(i) for i in range(8)]))
    assert [r.index for r in rejected] == [3]
    assert isinstance(rejected[0].error, BadDataError)
    assert str(error) in str(rejected[0].error)
    if not isinstance(error, BadDataError):
        assert type(error).__name__ in str(rejected[0].error)
        assert rejected[0].error.__cause__ is error
    assert sorted(inner.written) == [0, 1, 2, 4, 5, 6, 7]
    assert inner.calls <= 1 + 2 * 3  # a bisection: a few writes per level, not one per event
    assert sleeps == []
    assert metrics.total("cdc_sink_rejected_total") == 1


def test_every_event_raising_ends_with_every_event_rejected(sleeps: list[float]) -> None:
    inner = PickySink(bad=set(range(5)), error=ValueError("bug"))
    rejected = asyncio.run(RetryingSink(inner, 0.1, 1.0, Metrics("t")).write(
        [_event(i) for i in range(5)]))
    assert [r.index for r in rejected] == [0, 1, 2, 3, 4]
    assert inner.written == []


def test_outage_while_isolating_is_retried_not_rejected(sleeps: list[float]) -> None:
    inner = PickySink(bad={0}, error=ValueError("bad row"))
    outages = {(2, 3): 2}  # the half without the bad row meets an outage, twice
    write = inner.write

    async def flaky_write(batch: Sequence[ChangeEvent]) -> list[Rejection]:
        ids = tuple(e.key["id"] for e in batch)  # type: ignore[index]
        if outages.get(ids):
            outages[ids] -= 1
            raise SinkUnavailableError("down")
        return await write(batch)

    inner.write = flaky_write  # type: ignore[method-assign]
    sink = RetryingSink(inner, initial_s=0.1, max_s=1.0, metrics=Metrics("t"))
    rejected = asyncio.run(sink.write([_event(0), _event(1), _event(2), _event(3)]))
    assert [r.index for r in rejected] == [0]
    assert sorted(inner.written) == [1, 2, 3]
    assert len(sleeps) == 2


def test_untranslated_io_errors_are_retried(sleeps: list[float]) -> None:
    inner = ScriptedSink([ConnectionResetError("reset"), TimeoutError()])
    sink = RetryingSink(inner, initial_s=0.1, max_s=1.0, metrics=Metrics("t"))
    assert asyncio.run(sink.write([_event(1), _event(2)])) == []
    assert len(inner.calls) == 3 and all(len(c) == 2 for c in inner.calls)


def test_rejections_pass_through(sleeps: list[float]) -> None:
    rejection = Rejection(0, SinkRejectedError("mapping", sink="fake"))
    sink = RetryingSink(ScriptedSink(result=[rejection]), 0.1, 1.0, Metrics("t"))
    assert asyncio.run(sink.write([_event(1)])) == [rejection]


def test_close_reaches_inner() -> None:
    inner = ScriptedSink()
    asyncio.run(RetryingSink(inner, 0.1, 1.0, Metrics("t")).close())
    assert inner.closed
    inner2 = ScriptedSink()
    asyncio.run(MeasuredSink(inner2, Metrics("t")).close())
    assert inner2.closed


def test_measured_sink_counts_written_and_rejected() -> None:
    rejection = Rejection(1, SinkRejectedError("bad", sink="fake"))
    metrics = Metrics("test")
    sink = MeasuredSink(ScriptedSink(result=[rejection]), metrics)
    batch = [_event(0), _event(1), _event(2)]
    assert asyncio.run(sink.write(batch)) == [rejection]
    assert metrics.counters[("cdc_sink_events_total", (("sink", "fake"),))] == 2
    assert metrics.counters[("cdc_sink_rejected_total", (("sink", "fake"),))] == 1
    hist = metrics.histograms[("cdc_sink_batch_latency", (("sink", "fake"),))]
    assert hist.total == 1
    # commit-to-sink latency only for the events that were written
    assert metrics.histograms[("cdc_commit_to_sink_latency", (("sink", "fake"),))].total == 2


def test_measured_sink_no_rejected_counter_when_all_ok() -> None:
    metrics = Metrics("test")
    asyncio.run(MeasuredSink(ScriptedSink(), metrics).write([_event(0)]))
    assert metrics.total("cdc_sink_events_total") == 1
    assert metrics.total("cdc_sink_rejected_total") == 0


def test_commit_to_sink_latency_reflects_event_age_and_skips_snapshot() -> None:
    metrics = Metrics("test")
    batch = [_event(0, age_s=2.0), _event(1, snapshot="true", age_s=3600)]
    asyncio.run(MeasuredSink(ScriptedSink(), metrics).write(batch))
    hist = metrics.histograms[("cdc_commit_to_sink_latency", (("sink", "fake"),))]
    assert hist.total == 1  # the snapshot row's commit time says nothing about lag
    p50 = hist.quantile(0.5)
    assert p50 is not None and 2000 <= p50 <= 2000 * 1.1 + 500


def test_measured_sink_lets_errors_through_without_counting() -> None:
    metrics = Metrics("test")
    sink = MeasuredSink(ScriptedSink([SinkUnavailableError("down")]), metrics)
    with pytest.raises(SinkUnavailableError):
        asyncio.run(sink.write([_event(0)]))
    assert metrics.total("cdc_sink_events_total") == 0


@pytest.mark.parametrize("traits", [{}, {"takes_stale_reads": True, "drains_per_partition": False}])
def test_wrapped_as_a_worker_wraps_it_the_sink_keeps_what_it_declares(
        traits: dict[str, bool]) -> None:
    """A worker sees its sink through the wrappers: what the sink declares (or the defaults,
    when it declares nothing) must reach through all of them."""
    from pipeline.sinks.outage import OutageLimit

    inner = ScriptedSink()
    for trait, value in traits.items():
        setattr(inner, trait, value)
    wrapped = RetryingSink(OutageLimit(MeasuredSink(inner, Metrics("t")), 60.0), 0.1, 1.0,
                           Metrics("t"))
    for trait, default in base.TRAITS.items():
        assert getattr(wrapped, trait) is traits.get(trait, default), trait



def test_a_worker_drains_per_partition_unless_a_sink_says_its_writes_are_quick() -> None:
    """Both engines take their drain mode from here: one sink declaring False is enough
    (its writes would otherwise be split per partition for nothing); a sink declaring
    nothing waits on the network as far as the worker knows."""
    quick = ScriptedSink()
    quick.drains_per_partition = False  # type: ignore[attr-defined]
    assert base.drains_per_partition([ScriptedSink()]) is True
    assert base.drains_per_partition([quick]) is False
    assert base.drains_per_partition([ScriptedSink(), quick]) is False
    wrapped = RetryingSink(MeasuredSink(quick, Metrics("t")), 0.1, 1.0, Metrics("t"))
    assert base.drains_per_partition([wrapped]) is False
