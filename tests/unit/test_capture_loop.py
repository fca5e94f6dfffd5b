"""The capture loop: confirm never passes a record Kafka has not acknowledged.

A fake source hands over scripted items; a fake publisher acknowledges records only when the
test (or hypothesis) says so. Every ``confirm`` is checked against what was acknowledged.
"""

from __future__ import annotations

import random
import threading
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.capture.delivery import DeliveryFailed
from pipeline.capture.loop import CaptureLoop
from pipeline.capture.source import ANY_PARTITION, EVERY_PARTITION, Checkpoint, Item
from pipeline.config import KafkaSettings
from pipeline.errors import RetriableError, SourceExhausted
from pipeline.metrics import Metrics
from pipeline.retry import Backoff


class FakePublisher:
    """Queues records; ``ack(n)`` acknowledges the oldest n (or a random choice)."""

    def __init__(self, rng: random.Random | None = None, partitions: int = 3) -> None:
        self.pending: list[tuple[int, Any]] = []  # (record number, callback)
        self.sent: list[tuple[str, bytes | None, bytes | None, int]] = []
        self.acked: set[int] = set()
        self.rng = rng
        self.fail: set[int] = set()  # record numbers Kafka refuses
        self.n_partitions = partitions
        self.while_waiting: Any = lambda: None

    def publish(self, topic: str, key: bytes | None, value: bytes | None, cb: Any,
                partition: int = -1) -> None:
        self.pending.append((len(self.sent), cb))
        self.sent.append((topic, key, value, partition))

    def produce(self, topic: str, value: bytes | None, key: bytes | None, partition: int,
                cb: Any) -> None:
        """As the producer's: positional, in its order."""
        self.publish(topic, key, value, cb, partition)

    def partitions(self, topic: str) -> int:
        return self.n_partitions

    def _ack_one(self, index: int) -> None:
        number, cb = self.pending.pop(index)
        if number in self.fail:
            cb("KafkaError{code=MSG_SIZE_TOO_LARGE}")
        else:
            self.acked.add(number)
            cb(None)

    def poll(self, timeout: float = 0.0) -> int:
        n = 0
        if self.rng is not None:
            while self.pending and self.rng.random() < 0.6:
                self._ack_one(self.rng.randrange(len(self.pending)))
                n += 1
        return n

    def flush(self, timeout: float) -> int:
        while self.pending:
            self._ack_one(0)
        return 0


class FakeSource:
    """Hands over scripted reads; records each confirm with what was acknowledged then."""

    name = "fake"

    def __init__(self, sessions: list[list[list[Item]]], publisher: FakePublisher,
                 stop: threading.Event) -> None:
        self.sessions = sessions  # per session: its reads; a RetriableError ends a session
        self.publisher = publisher
        self.stop = stop
        self.session = -1
        self.reads: list[list[Item]] = []
        self.confirmed: list[int] = []
        self.closed = 0
        # record number -> the checkpoint it precedes (filled as records are published)
        self.checkpoint_of: dict[int, int] = {}
        self._unassigned: list[int] = []

    def open(self) -> list[str]:
        self.session += 1
        self.reads = list(self.sessions[self.session])
        self._unassigned = []
        return ["t"]

    def read(self, max_items: int) -> list[Item]:
        # records of the previous read are published by now: note their checkpoint
        if not self.reads:
            if self.session + 1 < len(self.sessions):
                raise RetriableError("connection lost")
            self.stop.set()
            return []
        items = self.reads.pop(0)
        start = len(self.publisher.sent)
        count = 0
        for item in items:
            if isinstance(item, Checkpoint):
                for number in self._unassigned + list(range(start, start + count)):
                    self.checkpoint_of[number] = item.position
                self._unassigned = []
                start += count
                count = 0
            else:
                count += 3 if item[3] == EVERY_PARTITION else 1
        self._unassigned += list(range(start, start + count))
        return items

    def confirm(self, position: int) -> None:
        unacked = [n for n, cp in self.checkpoint_of.items()
                   if cp <= position and n not in self.publisher.acked]
        assert not unacked, f"confirmed {position} before records {unacked} were acknowledged"
        assert not self.confirmed or position > self.confirmed[-1]
        self.confirmed.append(position)

    def keepalive(self) -> None:
        pass

    def close(self) -> None:
        self.closed += 1


def rec(key: str, value: bytes | None = b"{}", partition: int = ANY_PARTITION) -> Item:
    return ("t", key.encode(), value, partition)


def run(sessions: list[list[list[Item]]], publisher: FakePublisher) -> FakeSource:
    stop = threading.Event()
    source = FakeSource(sessions, publisher, stop)
    loop = CaptureLoop(source, publisher, KafkaSettings(), Metrics("test"),  # type: ignore[arg-type]
                       Backoff(0.001, 0.001), create_topics=False)
    loop.run(stop)
    return source


