"""The dedup store keeps each entry's partition and mirrors every change to its changelog."""

from __future__ import annotations

import asyncio
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import pytest

from pipeline.kafka.changelog import ChangelogStore
from pipeline.seenstore import open_seen_store


class FakeChangelog:
    def __init__(self) -> None:
        self.writes: list[tuple[int, str, str | None]] = []

    def forget(self, partitions: set[int]) -> None:
        pass

    def write(self, partition: int, key: str, value: str | None) -> None:
        self.writes.append((partition, key, value))

    def write_many(self, partition: int, entries: Any) -> None:
        for key, value in entries:
            self.write(partition, key, value)

    def read(self, partitions: list[int],
             into: MutableMapping[str, str] | None = None) -> MutableMapping[str, str]:
        state: MutableMapping[str, str] = {} if into is None else into
        for partition, key, value in self.writes:
            if partition in partitions:
                if value is None:
                    state.pop(key, None)
                else:
                    state[key] = value
        return state


def test_writes_go_to_the_partition_of_their_scope() -> None:
    log = FakeChangelog()
    store = ChangelogStore(log)  # type: ignore[arg-type]
    with store.scope(2):
        store["row-a"] = "pos-1"
    with store.scope(0):
        store["row-b"] = "pos-7"
    assert store["row-a"] == "pos-1"
    assert store.get("missing") is None
    assert log.writes == [(2, "row-a", "2|pos-1"), (0, "row-b", "0|pos-7")]
    del store["row-a"]  # an eviction deletes in the entry's own partition
    assert log.writes[-1] == (2, "row-a", None)
    assert list(store) == ["row-b"]


@pytest.mark.parametrize("spec", ["memory://", "rocksdb://"])
def test_batch_writes_go_to_their_scope_and_batch_reads_strip_it(spec: str,
                                                                   tmp_path: Path) -> None:
    log = FakeChangelog()
    store = ChangelogStore(log, open_seen_store(spec, tmp_path))  # type: ignore[arg-type]
    with store.scope(1):
        store.update({"row-a": "pos-1", "row-b": "pos-2"})
    with store.scope(0):
        store.update({"row-c": "pos-3"})
    assert store.get_many(["row-b", "nope", "row-c", "row-a"]) == [
        "pos-2", None, "pos-3", "pos-1"]
    assert log.writes == [(1, "row-a", "1|pos-1"), (1, "row-b", "1|pos-2"),
                          (0, "row-c", "0|pos-3")]


@pytest.mark.parametrize("spec", ["memory://", "rocksdb://"])
def test_a_batch_whose_changelog_write_fails_leaves_the_store_as_it_was(
        spec: str, tmp_path: Path) -> None:
    """Else a retried drain would find the rows remembered (duplicates: dropped, never
    written to the changelog) and a new owner of the partition would not know them."""

    class FailingChangelog(FakeChangelog):
        def write(self, partition: int, key: str, value: str | None) -> None:
            if len(self.writes) == 1:
                raise RuntimeError("KafkaException: fatal producer error")
            super().write(partition, key, value)

    store = ChangelogStore(FailingChangelog(), open_seen_store(spec, tmp_path))  # type: ignore[arg-type]
    with store.scope(0), pytest.raises(RuntimeError):
        store.update({"row-a": "pos-1", "row-b": "pos-2"})
    assert store.get_many(["row-a", "row-b"]) == [None, None]
    with store.scope(0), pytest.raises(RuntimeError):
        store["row-c"] = "pos-3"
    assert store.get("row-c") is None


@pytest.mark.parametrize("spec", ["memory://", "rocksdb://"])
def test_restore_and_forget_by_partition(spec: str, tmp_path: Path) -> None:
    log = FakeChangelog()
    writer = ChangelogStore(log)  # type: ignore[arg-type]
    for partition, key in ((0, "a"), (1, "b"), (1, "c")):
        with writer.scope(partition):
            writer[key] = f"v{key}"
    del writer["c"]

    # a restarted worker, restoring into the configured store
    fresh = ChangelogStore(log, open_seen_store(spec, tmp_path))  # type: ignore[arg-type]
    fresh.restore({1})
    assert dict(fresh.items()) == {"b": "vb"}  # partition 1 only; the deleted entry stays gone
    fresh.restore({0})
    fresh.forget({1})
    assert dict(fresh.items()) == {"a": "va"}


