"""Records with Kafka headers, and a source that takes Kafka's refusals itself (the outbox
relay) instead of capture stopping."""

from __future__ import annotations

import random
import threading
from typing import Any

from pipeline.capture.delivery import DeliveryTracker
from pipeline.capture.loop import CaptureLoop
from pipeline.capture.source import ANY_PARTITION, EVERY_PARTITION, Checkpoint, Item
from pipeline.config import KafkaSettings
from pipeline.metrics import Metrics
from pipeline.retry import Backoff
from tests.unit.test_capture_loop import FakePublisher, FakeSource


class HeadersPublisher(FakePublisher):
    def __init__(self, rng: random.Random | None = None) -> None:
        super().__init__(rng)
        self.headers: list[Any] = []

    def publish(self, topic: str, key: bytes | None, value: bytes | None, cb: Any,
                partition: int = -1, headers: Any = None) -> None:
        super().publish(topic, key, value, cb, partition)
        self.headers.append(headers)


class RefusalTakingSource(FakeSource):
    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.refusals: list[tuple[Any, str | None]] = []

    def refused(self, position: Any, reason: str | None) -> None:
        # every record of the unit has an answer, none of a later unit was confirmed
        assert not self.confirmed or self.confirmed[-1] < position
        self.refusals.append((position, reason))

    def confirm(self, position: int) -> None:
        # a refused record counts as answered (its source was told); every other one must
        # have been acknowledged
        unanswered = [n for n, cp in self.checkpoint_of.items() if cp <= position
                      and n not in self.publisher.acked and n not in self.publisher.fail]
        assert not unanswered, f"confirmed {position} before records {unanswered} answered"
        # the refused unit (200 in the test below) is told before anything past it confirms
        assert position < 200 or any(p == 200 for p, _ in self.refusals)
        self.confirmed.append(position)


def _run(source_cls: type[FakeSource], reads: list[list[Item]],
         publisher: FakePublisher) -> Any:
    stop = threading.Event()
    source = source_cls([reads], publisher, stop)
    CaptureLoop(source, publisher, KafkaSettings(), Metrics("t"),  # type: ignore[arg-type]
                Backoff(0.001, 0.001), create_topics=False).run(stop)
    return source


def test_headers_reach_the_producer_and_plain_records_keep_none() -> None:
    publisher = HeadersPublisher()
    headed: Item = ("t", b"1", b"{}", ANY_PARTITION, [("id", b"e1")])
    reads: list[list[Item]] = [[("t", b"0", b"{}", ANY_PARTITION), headed, Checkpoint(1)],
                               [("t", None, b"t", EVERY_PARTITION, [("id", b"e2")]),
                                Checkpoint(2)]]
    source = _run(FakeSource, reads, publisher)
    assert publisher.headers == [None, [("id", b"e1")]] + [[("id", b"e2")]] * 3
    assert [p for *_, p in publisher.sent[2:]] == [0, 1, 2]
    assert source.confirmed == [2]


def test_a_source_with_refused_hears_of_the_refusal_and_confirmation_goes_on() -> None:
    publisher = HeadersPublisher(random.Random(3))
    publisher.fail = {1}
    reads: list[list[Item]] = [[("t", b"a", b"{}", ANY_PARTITION, []), Checkpoint(100)],
                               [("t", b"b", b"{}", ANY_PARTITION, []), Checkpoint(200)],
                               [("t", b"c", b"{}", ANY_PARTITION, []), Checkpoint(300)]]
    source = _run(RefusalTakingSource, reads, publisher)
    assert source.refusals == [(200, "KafkaError{code=MSG_SIZE_TOO_LARGE}")]
    assert source.confirmed[-1] == 300


def test_tracker_hands_a_refused_unit_over_only_once_every_record_answered() -> None:
    refused: list[Any] = []
    tracker = DeliveryTracker(on_refused=lambda txn: refused.append((txn.end_lsn, txn.error)))
    unit = tracker.begin()
    first, second = tracker.sent(unit), tracker.sent(unit)
    tracker.commit(unit, 10)
    first("boom")
    assert tracker.confirmable() is None and refused == []  # the second is still out
    second(None)
    assert tracker.confirmable() == 10
    assert refused == [(10, "boom")]
