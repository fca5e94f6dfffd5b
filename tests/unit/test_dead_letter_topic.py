"""Dead letters over Kafka's size limit: written alone, then without their value; never
taken for written when Kafka took nothing."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from confluent_kafka import KafkaError

from pipeline.config import KafkaSettings
from pipeline.deadletter import H_VALUE_DROPPED, DeadLetterTopic, RawRecord
from pipeline.errors import RetriableError


class _Batching:
    """A producer whose broker refuses, for size, every record of a flush whose records
    together exceed ``limit`` bytes (as a broker refuses a whole batch)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.queued: list[tuple[bytes | None, list[Any], Any]] = []
        self.written: list[tuple[bytes | None, dict[str, Any]]] = []

    def produce(self, topic: str, value: bytes | None, key: bytes | None, partition: int,
                on_delivery: Any, headers: Any = None) -> None:
        self.queued.append((value, headers or [], on_delivery))

    def poll(self, timeout: float) -> int:
        return 0

    def flush(self, timeout: float) -> int:
        batch, self.queued = self.queued, []
        size = sum(len(v or b"") + sum(len(h[1] or b"") for h in hs) for v, hs, _ in batch)
        for value, headers, done in batch:
            if size > self.limit:
                done(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE), None)
            else:
                self.written.append((value, dict(headers)))
                done(None, None)
        return 0


def _topic(producer: _Batching) -> DeadLetterTopic:
    letters = DeadLetterTopic(KafkaSettings(bootstrap_servers="127.0.0.1:1"), "dlq", "it")
    letters._producer = producer  # type: ignore[assignment]
    return letters


def _letter(offset: int, size: int) -> tuple[RawRecord, str, BaseException]:
    return RawRecord("raw", 0, offset, b"k", b"x" * size), "sink:search", ValueError("no")


def test_a_letter_that_fits_keeps_its_value_though_refused_beside_a_large_one() -> None:
    """The broker refuses a whole batch: the small letter was written without its value."""
    producer = _Batching(limit=5_000)
    asyncio.run(_topic(producer).send([_letter(1, 100), _letter(2, 50_000)]))
    by_size = {len(v or b""): h for v, h in producer.written}
    assert set(by_size) == {100, 0}
    assert H_VALUE_DROPPED not in by_size[100]
    assert by_size[0][H_VALUE_DROPPED].startswith(b"50000 bytes")


def test_a_letter_refused_even_without_its_value_is_never_taken_for_written() -> None:
    """It was refused twice, logged as written without its value, and send() returned:
    the worker acknowledged the record and nothing was in the dead-letter topic."""
    producer = _Batching(limit=10)  # not even the headers fit
    with pytest.raises(RetriableError, match="raw\\[0\\] at offset 7"):
        asyncio.run(_topic(producer).send([_letter(7, 50_000)]))
    assert producer.written == []