# -- the writer: an entry Kafka never took -----------------------------------------------
class _Delivered:
    def __init__(self, partition: int, key: bytes, value: bytes | None) -> None:
        self._partition, self._key, self._value = partition, key, value

    def partition(self) -> int:
        return self._partition

    def key(self) -> bytes:
        return self._key

    def value(self) -> bytes | None:
        return self._value


class LossyProducer:
    """Reports each queued entry when served; entries of ``failing`` keys fail (as after
    ``message.timeout.ms`` of an outage) until ``failing`` is emptied."""

    failing: set[bytes] = set()
    log: list[tuple[int, bytes, bytes | None]] = []

    def __init__(self, config: object) -> None:
        self.queue: list[tuple[Any, _Delivered]] = []

    def produce(self, topic: str, value: bytes | None, key: bytes, partition: int,
                on_delivery: Any) -> None:
        self.queue.append((on_delivery, _Delivered(partition, key, value)))

    def flush(self, timeout: float = 0) -> int:
        queue, self.queue = self.queue, []
        for report, msg in queue:
            failed = msg.key() in self.failing
            if not failed:
                self.log.append((msg.partition(), msg.key(), msg.value()))
            report("Local: Message timed out" if failed else None, msg)
        return 0

    poll = flush


def _lossy_store(monkeypatch: pytest.MonkeyPatch) -> ChangelogStore:
    import pipeline.kafka.changelog as changelog
    from pipeline.config import KafkaSettings

    monkeypatch.setattr(changelog, "KafkaProducer", LossyProducer)
    LossyProducer.log = []
    return ChangelogStore(changelog.ChangelogWriter("t", KafkaSettings()))


def test_no_flush_passes_over_an_entry_kafka_never_took_and_the_next_writes_it_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import orjson

    from pipeline.errors import RetriableError

    store = _lossy_store(monkeypatch)
    LossyProducer.failing = {orjson.dumps("row-b")}

    async def scenario() -> None:
        with store.scope(0):
            store["row-a"] = "x"
        with store.scope(1):
            store["row-b"] = "y1"
        # two drains flush at once; both must fail, whichever sees the failure first
        outcomes = await asyncio.gather(store.flush(), store.flush(), return_exceptions=True)
        assert all(isinstance(o, RetriableError) for o in outcomes), outcomes
        with pytest.raises(RetriableError):  # still failing: written again, lost again
            await store.flush()
        with store.scope(1):
            store["row-b"] = "y2"  # a newer value meanwhile (lost too)
        LossyProducer.failing = set()  # Kafka is back
        await store.flush()  # the retry writes the lost entry again, with the newest value
        await store.flush()

    asyncio.run(scenario())
    landed = [(p, v) for p, k, v in LossyProducer.log if k == orjson.dumps("row-b")]
    assert landed and set(landed) == {(1, orjson.dumps("1|y2"))}  # never the stale y1


class FullOnceProducer(LossyProducer):
    """Its queue is full once, when ``full_once`` is set: the produce that meets it polls,
    and the poll serves the delivery reports waiting."""

    full_once = False

    def produce(self, topic: str, value: bytes | None, key: bytes, partition: int,
                on_delivery: Any) -> None:
        if FullOnceProducer.full_once:
            FullOnceProducer.full_once = False
            raise BufferError("Local: Queue full")
        super().produce(topic, value, key, partition, on_delivery)


