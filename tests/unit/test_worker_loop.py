"""The worker skeleton both engines share: nothing is committed before the sink confirmed it,
a failing write is retried with the capped backoff, and Faust's internals are checked."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

import pipeline.worker_loop as worker_loop
from agents import faust_internals
from pipeline.errors import ConfigError, SinkUnavailableError
from pipeline.events import ChangeEvent
from pipeline.metrics import Metrics
from pipeline.processing import BatchProcessor
from pipeline.sinks.base import Rejection
from pipeline.worker_loop import WorkerLoop
from tests.unit.test_processing import RecordingDeadLetters, _create


class FlakySink:
    """Fails ``failures`` times, then writes."""

    name = "flaky"

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.written: list[int] = []

    async def write(self, batch: Sequence[ChangeEvent]) -> list[Rejection]:
        if self.failures:
            self.failures -= 1
            raise SinkUnavailableError("down", sink=self.name)
        self.written.extend(e.key["id"] for e in batch if e.key is not None)
        return []

    async def close(self) -> None:
        pass


class Changelog:
    def __init__(self) -> None:
        self.flushes = 0

    async def flush(self) -> None:
        self.flushes += 1


def _loop(sink: FlakySink, retry_max_s: float = 4.0
          ) -> tuple[WorkerLoop[int], list[int], Changelog]:
    committed: list[int] = []

    async def commit(tokens: list[int]) -> None:
        committed.extend(tokens)

    processor = BatchProcessor([sink], RecordingDeadLetters(), Metrics("w"))  # type: ignore[list-item,arg-type]
    changelog = Changelog()
    loop: WorkerLoop[int] = WorkerLoop(processor, changelog, Metrics("w"), commit,
                                       retry_initial_s=0.5, retry_max_s=retry_max_s)
    return loop, committed, changelog


def test_records_are_committed_only_after_the_sink_wrote_them(
        monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []

    async def no_wait(seconds: float) -> None:
        slept.append(seconds)

    monkeypatch.setattr(worker_loop.asyncio, "sleep", no_wait)
    sink = FlakySink(failures=6)
    loop, committed, changelog = _loop(sink)
    loop.accept([(_create(10 + i, i), 10 + i) for i in range(3)])
    asyncio.run(loop.drain())
    assert sink.written == [0, 1, 2]
    assert committed == [10, 11, 12]
    assert changelog.flushes == 1  # flushed once the write succeeded, before the commit
    # 0.5 s doubling, capped at 4 s, each jittered within [d/2, d]
    for seconds, nominal in zip(slept, [0.5, 1, 2, 4, 4, 4], strict=True):
        assert nominal / 2 <= seconds <= nominal
    assert loop.waiting() == 0


def test_after_a_success_the_next_outage_starts_from_the_initial_delay(
        monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []

    async def no_wait(seconds: float) -> None:
        slept.append(seconds)

    monkeypatch.setattr(worker_loop.asyncio, "sleep", no_wait)
    sink = FlakySink(failures=3)
    loop, committed, _ = _loop(sink)
    loop.accept([(_create(10, 1), 10)])
    asyncio.run(loop.drain())
    sink.failures = 1
    loop.accept([(_create(11, 2), 11)])
    asyncio.run(loop.drain())
    assert slept[-1] <= 0.5
    assert committed == [10, 11]


def test_a_later_record_waits_for_an_earlier_one_of_its_partition() -> None:
    sink = FlakySink(failures=0)
    loop, committed, _ = _loop(sink)
    loop.accept([(_create(10, 1), 10), (_create(11, 2), 11)])
    loop.ledger.track(("cdc.public.orders", 2), 12, 12)  # consumed, not yet finished
    loop.accept([(_create(13, 3), 13)])
    asyncio.run(loop.drain())
    assert committed == [10, 11]
    assert loop.waiting() == 2


def test_an_untested_faust_version_is_refused_by_name() -> None:
    with pytest.raises(ConfigError, match=r"faust-streaming 0\.16\.0 is installed"):
        faust_internals.check("0.16.0")


def test_a_missing_faust_attribute_is_named() -> None:
    class Consumer:
        pass

    with pytest.raises(ConfigError, match=r"Consumer\._drain_messages"):
        faust_internals.check("0.15.3", [(Consumer, "_drain_messages")])


def test_the_installed_faust_passes() -> None:
    faust_internals.check()
