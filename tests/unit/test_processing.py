"""BatchProcessor: decode, fan out to every sink, dead-letter what cannot be processed."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence

import pytest

from pipeline.deadletter import RawRecord
from pipeline.errors import EventDecodeError, SinkRejectedError, SinkUnavailableError
from pipeline.events import ChangeEvent
from pipeline.metrics import Metrics
from pipeline.processing import BatchProcessor
from pipeline.sinks.base import Rejection

SOURCE = {"connector": "postgresql", "name": "shop", "db": "shop", "schema": "public",
          "table": "orders", "ts_ms": 1_700_000_000_000, "lsn": 100}


def _record(offset: int, key: object, value: object, raw: bytes | None = None) -> RawRecord:
    return RawRecord(
        topic="cdc.public.orders", partition=2, offset=offset,
        key=None if key is None else json.dumps(key).encode(),
        value=raw if raw is not None else (None if value is None else json.dumps(value).encode()),
    )


def _create(offset: int, order_id: int) -> RawRecord:
    value = {"before": None, "after": {"id": order_id}, "source": dict(SOURCE, lsn=offset),
             "op": "c", "ts_ms": 1}
    return _record(offset, {"id": order_id}, value)


class RecordingSink:
    def __init__(self, name: str, reject_ids: Sequence[int] = (), error: Exception | None = None):
        self.name = name
        self.reject_ids = set(reject_ids)
        self.error = error
        self.batches: list[list[ChangeEvent]] = []

    async def write(self, batch: Sequence[ChangeEvent]) -> list[Rejection]:
        self.batches.append(list(batch))
        if self.error is not None:
            raise self.error
        return [
            Rejection(i, SinkRejectedError(f"bad order {e.key}", sink=self.name))
            for i, e in enumerate(batch)
            if e.key is not None and e.key["id"] in self.reject_ids
        ]

    async def close(self) -> None:
        pass


class RecordingDeadLetters:
    def __init__(self) -> None:
        self.calls: list[list[tuple[RawRecord, str, BaseException]]] = []

    async def send(self, letters: list[tuple[RawRecord, str, BaseException]]) -> None:
        self.calls.append(list(letters))

    @property
    def letters(self) -> list[tuple[RawRecord, str, BaseException]]:
        return [letter for call in self.calls for letter in call]


def _run(sinks: list[RecordingSink], records: list[RawRecord]):
    dead = RecordingDeadLetters()
    metrics = Metrics("worker")
    asyncio.run(BatchProcessor(sinks, dead, metrics).process(records))  # type: ignore[arg-type]
    return dead, metrics


def test_good_events_reach_every_sink() -> None:
    search, cache = RecordingSink("search"), RecordingSink("cache")
    records = [_create(10, 1), _create(11, 2)]
    dead, metrics = _run([search, cache], records)
    for sink in (search, cache):
        assert len(sink.batches) == 1
        assert [e.key for e in sink.batches[0]] == [{"id": 1}, {"id": 2}]
    assert dead.calls == []
    assert metrics.total("cdc_worker_records_total") == 2


def test_undecodable_records_are_dead_lettered_and_batch_goes_on() -> None:
    sink = RecordingSink("search")
    garbage = _record(11, {"id": 9}, None, raw=b"\x00not json")
    no_key = _record(12, None, {"before": None, "after": {"id": 3}, "source": SOURCE, "op": "c"})
    records = [_create(10, 1), garbage, no_key, _create(13, 4)]
    dead, metrics = _run([sink], records)
    assert [e.key for e in sink.batches[0]] == [{"id": 1}, {"id": 4}]
    assert [(r.offset, stage) for r, stage, _ in dead.letters] == [(11, "decode"), (12, "decode")]
    assert all(isinstance(err, EventDecodeError) for _, _, err in dead.letters)
    # the original record, untouched
    assert dead.letters[0][0] is garbage
    assert metrics.total("cdc_dead_letters_total") == 2


def test_tombstones_are_skipped() -> None:
    sink = RecordingSink("search")
    tombstone = _record(11, {"id": 1}, None)
    dead, metrics = _run([sink], [_create(10, 1), tombstone])
    assert [e.key for e in sink.batches[0]] == [{"id": 1}]
    assert dead.calls == []
    assert metrics.total("cdc_worker_tombstones_total") == 1


def test_logical_decoding_messages_are_skipped_and_counted_not_dead_lettered() -> None:
    sink = RecordingSink("search")
    message = _record(11, {"prefix": "audit"}, {"op": "m", "ts_ms": 1, "source": SOURCE,
                                                 "message": {"prefix": "audit",
                                                             "content": "aGk="}})
    dead, metrics = _run([sink], [_create(10, 1), message])
    assert [e.key for e in sink.batches[0]] == [{"id": 1}]
    assert dead.calls == []
    assert metrics.total("cdc_worker_skipped_total") == 1


def test_only_tombstones_write_nothing() -> None:
    sink = RecordingSink("search")
    dead, _ = _run([sink], [_record(1, {"id": 1}, None)])
    assert sink.batches == []
    assert dead.calls == []


def test_sink_rejection_dead_lettered_with_original_record() -> None:
    search = RecordingSink("search", reject_ids=[2])
    cache = RecordingSink("cache")
    tombstone = _record(11, {"id": 1}, None)
    bad = _create(12, 2)
    records = [_create(10, 1), tombstone, bad, _create(13, 3)]
    dead, _ = _run([search, cache], records)
    ((record, stage, error),) = dead.letters
    # index 1 of the decoded batch, but the record is the one at offset 12 (tombstone skipped)
    assert record is bad
    assert stage == "sink:search"
    assert isinstance(error, SinkRejectedError)
    assert len(cache.batches[0]) == 3  # the other sink still got everything


def test_rejection_by_two_sinks_gives_two_letters() -> None:
    a, b = RecordingSink("search", reject_ids=[1]), RecordingSink("cache", reject_ids=[1])
    dead, _ = _run([a, b], [_create(10, 1)])
    assert sorted(stage for _, stage, _ in dead.letters) == ["sink:cache", "sink:search"]


def test_decode_and_sink_letters_sent_together() -> None:
    sink = RecordingSink("search", reject_ids=[2])
    records = [_record(9, {"id": 0}, None, raw=b"[]"), _create(10, 2)]
    dead, _ = _run([sink], records)
    assert len(dead.calls) == 1
    assert [(r.offset, s) for r, s, _ in dead.calls[0]] == [(9, "decode"), (10, "sink:search")]


def test_sink_failure_propagates_and_nothing_dead_lettered() -> None:
    sink = RecordingSink("search", error=SinkUnavailableError("down"))
    dead = RecordingDeadLetters()
    processor = BatchProcessor([sink], dead, Metrics("w"))  # type: ignore[list-item, arg-type]
    with pytest.raises(SinkUnavailableError):
        asyncio.run(processor.process([_create(10, 1), _record(11, {"id": 2}, None, raw=b"x")]))
    assert dead.calls == []


def test_a_replay_in_the_same_batch_as_its_original_is_dropped() -> None:
    """A restart before the commit re-reads an original and its replay together; the store
    learns of the original only after the sinks confirm it, so the batch itself must tell."""
    from pipeline.dedup import Deduplicator

    search = RecordingSink("search")
    dead, metrics = RecordingDeadLetters(), Metrics("worker")
    processor = BatchProcessor([search], dead, metrics,  # type: ignore[arg-type]
                               dedup=Deduplicator({}))
    original, other = _create(10, 1), _create(11, 2)
    replay = RawRecord(topic=original.topic, partition=original.partition, offset=12,
                       key=original.key, value=original.value)
    done = asyncio.run(processor.process([original, other, replay]))
    assert [e.key for e in search.batches[0]] == [{"id": 1}, {"id": 2}]
    assert metrics.total("cdc_dedup_dropped_total") == 1
    assert sorted(r.offset for r in done) == [10, 11, 12]


def test_a_record_whose_top_level_time_is_not_a_number_is_dead_lettered() -> None:
    """Issue 9, item 2: ``ts_ms: "abc"`` raised ValueError out of decode and killed the
    worker (which restarted forever on the same record)."""
    search = RecordingSink("search")
    bad = json.loads(_create(10, 1).value or b"")
    bad["ts_ms"] = "abc"
    records = [_record(10, {"id": 1}, bad), _create(11, 2)]
    dead, _ = _run([search], records)
    assert [e.key for e in search.batches[0]] == [{"id": 2}]
    ((record, stage, error),) = dead.letters
    assert (record.offset, stage) == (10, "decode")
    assert "'ts_ms' must be a whole number" in str(error)


def test_whatever_decode_raises_is_that_records_bad_data(monkeypatch: pytest.MonkeyPatch) -> None:
    """An exception decode did not foresee is still the record's fault: dead-lettered, and
    the batch goes on."""
    import pipeline.processing

    real = pipeline.processing.decode

    def fragile(key: bytes | None, value: bytes | None) -> ChangeEvent | None:
        if key == b'{"id": 1}':
            raise RecursionError("maximum recursion depth exceeded")
        return real(key, value)

    monkeypatch.setattr(pipeline.processing, "decode", fragile)
    search = RecordingSink("search")
    dead, _ = _run([search], [_create(10, 1), _create(11, 2)])
    assert [e.key for e in search.batches[0]] == [{"id": 2}]
    ((_, stage, error),) = dead.letters
    assert stage == "decode" and isinstance(error, EventDecodeError)
    assert "RecursionError" in str(error)
