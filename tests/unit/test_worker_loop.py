"""The worker skeleton both engines share: nothing is committed before the sink confirmed it,
a failing write is retried with the capped backoff, and Faust's internals are checked."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest

import pipeline.backpressure as backpressure
from agents import faust_internals
from pipeline.deadletter import RawRecord
from pipeline.errors import ConfigError, SinkUnavailableError
from pipeline.events import ChangeEvent
from pipeline.metrics import Metrics
from pipeline.processing import BatchProcessor
from pipeline.sinks.base import Rejection
from pipeline.worker_loop import DECODE_ASIDE_MIN, WorkerLoop
from tests.unit.test_processing import (
    SOURCE,
    RecordingDeadLetters,
    RecordingSink,
    _create,
    _record,
)


class FlakySink:
    """Fails ``failures`` times, then writes."""

    name = "flaky"

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.written: list[int] = []

    async def write(self, batch: Sequence[ChangeEvent]) -> list[Rejection]:
        if self.failures:
            self.failures -= 1
            raise SinkUnavailableError("down")
        self.written.extend(e.key["id"] for e in batch if e.key is not None)
        return []

    async def close(self) -> None:
        pass


class Changelog:
    def __init__(self) -> None:
        self.flushes = 0

    async def flush(self) -> None:
        self.flushes += 1


def _loop(sink: FlakySink, retry_max_s: float = 4.0, changelog: Changelog | None = None
          ) -> tuple[WorkerLoop[int], list[int], Changelog]:
    committed: list[int] = []

    async def commit(tokens: list[int]) -> None:
        committed.extend(tokens)

    processor = BatchProcessor([sink], RecordingDeadLetters(), Metrics("w"))  # type: ignore[list-item,arg-type]
    changelog = changelog or Changelog()
    loop: WorkerLoop[int] = WorkerLoop(processor, changelog, Metrics("w"), commit,
                                       retry_initial_s=0.5, retry_max_s=retry_max_s)
    return loop, committed, changelog


def test_records_are_committed_only_after_the_sink_wrote_them(
        monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []

    async def no_wait(seconds: float) -> None:
        slept.append(seconds)

    monkeypatch.setattr(backpressure.asyncio, "sleep", no_wait)
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

    monkeypatch.setattr(backpressure.asyncio, "sleep", no_wait)
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


# -- BatchFetch: the raw topics' records a fetch at a time ----------------------------------
class _Record:
    """An aiokafka ``ConsumerRecord``, as far as the fetch reads one."""

    def __init__(self, topic: str, offset: int, headers: list[tuple[str, bytes | None]] | None
                 = None) -> None:
        self.topic, self.offset = topic, offset
        self.key, self.value = b'{"id": %d}' % offset, b"{}"
        self.timestamp = 1_700_000_000_123 + offset
        self.headers = headers or []


class _TP(tuple):  # type: ignore[type-arg]
    @property
    def topic(self) -> str:
        return str(self[0])

    @property
    def partition(self) -> int:
        return int(self[1])


def _taken(batch: list[faust_internals.Fetched]) -> list[tuple[str, int]]:
    return [(message.topic, message.offset) for message in batch]


class _Monitor:
    def __init__(self) -> None:
        self.stream_inbound_time: dict[object, float] = {}
        self.tp_read_offsets: dict[object, int] = {}

    def track_tp_end_offset(self, tp: object, end: int) -> None:
        pass


class _Topics:
    def acks_enabled_for(self, topic: str) -> bool:
        return True


class _App:
    def __init__(self) -> None:
        self.monitor = _Monitor()
        self.topics = _Topics()


class _FaustConsumer:
    def __init__(self) -> None:
        from collections import defaultdict
        self.app = _App()
        self._read_offset: dict[object, int | None] = defaultdict(lambda: None)
        self._buffered_partitions: set[object] = set()
        self._unacked_messages: set[object] = set()
        self.delivered: list[tuple[str, int]] = []

    def _to_message(self, tp: _TP, record: _Record) -> tuple[str, int]:
        return (record.topic, record.offset)

    def highwater(self, tp: object) -> int:
        return 0

    async def seek_wait(self, partitions: dict[object, int]) -> None:
        for tp, offset in partitions.items():
            self._read_offset[tp] = offset

    async def callback(self, message: tuple[str, int]) -> None:
        self.delivered.append(message)

    async def wait_first(self, *coros: object) -> None:
        await coros[0]  # type: ignore[misc]
        for c in coros[1:]:
            c.close()  # type: ignore[attr-defined]

    class suspend_flow:  # noqa: N801 - the attribute's name in Faust
        @staticmethod
        async def wait() -> None:
            await asyncio.sleep(3600)


def test_a_fetch_becomes_one_batch_and_other_topics_keep_faust_s_path() -> None:
    fetch = faust_internals.BatchFetch(["raw"])
    consumer = _FaustConsumer()
    raw, changelog = _TP(("raw", 0)), _TP(("changelog", 0))
    consumer._read_offset[raw] = 5  # Faust already read up to 5: 4 is behind it
    records = {raw: [_Record("raw", o) for o in (4, 5, 6, 7)],
               changelog: [_Record("changelog", 1)]}

    batch = asyncio.run(fetch._sort(consumer, records, None))
    assert _taken(batch) == [("raw", 5), ("raw", 6), ("raw", 7)]
    assert consumer.delivered == [("changelog", 1)]
    assert consumer._read_offset[raw] == 7
    # a revocation waits for them: one token for the fetch, counting its records down
    (token,) = {message.fetch for message in batch}
    assert token in consumer._unacked_messages and token.remaining == 3 and not token.acked


def test_a_fetched_record_is_the_record_the_worker_takes() -> None:
    fetch = faust_internals.BatchFetch(["raw"])
    consumer = _FaustConsumer()
    tp = _TP(("raw", 2))
    records = {tp: [_Record("raw", 9, [("h", b"v"), ("none", None)]), _Record("raw", 10)]}
    first, second = asyncio.run(fetch._sort(consumer, records, None))
    assert first.record == RawRecord("raw", 2, 9, b'{"id": 9}', b"{}", 1_700_000_000_132,
                                     (("h", b"v"), ("none", b"")))
    assert second.record.headers == ()
    assert (first.tp, first.topic, first.partition, first.offset) == (tp, "raw", 2, 9)
    assert (first.acked, first.refcount) == (False, 0)


def test_faust_s_own_ack_and_revocation_wait_take_a_fetched_record() -> None:
    """Faust's ``Consumer.ack`` (its bookkeeping for the commit) and the set a revocation
    waits on, run on a :class:`Fetched` as on a Faust message."""
    from collections import defaultdict
    from weakref import WeakSet

    from faust.transport.consumer import Consumer

    class Bookkeeping:
        app = _App()
        _committed_offset: dict[object, int | None] = defaultdict(lambda: None)
        _acked_index: dict[object, set[int]] = defaultdict(set)
        _acked: dict[object, list[int]] = defaultdict(list)
        _n_acked = 0
        _waiting_for_ack = None

        def __init__(self) -> None:
            self._unacked_messages: WeakSet[object] = WeakSet()

    consumer = Bookkeeping()
    tp = _TP(("raw", 0))
    fetched = faust_internals.Fetched(RawRecord("raw", 0, 41, None, None), tp)
    consumer._unacked_messages.add(fetched)
    assert [(m.refcount, m) for m in consumer._unacked_messages] == [(0, fetched)]
    assert Consumer.ack(consumer, fetched) is True  # type: ignore[arg-type]
    assert Consumer.ack(consumer, fetched) is False  # type: ignore[arg-type]  # once only
    assert fetched.acked and not consumer._unacked_messages
    assert consumer._acked[tp] == [41] and consumer._n_acked == 1


def test_paused_partitions_are_left_out_as_faust_leaves_them_out() -> None:
    fetch = faust_internals.BatchFetch(["raw"])
    consumer = _FaustConsumer()
    a, b = _TP(("raw", 0)), _TP(("raw", 1))
    records = {a: [_Record("raw", 1)], b: [_Record("raw", 1)]}
    assert _taken(asyncio.run(fetch._sort(consumer, records, {a}))) == [("raw", 1)]
    assert consumer._read_offset[b] is None


def test_batches_hold_at_most_max_records_and_keep_order() -> None:
    async def take() -> list[list[int]]:
        fetch = faust_internals.BatchFetch(["raw"])
        queue = fetch._queue_here()
        queue.put_nowait(list(range(7)))
        queue.put_nowait(list(range(7, 10)))
        out: list[list[int]] = []
        async for batch in fetch.batches(4, 0.01):
            out.append(batch)
            if sum(map(len, out)) == 10:
                break
        return out

    batches = asyncio.run(take())
    assert [len(b) for b in batches] == [4, 4, 2]
    assert [x for b in batches for x in b] == list(range(10))


def test_spilling_while_the_worker_cannot_take_keeps_every_record_in_order() -> None:
    """While a sink is down the fetched batches are moved out of the bounded queue (so the
    fetcher keeps polling), both when the worker holds a batch and when it waits on the
    queue (a timer drains then): nothing is lost or reordered either way."""
    async def take() -> list[int]:
        fetch = faust_internals.BatchFetch(["raw"])
        queue = fetch._queue_here()
        batches = fetch.batches(100, 0.01)
        queue.put_nowait([0, 1])
        out = list(await anext(batches))  # the worker holds this batch (a drain retries)
        queue.put_nowait([2])
        fetch.spill()
        out += await anext(batches)
        waiting = asyncio.ensure_future(anext(batches))
        await asyncio.sleep(0.05)  # the worker waits on the queue (a timer's drain retries)
        queue.put_nowait([3, 4])
        fetch.spill()  # before the waiting taker resumed
        queue.put_nowait([5])
        out += await waiting
        while len(out) < 6:
            out += await asyncio.wait_for(anext(batches), 1)
        return out

    assert asyncio.run(take()) == [0, 1, 2, 3, 4, 5]


def test_a_rebalance_drops_what_was_not_taken() -> None:
    fetch = faust_internals.BatchFetch(["raw"])
    fetch._queue_here().put_nowait([1, 2])
    fetch._pending = [0]
    fetch.clear()
    assert fetch._pending == [] and fetch._queue_here().empty()


def test_a_fetch_begun_before_a_seek_does_not_move_the_read_offset_past_it() -> None:
    async def scenario() -> tuple[list[faust_internals.Fetched], list[faust_internals.Fetched],
                                  int | None]:
        fetch = faust_internals.BatchFetch(["raw"])
        consumer = _FaustConsumer()
        a, b = _TP(("raw", 0)), _TP(("raw", 1))
        seeks_when_fetched = fetch._seeks
        await fetch.seek(consumer, ("raw", 0), 5)  # the guard re-reads from 5
        stale = {a: [_Record("raw", o) for o in (8, 9)], b: [_Record("raw", 3)]}
        first = await fetch._sort(consumer, stale, None, seeks_when_fetched)
        offset_after_stale = consumer._read_offset[a]
        reread = {a: [_Record("raw", o) for o in range(5, 10)]}
        second = await fetch._sort(consumer, reread, None, fetch._seeks)
        return first, second, offset_after_stale

    first, second, offset = asyncio.run(scenario())
    assert _taken(first) == [("raw", 3)]  # the other partition is unaffected
    assert offset == 5
    assert _taken(second) == [("raw", o) for o in range(5, 10)]


# -- one drain in flight while the engine reads ahead ---------------------------------------
class GatedSink:
    """Holds each write until ``gate`` is set, like Elasticsearch indexing a ``_bulk``."""

    name = "gated"

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.batches: list[list[int]] = []

    async def write(self, batch: Sequence[ChangeEvent]) -> list[Rejection]:
        self.batches.append([e.key["id"] for e in batch if e.key is not None])
        await self.gate.wait()
        return []

    async def close(self) -> None:
        pass


def _gated_loop(per_partition: bool = True) -> tuple[GatedSink, WorkerLoop[int], list[int]]:
    """A worker loop over a :class:`GatedSink`, and the tokens it committed. The loop takes
    its drain mode from what the sink declares (``drains_per_partition``)."""
    sink = GatedSink()
    sink.drains_per_partition = per_partition  # type: ignore[attr-defined]
    committed: list[int] = []

    async def commit(tokens: list[int]) -> None:
        committed.extend(tokens)

    processor = BatchProcessor([sink], RecordingDeadLetters(), Metrics("w"))  # type: ignore[list-item,arg-type]
    loop: WorkerLoop[int] = WorkerLoop(processor, Changelog(), Metrics("w"), commit,
                                       retry_initial_s=0.5, retry_max_s=1.0)
    assert loop.per_partition is per_partition
    return sink, loop, committed


def test_records_read_ahead_during_a_drain_wait_for_the_next_one_and_commit_in_order() -> None:
    sink, loop, committed = _gated_loop()

    async def scenario() -> None:
        loop.accept([(_create(10, 1), 10), (_create(11, 2), 11)])
        loop.start_drain()
        await asyncio.sleep(0.01)  # the write is out, held by the sink
        assert loop.draining and sink.batches == [[1, 2]]
        ahead = [(_create(12 + i, 3 + i), 12 + i) for i in range(DECODE_ASIDE_MIN)]
        decoded = await loop.decode(ahead)  # decoded in a thread while the write waits
        assert decoded is not None and len(decoded) == len(ahead)
        loop.accept(ahead, decoded)
        assert committed == []  # nothing before the sink confirmed
        loop.start_drain()  # the partition's drain is in flight: nothing more starts
        assert sink.batches == [[1, 2]]
        sink.gate.set()
        await loop.finish()  # the drain behind it starts by itself
        assert not loop.draining
        # the records read ahead were not in that write, but in the next
        assert sink.batches == [[1, 2], [3 + i for i in range(DECODE_ASIDE_MIN)]]
        assert committed == list(range(10, 12 + DECODE_ASIDE_MIN))

    asyncio.run(scenario())
    assert loop.waiting() == 0


def test_a_failed_drain_puts_its_records_back_before_those_read_ahead() -> None:
    sink = RecordingSink("down", error=SinkUnavailableError("down"))
    processor = BatchProcessor([sink], RecordingDeadLetters(), Metrics("w"))  # type: ignore[list-item,arg-type]
    processor.accept([_create(10, 1), _create(11, 2)])

    async def scenario() -> None:
        failing = asyncio.ensure_future(processor.drain())
        await asyncio.sleep(0)
        processor.accept([_create(12, 3)])  # read ahead while the write is out
        with pytest.raises(SinkUnavailableError):
            await failing
        sink.error = None
        finished = await processor.drain()
        assert [r.offset for r in finished] == [10, 11, 12]

    asyncio.run(scenario())
    assert [[e.key["id"] for e in b if e.key] for b in sink.batches[-1:]] == [[1, 2, 3]]


def test_a_partition_drain_leaves_a_truncate_and_what_follows_it_for_a_drain_alone() -> None:
    sink = RecordingSink("s")
    processor = BatchProcessor([sink], RecordingDeadLetters(), Metrics("w"))  # type: ignore[list-item,arg-type]
    truncate = _record(30, None, {"before": None, "after": None, "op": "t", "ts_ms": 1,
                                  "source": dict(SOURCE, lsn=30)})
    processor.accept([_in_partition(_create(10, 1), 0), _in_partition(_create(11, 2), 1),
                      _in_partition(truncate, 0), _in_partition(_create(31, 3), 0)])
    # (a truncate accepted after a partition's drain was started, before it took its records)
    finished = asyncio.run(processor.drain({("t", 0)} | {(_create(1, 1).topic, 0)}))
    assert [r.offset for r in finished] == [10]
    assert processor.truncate_ready()
    finished = asyncio.run(processor.drain())
    assert [r.offset for r in finished] == [11, 30, 31]


def _in_partition(record: RawRecord, partition: int) -> RawRecord:
    return record._replace(partition=partition)


def test_each_partition_has_its_own_drain_in_flight_and_a_truncate_drains_alone() -> None:
    sink, loop, committed = _gated_loop()
    truncate = _record(30, None, {"before": None, "after": None, "op": "t", "ts_ms": 1,
                                  "source": dict(SOURCE, lsn=30)})

    async def scenario() -> None:
        loop.accept([(_in_partition(_create(10, 1), 0), 10),
                     (_in_partition(_create(11, 2), 1), 11)])
        loop.start_drain()
        await asyncio.sleep(0.01)
        assert sorted(sink.batches) == [[1], [2]]  # both partitions' writes out at once
        loop.accept([(_in_partition(truncate, 0), 30)])
        loop.start_drain()  # the truncate waits for every drain in flight
        await asyncio.sleep(0.01)
        assert len(sink.batches) == 2
        sink.gate.set()
        await loop.finish()  # then it is drained alone, started by the last drain's end
        assert sorted(committed[:2]) == [10, 11]
        assert committed[-1] == 30 and len(sink.batches) == 3

    asyncio.run(scenario())


class FailingOnceChangelog(Changelog):
    """Its first flush fails: the changelog did not acknowledge in time."""

    async def flush(self) -> None:
        self.flushes += 1
        if self.flushes == 1:
            raise SinkUnavailableError("changelog not acknowledged")


class GatedFailingOnceChangelog(Changelog):
    """Its first flush waits for ``gate``, then fails."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()

    async def flush(self) -> None:
        self.flushes += 1
        if self.flushes == 1:
            await self.gate.wait()
            raise SinkUnavailableError("changelog not acknowledged")