class AcksValuesOnly(FakePublisher):
    """Acknowledges change records at once, tombstones only at the final flush."""

    def poll(self, timeout: float = 0.0) -> int:
        values = [i for i, (n, _) in enumerate(self.pending) if self.sent[n][2] is not None]
        for index in reversed(values):
            self._ack_one(index)
        return len(values)


def test_a_delete_and_its_tombstone_are_both_acknowledged_before_confirming() -> None:
    publisher = AcksValuesOnly()
    reads: list[list[Item]] = [[rec("1"), rec("1", None), Checkpoint(100)], [], [], []]
    source = run([reads], publisher)
    # FakeSource.confirm fails the test if 100 is confirmed while the tombstone is unacked:
    # it is confirmed once, after the session's final flush acknowledged the tombstone.
    assert source.confirmed == [100]
    assert [v for _, _, v, _ in publisher.sent] == [b"{}", None]


def test_a_transaction_over_many_reads_is_confirmed_only_at_its_end() -> None:
    publisher = FakePublisher(random.Random(1))
    reads: list[list[Item]] = [[rec(str(i))] for i in range(20)] + [[Checkpoint(500)]]
    source = run([reads], publisher)
    assert source.confirmed == [500]


def test_a_refused_record_stops_capture_without_confirming_past_it() -> None:
    publisher = FakePublisher()
    publisher.fail = {1}
    reads: list[list[Item]] = [[rec("a"), Checkpoint(100)], [rec("b"), Checkpoint(200)],
                               [rec("c"), Checkpoint(300)]]
    stop = threading.Event()
    source = FakeSource([reads], publisher, stop)
    loop = CaptureLoop(source, publisher, KafkaSettings(), Metrics("t"),  # type: ignore[arg-type]
                       create_topics=False)
    with pytest.raises(DeliveryFailed, match="MSG_SIZE_TOO_LARGE"):
        loop.run(stop)
    assert max(source.confirmed, default=0) < 200
    assert source.closed == 1


def test_a_reconnect_in_the_middle_of_a_transaction_confirms_only_whole_ones() -> None:
    publisher = FakePublisher(random.Random(7))
    first: list[list[Item]] = [[rec("a"), Checkpoint(100)], [rec("b"), rec("c")]]  # then lost
    second: list[list[Item]] = [[rec("b"), rec("c"), Checkpoint(200)]]  # re-read after 100
    source = run([first, second], publisher)
    assert source.confirmed[-1] == 200 and 100 in source.confirmed
    assert source.closed == 2


def test_a_truncate_goes_to_every_partition() -> None:
    publisher = FakePublisher(partitions=4)
    source = run([[[rec("", b"t", EVERY_PARTITION), Checkpoint(10)]]], publisher)
    assert [p for *_, p in publisher.sent] == [0, 1, 2, 3]
    assert source.confirmed == [10]


@st.composite
def streams(draw: st.DrawFn) -> list[list[list[Item]]]:
    """Sessions of reads; transactions of 0-4 records (a delete brings its tombstone)
    split at random read boundaries; positions increase across sessions."""
    sessions = []
    position = 0
    for _ in range(draw(st.integers(1, 3))):
        items: list[Item] = []
        for _ in range(draw(st.integers(0, 6))):
            for _ in range(draw(st.integers(0, 4))):
                if draw(st.booleans()):
                    items += [rec("k"), rec("k", None)]
                else:
                    items.append(rec("k"))
            position += draw(st.integers(1, 100))
            items.append(Checkpoint(position))
        cuts = sorted(draw(st.lists(st.integers(0, len(items)), max_size=5)))
        reads, last = [], 0
        for cut in [*cuts, len(items)]:
            reads.append(items[last:cut])
            last = cut
        sessions.append(reads)
    return sessions


@settings(max_examples=200, deadline=None)
@given(streams(), st.integers(0, 2**32))
def test_property_confirm_never_passes_an_unacknowledged_record(
    sessions: list[list[list[Item]]], seed: int
) -> None:
    publisher = FakePublisher(random.Random(seed))
    source = run(sessions, publisher)  # FakeSource.confirm asserts on every call
    last = [i.position for s in sessions for r in s for i in r if isinstance(i, Checkpoint)]
    if last:
        assert source.confirmed and source.confirmed[-1] == last[-1]


class Exhausting(FakeSource):
    """Runs out after its reads (initial_only); ``finish`` fails ``failures`` times first."""

    def __init__(self, sessions: list[list[list[Item]]], publisher: FakePublisher,
                 stop: threading.Event, failures: int) -> None:
        super().__init__(sessions, publisher, stop)
        self.failures = failures
        self.finished_after: list[list[int]] = []  # what was confirmed at each finish

    def open(self) -> list[str]:
        self.session = min(self.session + 1, len(self.sessions) - 1)
        self.reads = list(self.sessions[self.session])
        self._unassigned = []
        return ["t"]

    def read(self, max_items: int) -> list[Item]:
        if not self.reads:
            raise SourceExhausted("snapshot complete")
        return super().read(max_items)

    def finish(self) -> None:
        self.finished_after.append(list(self.confirmed))
        if self.failures:
            self.failures -= 1
            raise RetriableError("database away")