def test_a_failure_reported_while_lost_entries_are_written_again_fails_that_flush(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import orjson

    import pipeline.kafka.changelog as changelog
    from pipeline.config import KafkaSettings
    from pipeline.errors import RetriableError

    monkeypatch.setattr(changelog, "KafkaProducer", FullOnceProducer)
    LossyProducer.log = []
    store = ChangelogStore(changelog.ChangelogWriter("t", KafkaSettings()))

    async def scenario() -> None:
        with store.scope(0):
            store["a"] = "1"
        LossyProducer.failing = {orjson.dumps("a")}
        with pytest.raises(RetriableError):
            await store.flush()  # a is lost: the next flush writes it again
        LossyProducer.failing = {orjson.dumps("b")}
        with store.scope(0):
            store["b"] = "1"  # the next drain's entry, not reported yet
        FullOnceProducer.full_once = True  # rewriting a meets a full queue: b's report is served
        with pytest.raises(RetriableError):  # b never reached Kafka: this flush must fail
            await store.flush()
        LossyProducer.failing = set()
        await store.flush()

    try:
        asyncio.run(scenario())
    finally:
        LossyProducer.failing = set()
    assert orjson.dumps("b") in {k for _, k, _ in LossyProducer.log}


def test_a_lost_entry_of_a_revoked_partition_is_not_written_again_as_a_delete(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import orjson

    from pipeline.errors import RetriableError

    store = _lossy_store(monkeypatch)

    async def scenario() -> None:
        with store.scope(3):
            store["k"] = "v"
        LossyProducer.failing = {orjson.dumps("k")}
        with pytest.raises(RetriableError):
            await store.flush()
        LossyProducer.failing = set()
        store.forget({3})  # partition 3 revoked: its new owner writes its changelog now
        await store.flush()  # another partition's drain flushes

    asyncio.run(scenario())
    assert (3, orjson.dumps("k"), None) not in LossyProducer.log, LossyProducer.log


def test_eviction_walks_a_faust_store_that_cannot_scan() -> None:
    """Faust's table store always has ``scan``; over ``memory://`` it answers None (the
    deduplicator then walks a snapshot of the keys)."""

    class CannotScan(dict):  # type: ignore[type-arg]
        def scan(self, after: str | None, limit: int) -> None:
            return None

    store = ChangelogStore(FakeChangelog(), CannotScan())  # type: ignore[arg-type]
    assert store.scan(None, 10) is None


def test_a_batch_of_entries_meets_a_full_queue_and_every_entry_is_counted_and_flushed(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import orjson

    import pipeline.kafka.changelog as changelog
    from pipeline.config import KafkaSettings

    monkeypatch.setattr(changelog, "KafkaProducer", FullOnceProducer)
    LossyProducer.log = []
    writer = changelog.ChangelogWriter("t", KafkaSettings())
    store = ChangelogStore(writer)
    with store.scope(2):
        store.update({"a": "1", "b": "2", "c": "3"})
        FullOnceProducer.full_once = True  # the next batch's second entry waits for room
        store.update({"d": "4", "e": "5"})
    assert writer._written == {2: 5}
    asyncio.run(store.flush())
    assert LossyProducer.log == [(2, orjson.dumps(k), orjson.dumps(f"2|{v}"))
                                 for k, v in ("a1", "b2", "c3", "d4", "e5")]


def test_entries_queued_before_a_producer_error_are_counted(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A flush must wait for what did reach the queue; the store keeps none of the batch."""
    import pipeline.kafka.changelog as changelog
    from pipeline.config import KafkaSettings

    class Fatal(LossyProducer):
        def produce(self, topic: str, value: bytes | None, key: bytes, partition: int,
                    on_delivery: Any) -> None:
            if len(self.queue) == 2:
                raise RuntimeError("KafkaException: fatal producer error")
            super().produce(topic, value, key, partition, on_delivery)

    monkeypatch.setattr(changelog, "KafkaProducer", Fatal)
    writer = changelog.ChangelogWriter("t", KafkaSettings())
    store = ChangelogStore(writer)
    with store.scope(0), pytest.raises(RuntimeError):
        store.update({"a": "1", "b": "2", "c": "3"})
    assert writer._written == {0: 2} and len(store) == 0