def _recording_loop(sink: RecordingSink, changelog: Changelog, retry_s: float = 0.5
                    ) -> tuple[WorkerLoop[int], list[int]]:
    """A worker loop over ``sink`` and ``changelog``, and the tokens it committed."""
    committed: list[int] = []

    async def commit(tokens: list[int]) -> None:
        committed.extend(tokens)

    processor = BatchProcessor([sink], RecordingDeadLetters(), Metrics("w"))  # type: ignore[list-item,arg-type]
    loop: WorkerLoop[int] = WorkerLoop(processor, changelog, Metrics("w"), commit,
                                       retry_initial_s=retry_s, retry_max_s=retry_s * 2)
    return loop, committed


def test_a_retrying_partition_drain_never_takes_what_came_after_a_truncate(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A partition's drain whose changelog flush failed retries the flush (and only the
    flush); records accepted after a truncate (of another partition) wait for the truncate,
    which waits for that flush."""
    async def no_wait(seconds: float) -> None:
        pass

    monkeypatch.setattr(backpressure.asyncio, "sleep", no_wait)
    sink = RecordingSink("s")
    changelog = GatedFailingOnceChangelog()
    loop, committed = _recording_loop(sink, changelog, retry_s=0.01)
    truncate = _record(30, None, {"before": None, "after": None, "op": "t", "ts_ms": 1,
                                  "source": dict(SOURCE, lsn=30)})

    async def scenario() -> None:
        loop.accept([(_in_partition(_create(10, 1), 1), 10)])
        loop.start_drain()
        await asyncio.sleep(0.01)  # partition 1 written, its flush pending
        loop.accept([(_in_partition(truncate, 0), 30), (_in_partition(_create(31, 3), 1), 31)])
        loop.start_drain()  # the truncate waits for the drain in flight
        changelog.gate.set()  # that drain's flush fails: it drains partition 1 again
        await loop.finish()

    asyncio.run(scenario())
    written = [e.key["id"] if e.key else "truncate" for b in sink.batches for e in b]
    assert written == [1, "truncate", 3]
    assert sorted(committed) == [10, 30, 31]


def test_records_the_sink_confirmed_are_committed_after_a_failed_changelog_flush(
        monkeypatch: pytest.MonkeyPatch) -> None:
    async def no_wait(seconds: float) -> None:
        pass

    monkeypatch.setattr(backpressure.asyncio, "sleep", no_wait)
    sink = FlakySink(failures=0)
    loop, committed, changelog = _loop(sink, changelog=FailingOnceChangelog())
    loop.accept([(_create(10, 1), 10), (_create(11, 2), 11)])
    asyncio.run(loop.drain())
    assert changelog.flushes == 2 and sink.written == [1, 2]
    assert committed == [10, 11]  # not left unacknowledged for good
    assert loop.waiting() == 0


def test_whole_drains_take_every_partition_at_once_and_the_next_batch_waits_whole() -> None:
    sink, loop, committed = _gated_loop(per_partition=False)
    tombstone = _record(40, {"id": 9}, None)

    async def scenario() -> None:
        loop.accept([(_in_partition(_create(10, 1), 0), 10),
                     (_in_partition(_create(11, 2), 1), 11)])
        loop.start_drain()
        await asyncio.sleep(0.01)
        assert sorted(sink.batches) == [[1], [2]]  # one drain, a write per partition
        loop.accept([(_in_partition(_create(12, 3), 2), 12),
                     (_in_partition(_create(13, 4), 1), 13)])
        loop.start_drain()  # a drain is in flight: nothing starts, not even partition 2
        await asyncio.sleep(0.01)
        assert len(sink.batches) == 2
        sink.gate.set()
        await loop.finish()  # the batch read ahead is the next drain, whole
        assert sorted(sink.batches[2:]) == [[3], [4]]
        assert sorted(committed) == [10, 11, 12, 13]
        loop.accept([(tombstone, 40)])  # nothing to write, but its ack waits for a drain
        loop.start_drain()
        await loop.finish()
        assert committed[-1] == 40

    asyncio.run(scenario())
    assert loop.waiting() == 0



def test_a_batch_of_only_tombstones_is_acknowledged_by_a_partition_drain_too() -> None:
    sink, loop, committed = _gated_loop()

    async def scenario() -> None:
        loop.accept([(_record(40, {"id": 9}, None), 40)])  # nothing to write
        loop.start_drain()
        await loop.finish()

    asyncio.run(scenario())
    assert committed == [40] and sink.batches == []


def test_an_eviction_pass_lets_the_event_loop_run_between_its_slices() -> None:
    """A pass over millions of rows must not hold the loop: drains in flight and the
    consumer run between slices of ``EVICT_SLICE_ROWS``."""
    from pipeline.dedup import Deduplicator, DedupSettings
    from pipeline.worker_loop import EVICT_SLICE_ROWS
    from tests.unit.test_dedup import HOUR_MS, change

    store: dict[str, str | bytes] = {}
    dedup = Deduplicator(store, DedupSettings(window_ms=HOUR_MS, evict_batch=1))
    rows = 3 * EVICT_SLICE_ROWS + 1
    for row in range(rows):
        dedup.remember(change(100, row=row, ts_ms=0))
    assert dedup.evict(HOUR_MS + 1) == 1  # a first pass: one row; the next, a quarter later:
    metrics = Metrics("w")
    processor = BatchProcessor([], RecordingDeadLetters(), metrics,  # type: ignore[arg-type]
                               dedup=dedup)
    loop: WorkerLoop[int] = WorkerLoop(processor, Changelog(), metrics, _no_commit,
                                       retry_initial_s=0.1, retry_max_s=0.1)
    turns: list[int] = []

    async def main() -> int:
        async def ticker() -> None:
            while True:
                turns.append(len(store))
                await asyncio.sleep(0)

        other = asyncio.ensure_future(ticker())
        await asyncio.sleep(0)
        evicted = await loop.evict(HOUR_MS + HOUR_MS // 4 + 1)
        other.cancel()
        return evicted

    assert asyncio.run(main()) == rows - 1
    assert not store
    # the other task saw the store shrink slice by slice, not in one step
    assert len(set(turns)) >= 4
    assert metrics.snapshot()["counters"]["cdc_dedup_evicted_total"] == rows - 1


async def _no_commit(tokens: list[int]) -> None:
    pass


class GatedChangelog(Changelog):
    """Each flush waits until ``gate`` is set, like Kafka acknowledging the dedup entries."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.waiting = 0

    async def flush(self) -> None:
        self.flushes += 1
        self.waiting += 1
        await self.gate.wait()
        self.waiting -= 1


