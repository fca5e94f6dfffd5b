"""Capture gives its producer up once Kafka answered none of the records of the oldest unit
it waits for during ``kafka.producer_stall_s``: the producer is purged and replaced, the
session ends with a retriable error, and the next one reads again from the last confirmed
position through the new producer. A slow Kafka, a huge transaction still being read, and
an idle source are waited for however long.

librdkafka is replaced by a fake producer (a stuck one is what a broker restart left behind
in the snapshot readers); the publisher, the delivery tracker and the capture loop are the
real ones, on a fake clock.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest

from pipeline.capture import publisher as publisher_module
from pipeline.capture import stall
from pipeline.capture.avro import AvroPublisher
from pipeline.capture.loop import CaptureLoop
from pipeline.capture.publisher import EventPublisher
from pipeline.capture.source import ANY_PARTITION, Checkpoint, Item
from pipeline.capture.stall import ProducerStalled, StallWatch
from pipeline.config import KafkaSettings
from pipeline.metrics import Metrics
from pipeline.retry import Backoff

LIMIT = 30.0


class _Clock:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.now = 500.0
        monkeypatch.setattr(stall.time, "monotonic", lambda: self.now)


class _Producer:
    """librdkafka's producer as the publisher uses it. ``stuck``: it answers nothing; a key
    in ``stuck_keys``: that record is never answered (a partition that stays stuck); else
    ``poll`` answers up to ``per_poll`` records, oldest first."""

    made: list[_Producer] = []

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.queued: list[tuple[bytes | None, bytes | None, Any]] = []
        self.delivered: list[bytes | None] = []
        self.stuck = False
        self.stuck_keys: set[bytes] = set()
        self.per_poll = 1_000_000
        self.capacity = 1_000_000
        self.purged = False
        self.tick: Any = lambda: None  # called by every poll
        _Producer.made.append(self)

    def produce(self, topic: str, value: bytes | None = None, key: bytes | None = None,
                partition: int = -1, on_delivery: Any = None, headers: Any = None) -> None:
        if len(self.queued) >= self.capacity:
            raise BufferError("Local: Queue full")
        self.queued.append((key, value, on_delivery))

    def poll(self, timeout: float) -> int:
        self.tick()
        if self.stuck:
            return 1  # librdkafka's logs and errors are served (and counted) too
        answerable = [r for r in self.queued if r[0] not in self.stuck_keys][:self.per_poll]
        for record in answerable:
            self.queued.remove(record)
            self.delivered.append(record[1])
            record[2](None, None)
        return len(answerable)

    def flush(self, timeout: float) -> int:
        self.poll(timeout)
        return len(self.queued)

    def purge(self, in_queue: bool = True, in_flight: bool = True,
              blocking: bool = True) -> None:
        self.purged = True

    def __len__(self) -> int:
        return len(self.queued)


@pytest.fixture(autouse=True)
def _fake_producer(monkeypatch: pytest.MonkeyPatch) -> None:
    _Producer.made = []
    monkeypatch.setattr(publisher_module, "Producer", _Producer)


def _settings(**kwargs: Any) -> KafkaSettings:
    return KafkaSettings(producer_stall_s=LIMIT, **kwargs)


def _record(key: int, value: bytes = b"v") -> Item:
    return ("t", str(key).encode(), value, ANY_PARTITION)


class _Source:
    """Each session hands over ``reads`` from the start (nothing was confirmed before), then
    idle reads; every read moves the clock ``step`` seconds. Stops once ``last`` is
    confirmed, or after ``sessions`` sessions."""

    name = "fake"

    def __init__(self, clock: _Clock, reads: list[list[Item]], last: int, step: float = 1.0,
                 sessions: int = 3) -> None:
        self.clock = clock
        self.script = reads
        self.last = last
        self.step = step
        self.sessions = sessions
        self.stop = threading.Event()
        self.opened = 0
        self.closed = 0
        self.confirmed: list[int] = []
        self.reads: list[list[Item]] = []

    def open(self) -> list[str]:
        self.opened += 1
        if self.opened > self.sessions:  # no end in sight: the test fails, not hangs
            self.stop.set()
        self.reads = list(self.script)
        return ["t"]

    def read(self, max_items: int) -> list[Item]:
        self.clock.now += self.step
        return self.reads.pop(0) if self.reads else []

    def confirm(self, position: int) -> None:
        self.confirmed.append(position)
        if position == self.last:
            self.stop.set()

    def keepalive(self) -> None:
        pass

    def close(self) -> None:
        self.closed += 1


def _capture(source: _Source, publisher: EventPublisher) -> None:
    CaptureLoop(source, publisher, _settings(), Metrics("test"),  # type: ignore[arg-type]
                Backoff(0.001, 0.001), create_topics=False).run(source.stop)


def test_capture_reads_again_through_a_new_producer_after_a_stall(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("WARNING")
    clock = _Clock(monkeypatch)
    publisher = EventPublisher(_settings())
    stuck = _Producer.made[-1]
    stuck.stuck = True
    source = _Source(clock, [[_record(1, b"one"), _record(2, b"two"), Checkpoint(100)]], 100)
    _capture(source, publisher)
    assert source.opened == 2 and source.closed == 2
    assert source.confirmed == [100]  # only once the new producer had both records
    assert stuck.purged and [v for _, v, _ in stuck.queued] == [b"one", b"two"]
    assert _Producer.made[-1].delivered == [b"one", b"two"]
    assert ("answered none of the 2 record(s) of the oldest transaction capture waits for in "
            "30s") in caplog.text


def test_a_partition_that_stays_stuck_is_a_stall_though_others_are_answered(
        monkeypatch: pytest.MonkeyPatch) -> None:
    clock = _Clock(monkeypatch)
    publisher = EventPublisher(_settings())
    first = _Producer.made[-1]
    first.stuck_keys = {b"2"}
    reads = [[_record(1), _record(2), Checkpoint(100)],
             *[[_record(n), Checkpoint(100 + n)] for n in range(3, 40)]]
    source = _Source(clock, reads, 139)
    _capture(source, publisher)
    assert first.purged and source.opened == 2
    assert source.confirmed[-1] == 139


def test_a_slow_kafka_under_a_huge_transaction_is_waited_for(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """One transaction read over ten limits' time, records published faster than Kafka
    answers them (the count the loop watches only grows), a full queue at times."""
    clock = _Clock(monkeypatch)
    publisher = EventPublisher(_settings())
    producer = _Producer.made[-1]
    producer.per_poll = 2
    producer.capacity = 200
    reads = [[_record(n * 3 + i) for i in range(3)] for n in range(10 * int(LIMIT))]
    source = _Source(clock, [*reads, [Checkpoint(7)]], 7)
    _capture(source, publisher)
    assert source.opened == 1 and not producer.purged
    assert source.confirmed == [7] and len(producer.delivered) == 30 * int(LIMIT)


def test_a_full_queue_kafka_never_drains_is_a_stall(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = _Clock(monkeypatch)
    publisher = EventPublisher(_settings())
    first = _Producer.made[-1]
    first.capacity = 2
    first.stuck = True
    polls = [0]

    def tick() -> None:
        polls[0] += 1
        clock.now += 1
        assert polls[0] < 10 * LIMIT, "capture never gave the stuck producer up"

    first.tick = tick
    source = _Source(clock, [[_record(1), _record(2), _record(3), Checkpoint(5)]], 5)
    _capture(source, publisher)
    assert first.purged and source.confirmed == [5]
    assert int(LIMIT) <= polls[0] <= int(LIMIT) + 2  # waited the limit for room, no more
    assert _Producer.made[-1].delivered == [b"v"] * 3


def test_an_idle_source_and_an_answered_queue_start_no_clock(
        monkeypatch: pytest.MonkeyPatch) -> None:
    clock = _Clock(monkeypatch)
    publisher = EventPublisher(_settings())
    producer = _Producer.made[-1]
    idle: list[list[Item]] = [[] for _ in range(10 * int(LIMIT))]
    source = _Source(clock, [[_record(1), Checkpoint(1)], *idle, [_record(2), Checkpoint(2)]],
                     2)
    _capture(source, publisher)
    assert source.opened == 1 and not producer.purged and source.confirmed == [1, 2]


def test_renewing_purges_the_old_producer_and_binds_the_new_one(
        monkeypatch: pytest.MonkeyPatch) -> None:
    answers: list[Any] = []
    publisher = EventPublisher(_settings())
    old = _Producer.made[-1]
    publisher.produce("t", b"v", b"k", ANY_PARTITION, lambda e, m: answers.append(e))
    publisher.renew()
    new = _Producer.made[-1]
    assert old.purged and new is not old and new.config == old.config
    publisher.produce("t", b"again", b"k", ANY_PARTITION, lambda e, m: answers.append(e))
    publisher.publish("t", b"k", b"third", lambda e, m: answers.append(e))
    publisher.poll(0)
    assert new.delivered == [b"again", b"third"] and answers == [None, None]


def test_an_avro_publisher_keeps_encoding_through_its_new_producer() -> None:
    class Schemas:
        def encode(self, topic: str, table: str, envelope: dict[str, Any]) -> bytes:
            return b"avro:" + table.encode()

    settings = _settings(value_format="avro", schema_registry_url="http://127.0.0.1:1")
    publisher = AvroPublisher(settings, Schemas())  # type: ignore[arg-type]
    publisher.renew()
    envelope = b'{"op":"c","source":{"schema":"public","table":"items"}}'
    publisher.produce("cdc.public.items", envelope, b"k", ANY_PARTITION, lambda e, m: None)
    assert _Producer.made[-1].queued[0][1] == b"avro:public.items"


def test_the_clock_runs_only_while_records_wait_and_restarts_at_progress(
        monkeypatch: pytest.MonkeyPatch) -> None:
    clock = _Clock(monkeypatch)
    watch = StallWatch(LIMIT, "a producer holds")
    watch.observe(0)
    clock.now += 10 * LIMIT  # idle for long: no clock ran
    watch.observe(5)
    clock.now += LIMIT - 1
    watch.observe(5)
    watch.observe(0)  # everything answered: the clock stops
    watch.observe(5)
    clock.now += LIMIT - 1
    watch.observe(4)  # fewer held: progress
    clock.now += LIMIT - 1
    watch.observe(9, progressed=True)  # the owner saw progress
    clock.now += LIMIT - 1
    watch.observe(9)
    clock.now += 1
    with pytest.raises(ProducerStalled, match=r"none of the 9 record\(s\) a producer holds in "
                                              r"30s \(kafka.producer_stall_s = 30\)"):
        watch.observe(9)
