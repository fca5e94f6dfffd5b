"""The dead-letter topic: events that cannot be processed, with the context to fix them.

Each dead letter keeps the original key and value bytes untouched and carries headers named
as Kafka Connect names them (so existing tooling reads them), plus the failure time:

    __connect.errors.topic / .partition / .offset   where the event came from
    __connect.errors.stage                          decode, or sink:<name>
    __connect.errors.class.name                     the error class
    __connect.errors.exception.message              what went wrong
    __connect.errors.connector.name                 the worker's app id
    cdc.errors.timestamp                            when it failed (ISO-8601, UTC)

A letter Kafka refuses for its size (the record near the topic's limit, plus these headers)
is written without its value instead, with ``cdc.errors.value.dropped`` saying how large it
was: the record itself stays in its raw topic at the offset the headers name. Retrying the
whole letter would fail for ever and hold every partition's acknowledgements behind it.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import Any, NamedTuple

from confluent_kafka import KafkaError, KafkaException, Producer

from pipeline.config import KafkaSettings
from pipeline.errors import RetriableError
from pipeline.kafka.client import client_config, produce_waiting

log = logging.getLogger(__name__)

H_TOPIC = "__connect.errors.topic"
H_PARTITION = "__connect.errors.partition"
H_OFFSET = "__connect.errors.offset"
H_STAGE = "__connect.errors.stage"
H_CLASS = "__connect.errors.class.name"
H_MESSAGE = "__connect.errors.exception.message"
H_CONNECTOR = "__connect.errors.connector.name"
H_TIMESTAMP = "cdc.errors.timestamp"
H_VALUE_DROPPED = "cdc.errors.value.dropped"


class RawRecord(NamedTuple):
    """A record as read from a raw topic, before decoding. A named tuple: the workers build
    one per record, and a tuple is built in a quarter of a frozen dataclass's time."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int = 0
    headers: tuple[tuple[str, bytes], ...] = ()


def dead_letter_headers(
    record: RawRecord, stage: str, error: BaseException, connector: str
) -> list[tuple[str, str | bytes | None]]:
    return [
        (H_TOPIC, record.topic.encode()),
        (H_PARTITION, str(record.partition).encode()),
        (H_OFFSET, str(record.offset).encode()),
        (H_STAGE, stage.encode()),
        (H_CLASS, f"{type(error).__module__}.{type(error).__qualname__}".encode()),
        # (an error may quote a value holding a lone surrogate, which valid JSON can carry)
        (H_MESSAGE, str(error)[:4000].encode(errors="backslashreplace")),
        (H_CONNECTOR, connector.encode()),
        (H_TIMESTAMP, datetime.now(UTC).isoformat().encode()),
        *record.headers,
    ]


Letter = tuple[RawRecord, str, BaseException]


def _where(record: RawRecord) -> str:
    return f"{record.topic}[{record.partition}] at offset {record.offset}"


class DeadLetterTopic:
    """Produces dead letters and waits for Kafka's acknowledgement before returning."""

    def __init__(self, kafka: KafkaSettings, topic: str, connector: str) -> None:
        self.topic = topic
        self.connector = connector
        self._producer = Producer(client_config(kafka, {
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 0,
            "message.max.bytes": 16 * 1024 * 1024,
        }))

    async def send(self, letters: list[Letter]) -> None:
        """Write dead letters; raises RetriableError unless Kafka acknowledged them all."""
        if not letters:
            return
        failures: list[str] = []
        too_large: list[Letter] = []  # refused for size in the last flush

        def on_delivery(letter: Letter, whole: bool) -> Any:
            def delivered(err: Any, _msg: Any) -> None:
                if err is None:
                    return
                if err.code() == KafkaError.MSG_SIZE_TOO_LARGE and whole:
                    too_large.append(letter)
                else:  # refused without its value too: never taken for written
                    failures.append(f"{err} (letter of {_where(letter[0])})")
            return delivered

        def produce(letter: Letter, whole: bool) -> None:
            record, stage, error = letter
            headers = dead_letter_headers(record, stage, error, self.connector)
            if not whole:
                headers.append((H_VALUE_DROPPED, (
                    f"{len(record.value or b'')} bytes: the letter was over Kafka's size "
                    f"limit; the record is in {_where(record)}").encode()))
            try:
                produce_waiting(self._producer, self.topic, record.value if whole else None,
                                record.key, headers=headers,
                                on_delivery=on_delivery(letter, whole))
            except KafkaException as exc:
                code = exc.args[0].code() if exc.args else None
                if not whole or code != KafkaError.MSG_SIZE_TOO_LARGE:
                    raise
                dropped.append(letter)
                produce(letter, False)  # over the producer's own limit

        dropped: list[Letter] = []

        def produce_all() -> int:
            for letter in letters:
                produce(letter, True)
            remaining = int(self._producer.flush(30.0))
            # The broker refuses a whole batch over the topic's limit, so a letter that fits
            # may be refused beside one that does not: each goes again alone, with its value,
            # and only one refused alone goes without it.
            refused = list(too_large)
            for letter in refused:
                if remaining:
                    break
                too_large.clear()
                produce(letter, True)
                remaining = int(self._producer.flush(30.0))
                if too_large:
                    dropped.append(letter)
                    produce(letter, False)
                    remaining = int(self._producer.flush(30.0))
            return remaining

        remaining = await asyncio.to_thread(produce_all)
        if not remaining and not failures:
            for record, _stage, _error in dropped:
                log.warning("dead letter of %s is over Kafka's size limit: written without "
                            "its value (header %s)", _where(record), H_VALUE_DROPPED)
        if remaining or failures:
            raise RetriableError(
                f"dead-letter topic {self.topic} did not acknowledge "
                f"{remaining or len(failures)} records: {failures[:1]}"
            )