@pytest.mark.parametrize("per_partition", [True, False])
def test_the_next_write_goes_out_while_the_changelog_acknowledges_the_last_one(
        per_partition: bool) -> None:
    """A partition's next drain writes while the previous drain's changelog flush is still
    unacknowledged (two at most); nothing is committed before its own flush ended."""
    sink = RecordingSink("s")
    sink.drains_per_partition = per_partition  # type: ignore[attr-defined]
    changelog = GatedChangelog()
    loop, committed = _recording_loop(sink, changelog)

    async def scenario() -> None:
        for n in range(4):
            loop.accept([(_create(10 + n, 1 + n), 10 + n)])
            loop.start_drain()
            await asyncio.sleep(0.01)
        # written: the first two (each awaiting its flush); the rest wait for a flush
        assert [[e.key["id"] for e in b if e.key] for b in sink.batches] == [[1], [2]]
        assert changelog.waiting == 2 and committed == [] and loop.draining
        changelog.gate.set()
        await loop.finish()
        assert [[e.key["id"] for e in b if e.key] for b in sink.batches][2:] == [[3, 4]]
        assert committed == [10, 11, 12, 13]

    asyncio.run(scenario())
    assert loop.waiting() == 0


class _AckBookkeeping:
    """The state ``Consumer.ack`` keeps, on a stand-in consumer."""

    def __init__(self, committed: dict[object, int], acks_off: set[str]) -> None:
        from collections import defaultdict
        from weakref import WeakSet

        class Topics:
            @staticmethod
            def acks_enabled_for(topic: str) -> bool:
                return topic not in acks_off

        class App:
            topics = Topics()

        self.app = App()
        self._committed_offset: dict[object, int | None] = defaultdict(lambda: None, committed)
        self._acked_index: dict[object, set[int]] = defaultdict(set)
        self._acked: dict[object, list[int]] = defaultdict(list)
        self._n_acked = 0
        self._waiting_for_ack: asyncio.Future[None] | None = None
        self._unacked_messages: WeakSet[object] = WeakSet()

    def state(self, messages: list[faust_internals.Fetched]) -> object:
        """Faust's bookkeeping, and whether a revocation would still wait (what its
        ``wait_empty`` reads of the set, once ``_clean_unacked_messages`` ran)."""
        return (dict(self._acked_index), dict(self._acked), self._n_acked,
                any(not m.acked for m in self._unacked_messages),
                [m.acked for m in messages])


