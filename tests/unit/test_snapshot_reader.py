"""A snapshot reader process's per-range delivery count: a range is reported done to the
capture once, only after Kafka acknowledged every row and every row was queued; a refusal
fails the reader instead of counting."""

from __future__ import annotations

import queue
from types import SimpleNamespace
from typing import Any

from pipeline.sources.postgres.snapshot_reader import _RangeDelivery


def _reader() -> Any:
    drained = iter([{"public.t": {"c": 1}}, {}])
    return SimpleNamespace(results=queue.Queue(), failed=None,
                           unconverted=SimpleNamespace(drain=lambda: next(drained)))


def _reports(reader: Any) -> list[Any]:
    out = []
    while not reader.results.empty():
        out.append(reader.results.get_nowait())
    return out


def test_a_range_is_done_once_every_row_is_acknowledged_and_queued() -> None:
    reader = _reader()
    done = _RangeDelivery(reader, 7, 3)
    done(None, object())
    done(None, object())
    done(None, object())  # every row acknowledged before the reader said all are queued
    assert _reports(reader) == []
    done(None, True)  # every row is queued
    assert _reports(reader) == [("done", 7, 3, {"public.t": {"c": 1}})]
    assert reader.failed is None


def test_acknowledgements_after_the_last_row_is_queued_count_too() -> None:
    reader = _reader()
    done = _RangeDelivery(reader, 1, 2)
    done(None, True)
    done(None, object())
    assert _reports(reader) == []
    done(None, object())
    assert [r[:3] for r in _reports(reader)] == [("done", 1, 2)]


def test_an_empty_range_is_done_when_queued() -> None:
    reader = _reader()
    _RangeDelivery(reader, 3, 0)(None, True)
    assert [r[:3] for r in _reports(reader)] == [("done", 3, 0)]


def test_a_refused_row_fails_the_reader_and_the_range_is_never_done() -> None:
    reader = _reader()
    done = _RangeDelivery(reader, 5, 2)
    done("MSG_SIZE_TOO_LARGE", object())
    done("a later refusal", object())
    done(None, object())
    done(None, True)
    assert reader.failed == "Kafka refused a snapshot record: MSG_SIZE_TOO_LARGE"
    assert _reports(reader) == []
