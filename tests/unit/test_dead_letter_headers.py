"""A dead letter can always be written: whatever its error quotes, however full the
producer's queue."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from pipeline.config import KafkaSettings
from pipeline.deadletter import H_MESSAGE, DeadLetterTopic, RawRecord, dead_letter_headers


def test_an_error_quoting_a_lone_surrogate_is_still_a_header() -> None:
    value = json.loads(b'"\\ud800"')  # valid JSON; not encodable as UTF-8
    record = RawRecord("it.public.items", 2, 41, None, b"{}")
    headers = dict(dead_letter_headers(record, "sink:search", ValueError(f"bad {value}"),
                                       "worker-search"))
    assert headers[H_MESSAGE] == b"bad \\ud800"


class _FullQueue:
    """A producer whose local queue is full for its first ``full`` calls."""

    def __init__(self, full: int) -> None:
        self.full = full
        self.polls = 0
        self.produced: list[bytes] = []
        self.callbacks: list[Any] = []

    def produce(self, topic: str, value: bytes, key: bytes | None, partition: int = -1,
                on_delivery: Any = None, **kwargs: Any) -> None:
        """confluent-kafka's argument order (``headers`` by keyword)."""
        if self.full:
            self.full -= 1
            raise BufferError("Local: Queue full")
        self.produced.append(value)
        self.callbacks.append(on_delivery)

    def poll(self, timeout: float) -> int:
        self.polls += 1
        return 0

    def flush(self, timeout: float) -> int:
        for callback in self.callbacks:
            callback(None, None)
        return 0


def test_a_full_producer_queue_waits_instead_of_failing_the_dead_letters() -> None:
    topic = DeadLetterTopic(KafkaSettings(bootstrap_servers="127.0.0.1:9"), "dlq", "w")
    full = _FullQueue(full=3)
    topic._producer = full  # type: ignore[assignment]
    records = [RawRecord("it.public.items", 0, i, None, b"{%d}" % i) for i in range(4)]
    asyncio.run(topic.send([(r, "sink:search", ValueError("x")) for r in records]))
    assert full.produced == [r.value for r in records] and full.polls == 3