def test_an_exhausted_source_is_finished_after_its_last_position_is_confirmed() -> None:
    publisher = FakePublisher()
    stop = threading.Event()
    source = Exhausting([[[rec("a"), rec("b"), Checkpoint(1)]], [[]]], publisher, stop,
                        failures=1)
    loop = CaptureLoop(source, publisher, KafkaSettings(), Metrics("test"),  # type: ignore[arg-type]
                       Backoff(0.001, 0.001), create_topics=False)
    loop.run(stop)
    # the first finish came after the last checkpoint was confirmed; it failed, so the
    # session ran again (exhausted at once) and finish was called again
    assert source.finished_after == [[1], [1]]
    assert source.closed == 2 and not stop.is_set()


class SlowToAck(FakePublisher):
    """Acknowledges nothing in the first session (Kafka slow past the drain's bound)."""

    def __init__(self) -> None:
        super().__init__()
        self.stalled = True
        self.abandoned: set[int] = set()

    def flush(self, timeout: float) -> int:
        if self.stalled:
            self.stalled = False
            # never acknowledged: the records go with the session, and are read again
            self.abandoned = {number for number, _ in self.pending}
            self.pending.clear()
            return 1
        return super().flush(timeout)


class ReadsAgain(Exhausting):
    def open(self) -> list[str]:
        for number in getattr(self.publisher, "abandoned", ()):
            self.checkpoint_of.pop(number, None)  # superseded by the same rows read again
        return super().open()


def test_an_exhausted_source_is_not_finished_while_its_last_records_are_unacknowledged() -> None:
    """``initial_only``: finishing drops the slot and the progress; with the last chunk
    unacknowledged that would lose it. The source is read again (it re-reads what was not
    confirmed, as after a crash) and finished once all of it is acknowledged."""
    publisher = SlowToAck()
    stop = threading.Event()
    chunk = [[rec("a"), rec("b"), Checkpoint(1)]]
    source = ReadsAgain([chunk, chunk], publisher, stop, failures=0)
    loop = CaptureLoop(source, publisher, KafkaSettings(), Metrics("test"),  # type: ignore[arg-type]
                       Backoff(0.001, 0.001), create_topics=False)
    loop.run(stop)
    assert source.session == 1  # read again
    assert source.finished_after == [[1]]  # finished once, after the re-read was confirmed


def test_a_record_over_the_size_limit_is_refused_with_the_settings_to_raise() -> None:
    from confluent_kafka import KafkaError, KafkaException

    from pipeline.capture.publisher import refused

    error = refused("p.public.t", b"x" * 20_000_000,
                    KafkaException(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE)))
    assert "20,000,000 bytes" in str(error) and "message.max.bytes" in str(error)
    assert "max.message.bytes" in str(error)
    other = refused("t", b"x", KafkaException(KafkaError(KafkaError._INVALID_ARG)))
    assert "Kafka refused a record for 't'" in str(other)


class StoppedWhileAway(FakeSource):
    """The database goes away and the process is asked to stop meanwhile (SIGTERM)."""

    def read(self, max_items: int) -> list[Item]:
        self.stop.set()
        raise RetriableError("database away")


def test_a_stop_during_an_outage_ends_capture_without_another_session(
        caplog: pytest.LogCaptureFixture) -> None:
    """It says it stopped, not that it resumes in a moment (it used to, then exited)."""
    caplog.set_level("INFO")
    stop = threading.Event()
    publisher = FakePublisher(random.Random(3))
    source = StoppedWhileAway([[], []], publisher, stop)
    loop = CaptureLoop(source, publisher, KafkaSettings(), Metrics("test"),  # type: ignore[arg-type]
                       Backoff(30, 30), create_topics=False)
    started = time.monotonic()
    loop.run(stop)
    assert source.session == 0 and source.closed == 1
    assert time.monotonic() - started < 5  # no 30 s backoff before noticing the stop
    assert "stopped while interrupted: database away" in caplog.text
    assert "resuming" not in caplog.text


class QueueFullAtTimes(FakePublisher):
    """The producer's own produce() finds its queue full for every other record; publish()
    is the path that waits (here: succeeds at once)."""

    def __init__(self) -> None:
        super().__init__()
        self.full = 0

    def produce(self, topic: str, value: bytes | None, key: bytes | None, partition: int,
                cb: Any) -> None:
        if len(self.sent) % 2:
            self.full += 1
            raise BufferError("Local: Queue full")
        super().produce(topic, value, key, partition, cb)


def test_a_record_the_full_queue_refused_is_published_once_through_the_waiting_path() -> None:
    publisher = QueueFullAtTimes()
    reads: list[list[Item]] = [[rec("1"), rec("2"), rec("3"), Checkpoint(100)], [rec("4"),
                               Checkpoint(200)], [], []]
    source = run([reads], publisher)
    assert publisher.full == 2
    assert [k for _, k, _, _ in publisher.sent] == [b"1", b"2", b"3", b"4"]
    assert source.confirmed[-1] == 200