@pytest.mark.parametrize("seed", range(40))
def test_the_batched_ack_keeps_faust_s_bookkeeping_exactly(seed: int) -> None:
    """Random batches (repeats, records acked before, offsets below the committed one, a
    topic whose acks are off): :func:`acknowledge` leaves the state Faust's own
    ``Consumer.ack`` per record leaves, and wakes a waiter as it does."""
    import random

    from faust.transport.consumer import Consumer

    assert faust_internals.BATCH_ACK  # the installed Faust is the one the copy mirrors
    rng = random.Random(seed)
    tps = [_TP(("raw", p)) for p in range(3)] + [_TP(("off", 0))]
    committed = {tp: rng.choice([0, 3, 6]) for tp in tps if rng.random() < 0.5}

    def batch(token: faust_internals.FetchToken | None,
              ) -> tuple[_AckBookkeeping, list[faust_internals.Fetched],
                         list[faust_internals.Fetched]]:
        """A consumer, the messages handed out, and those the worker finished (some
        twice; a revocation waits for the others)."""
        local = random.Random(seed)  # the same messages for both consumers
        consumer = _AckBookkeeping(committed, {"off"})
        messages = []
        for _ in range(local.randint(0, 30)):
            tp = local.choice(tps)
            message = faust_internals.Fetched(
                RawRecord(tp.topic, tp.partition, local.randint(0, 12), None, None), tp,
                token)
            message.acked = local.random() < 0.1  # acked by an earlier call
            if token is None:
                consumer._unacked_messages.add(message)
            elif not message.acked:
                token.remaining += 1
            messages.append(message)
        if token is not None and token.remaining:
            consumer._unacked_messages.add(token)
        finished = messages[:local.randint(0, len(messages))]
        finished += local.sample(finished, min(len(finished), 5))  # acked twice
        return consumer, messages, finished

    token = faust_internals.FetchToken()
    ours, mine, finished_here = batch(token)  # as BatchFetch hands them out: a token a fetch
    faust, theirs, finished_there = batch(None)  # as Faust tracks its messages

    async def both() -> tuple[bool, bool]:
        loop = asyncio.get_running_loop()
        ours._waiting_for_ack, faust._waiting_for_ack = loop.create_future(), \
            loop.create_future()
        faust_internals.acknowledge(ours, finished_here)
        for message in finished_there:
            Consumer.ack(faust, message)  # type: ignore[arg-type]
        return ours._waiting_for_ack.done(), faust._waiting_for_ack.done()

    woke_ours, woke_faust = asyncio.run(both())
    assert ours.state(mine) == faust.state(theirs)
    assert woke_ours or not woke_faust
    assert token.remaining == sum(not m.acked for m in mine)
    assert bool(ours._unacked_messages) == (token.remaining > 0)  # out once all are acked


