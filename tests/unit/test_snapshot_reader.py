"""A snapshot reader process's ranges: reported ``read`` once queued, ``done`` only after a
flush found every queued record acknowledged with no refusal; a refusal fails the reader and
no range is reported done; a reader whose capture is gone stops waiting for Kafka."""

from __future__ import annotations

import queue
from typing import Any

import pytest

from pipeline.config import KafkaSettings
from pipeline.errors import PermanentError, RetriableError
from pipeline.sources.postgres import snapshot_reader
from pipeline.sources.postgres.snapshot_reader import _ParentGone, _QueuedRanges

_STALL_S = KafkaSettings().producer_stall_s


class _Publisher:
    """A producer whose flush() leaves ``remaining`` records, one value per call, and whose
    poll() and flush() run the callbacks queued in ``refusals`` (as librdkafka serves them)."""

    def __init__(self, remaining: list[int]) -> None:
        self.remaining = remaining
        self.flushes = 0
        self.refusals: list[Any] = []
        self.callback: Any = None
        self.held = 0  # what len() says the producer holds

    def __len__(self) -> int:
        return self.held

    def _serve(self) -> None:
        while self.refusals:
            self.callback(self.refusals.pop(0), object())

    def poll(self, _timeout: float) -> int:
        self._serve()
        return 0

    def flush(self, _timeout: float) -> int:
        self.flushes += 1
        self._serve()
        return self.remaining.pop(0) if self.remaining else 0


class _Counts:
    def __init__(self) -> None:
        self.counts = [{"numeric": 2}, {}]

    def drain(self) -> dict[str, int]:
        return self.counts.pop(0)


def _ranges(publisher: _Publisher, parent: Any = lambda: None) -> tuple[_QueuedRanges, Any]:
    results: Any = queue.Queue()
    ranges = _QueuedRanges(publisher, results, _Counts(), parent,  # type: ignore[arg-type]
                           _STALL_S)
    publisher.callback = ranges.refused
    return ranges, results


def _reports(results: Any) -> list[Any]:
    out = []
    while not results.empty():
        out.append(results.get_nowait())
    return out


def test_ranges_are_read_when_queued_and_done_only_after_every_record_is_acknowledged() -> None:
    publisher = _Publisher([120, 3])  # two flush rounds still hold records, the third none
    parent_checks: list[int] = []
    ranges, results = _ranges(publisher, lambda: parent_checks.append(1))
    ranges.queued(7, 2048)
    ranges.queued(8, 100)
    assert _reports(results) == [("read", 7), ("read", 8)]
    ranges.confirm()
    assert publisher.flushes == 3
    assert len(parent_checks) == 2  # asked while Kafka still held records
    # the unconverted counts travel once, with the first range
    assert _reports(results) == [("done", 7, 2048, {"numeric": 2}), ("done", 8, 100, {})]
    ranges.confirm()  # nothing pending: nothing reported again
    assert _reports(results) == []


def test_a_refusal_fails_the_reader_and_no_range_is_reported_done() -> None:
    publisher = _Publisher([5])
    ranges, results = _ranges(publisher)
    ranges.queued(3, 10)
    publisher.refusals += ["MSG_SIZE_TOO_LARGE", "a later refusal"]
    with pytest.raises(PermanentError, match="Kafka refused a snapshot record: "
                                             "MSG_SIZE_TOO_LARGE$"):
        ranges.confirm()
    assert _reports(results) == [("read", 3)]
    with pytest.raises(PermanentError):  # and it stays failed
        ranges.serve()


def test_serve_confirms_once_the_oldest_range_waited_long_enough(
        monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]
    monkeypatch.setattr(snapshot_reader.time, "monotonic", lambda: now[0])
    publisher = _Publisher([])
    ranges, results = _ranges(publisher)
    ranges.queued(1, 5)
    now[0] += snapshot_reader._CONFIRM_S / 2
    ranges.queued(2, 5)  # does not push the oldest range's deadline back
    ranges.serve()
    assert publisher.flushes == 0
    now[0] += snapshot_reader._CONFIRM_S / 2
    ranges.serve()
    assert publisher.flushes == 1
    assert [r[:2] for r in _reports(results)] == [("read", 1), ("read", 2), ("done", 1),
                                                  ("done", 2)]


def test_a_reader_whose_capture_is_gone_stops_waiting_for_kafka() -> None:
    publisher = _Publisher([9] * 1000)  # Kafka down: records stay queued

    def parent() -> None:
        raise _ParentGone

    ranges, results = _ranges(publisher, parent)
    ranges.queued(4, 1)
    with pytest.raises(_ParentGone):
        ranges.confirm()
    assert publisher.flushes == 1
    assert _reports(results) == [("read", 4)]


class _Clock:
    """``time.monotonic`` for the reader, moved on by ``step`` seconds at every flush."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, publisher: _Publisher,
                 step: float) -> None:
        self.now = 1000.0
        monkeypatch.setattr(snapshot_reader.time, "monotonic", lambda: self.now)
        flush = publisher.flush

        def flush_and_tick(timeout: float) -> int:
            self.now += step
            return flush(timeout)

        publisher.flush = flush_and_tick  # type: ignore[method-assign]


def test_a_producer_that_acknowledges_nothing_for_the_stall_time_fails_the_reader_retriably(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """librdkafka can stay stuck after a broker restart: a new producer (a restarted
    snapshot) sends what the stuck one holds; the ranges are not reported done."""
    publisher = _Publisher([40] * 1000)
    _Clock(monkeypatch, publisher, 1.0)
    ranges, results = _ranges(publisher)
    ranges.queued(6, 40)
    with pytest.raises(RetriableError,
                       match=r"answered none of the 40 record\(s\) this snapshot reader queued"):
        ranges.confirm()
    assert publisher.flushes == _STALL_S + 1  # waited the stall time, no more
    assert _reports(results) == [("read", 6)]


def test_a_slow_kafka_that_acknowledges_something_is_waited_for(
        monkeypatch: pytest.MonkeyPatch) -> None:
    stall = int(_STALL_S)
    # one record acknowledged per stall time less a second: slow, never stuck
    remaining = [n for n in range(5, 0, -1) for _ in range(stall - 1)]
    rounds = len(remaining)
    publisher = _Publisher(remaining)
    _Clock(monkeypatch, publisher, 1.0)
    ranges, results = _ranges(publisher)
    ranges.queued(2, 5)
    ranges.confirm()
    assert publisher.flushes == rounds + 1 > 4 * stall
    assert [r[:2] for r in _reports(results)] == [("read", 2), ("done", 2)]


def test_a_full_queue_that_never_drains_fails_the_reader_and_each_wait_has_its_own_clock(
        monkeypatch: pytest.MonkeyPatch) -> None:
    now = [50.0]
    monkeypatch.setattr(snapshot_reader.time, "monotonic", lambda: now[0])
    publisher = _Publisher([])
    publisher.held = 100
    parent_checks: list[int] = []
    ranges, _ = _ranges(publisher, lambda: parent_checks.append(1))
    ranges.waiting()
    now[0] += _STALL_S - 1
    ranges.waiting()
    assert len(parent_checks) == 2  # a reader waiting for room still notices its capture go
    ranges.wait_over()  # the queue took the record: the next wait starts afresh
    now[0] += 2
    ranges.waiting()
    now[0] += _STALL_S - 1
    ranges.waiting()
    now[0] += 1
    with pytest.raises(RetriableError, match=r"answered none of the 100 record\(s\)"):
        ranges.waiting()