def test_with_another_faust_s_ack_each_record_goes_through_faust_s_own(
        monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[object] = []

    class Consumer:
        def ack(self, message: object) -> bool:
            calls.append(message)
            return True

    monkeypatch.setattr(faust_internals, "BATCH_ACK", False)
    faust_internals.acknowledge(Consumer(), ["a", "b"])
    assert calls == ["a", "b"]
    assert not faust_internals._same_source(len, faust_internals.ACK_SOURCE_SHA256)


def _fetched_by_aiokafka(topic: str, records: list[tuple[int, bytes | None, bytes | None,
                                                       list[tuple[str, bytes | None]]]],
                         ) -> list[Any]:
    """What aiokafka's fetcher makes of one record batch of ``topic`` (lz4, as capture
    writes them): a real batch, parsed by aiokafka's own code."""
    from aiokafka.consumer.fetcher import PartitionRecords
    from aiokafka.record.default_records import DefaultRecordBatchBuilder
    from aiokafka.record.memory_records import MemoryRecords
    from aiokafka.structs import TopicPartition

    builder = DefaultRecordBatchBuilder(magic=2, compression_type=3, is_transactional=0,
                                        producer_id=-1, producer_epoch=-1, base_sequence=-1,
                                        batch_size=1 << 20)
    for offset, (timestamp, key, value, headers) in enumerate(records):
        builder.append(offset, timestamp, key, value, headers)
    parsed = PartitionRecords(TopicPartition(topic, 4), MemoryRecords(bytes(builder.build())),
                              [], 0, None, None, True, 0)
    return list(parsed)


def test_aiokafka_builds_the_raw_topics_records_as_the_worker_takes_them(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The records aiokafka builds for a raw topic are the RawRecords BatchFetch made of
    its ConsumerRecords (timestamps, keys, values and headers as fetched, a header without
    a value as b""); other topics' records stay ConsumerRecords."""
    from aiokafka.consumer.fetcher import PartitionRecords
    from aiokafka.structs import ConsumerRecord

    # put back after the test: the patch is process-wide
    monkeypatch.setattr(PartitionRecords, "_consumer_record",
                        faust_internals._AIOKAFKA_CONSUMER_RECORD)
    monkeypatch.setattr(faust_internals, "_RAW_TOPICS", set())
    assert faust_internals.RAW_FROM_AIOKAFKA  # the installed aiokafka is the one it knows
    batch = [(1_700_000_000_132, b'{"id": 1}', b"{}", [("h", b"v"), ("none", None)]),
             (0, None, None, []), (5, b"", b"x" * 100_000, [("\U0001f600", b"")])]
    before = _fetched_by_aiokafka("raw.t", batch)
    assert all(type(r) is ConsumerRecord for r in before)
    faust_internals.raw_records_from_aiokafka(["raw.t"])
    after = _fetched_by_aiokafka("raw.t", batch)
    assert all(type(r) is RawRecord for r in after)  # no ConsumerRecord built on the way
    other = _fetched_by_aiokafka("faust-changelog", batch)
    assert all(type(r) is ConsumerRecord for r in other)
    fetch = faust_internals.BatchFetch(["raw.t"])
    tp = _TP(("raw.t", 4))
    expected = asyncio.run(fetch._sort(_FaustConsumer(), {tp: before}, None))
    taken = asyncio.run(fetch._sort(_FaustConsumer(), {tp: after}, None))
    assert [m.record for m in taken] == [m.record for m in expected]
    assert all(type(m.record) is RawRecord for m in taken)
    assert taken[0].record == RawRecord("raw.t", 4, 0, b'{"id": 1}', b"{}", 1_700_000_000_132,
                                        (("h", b"v"), ("none", b"")))
