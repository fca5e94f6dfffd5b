"""Publishing change events to raw topics with an idempotent, acks=all producer."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from pipeline.capture.source import Headers
from pipeline.config import KafkaSettings
from pipeline.errors import PermanentError, RetriableError
from pipeline.kafka.client import client_config, list_topics

log = logging.getLogger(__name__)

DeliveryCallback = Callable[[Any, Any], None]

#: Producer defaults: no event may be lost or duplicated by the producer itself, and an
#: outage of Kafka blocks capture (backpressure) rather than failing events after a timeout.
PRODUCER_DEFAULTS: dict[str, Any] = {
    "enable.idempotence": True,
    "acks": "all",
    "message.timeout.ms": 0,  # never give up on an event: capture waits for Kafka instead
    "linger.ms": 5,
    "batch.size": 1_000_000,
    "compression.type": "lz4",
    # Same partition for a key as Java clients (Debezium, Kafka Connect) would choose.
    "partitioner": "murmur2_random",
    # A bounded queue: when it is full, publish() waits for acknowledgements.
    "queue.buffering.max.messages": 100_000,
    "queue.buffering.max.kbytes": 65_536,
    "message.max.bytes": 16 * 1024 * 1024,
}

#: Kafka's answers that mean "these credentials or rights are refused": permanent errors.
AUTH_ERRORS = frozenset({
    KafkaError._AUTHENTICATION,
    KafkaError.SASL_AUTHENTICATION_FAILED,
    KafkaError.TOPIC_AUTHORIZATION_FAILED,
    KafkaError.GROUP_AUTHORIZATION_FAILED,
    KafkaError.CLUSTER_AUTHORIZATION_FAILED,
    KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
})


def kafka_failure(exc: KafkaException | KafkaError, doing: str) -> PermanentError | RetriableError:
    """A Kafka client error in the tree: refused credentials or rights are permanent."""
    error = exc.args[0] if isinstance(exc, KafkaException) and exc.args else exc
    if isinstance(error, KafkaError) and error.code() in AUTH_ERRORS:
        return PermanentError(f"{doing}: Kafka refused the credentials or rights: {error}")
    return RetriableError(f"{doing}: {error}")


TOPIC_CONFIG = {"max.message.bytes": str(16 * 1024 * 1024)}


class EventPublisher:
    """Hands encoded events to Kafka; acknowledgements arrive through delivery callbacks."""

    def __init__(self, settings: KafkaSettings, client_id: str = "cdc-capture",
                 refusals_only: bool = False) -> None:
        self._settings = settings
        # ``refusals_only``: delivery callbacks run for refused records alone, so a record
        # counts as acknowledged once flush() returned with no refusal reported.
        self._config = client_config(settings, {
            **PRODUCER_DEFAULTS, **settings.producer_config(), "client.id": client_id,
            **({"delivery.report.only.error": True} if refusals_only else {})})
        self._open()
        #: Called about every 50 ms while publish() waits for Kafka (backpressure), so the
        #: source can keep its own connection alive.
        self.while_waiting: Callable[[], None] = lambda: None

    def _open(self) -> None:
        self._producer = Producer(self._config)
        self._produce = self._producer.produce
        self._bind()

    def _bind(self) -> None:
        #: ``produce(topic, value, key, partition, on_delivery)``, positional, for the capture
        #: loop's per-record path: the producer's own, which raises where :meth:`publish`
        #: would wait (a full queue) or explain (a refused record); the caller then calls
        #: :meth:`publish` with the same record. A subclass that changes values on their
        #: way (:class:`~pipeline.capture.avro.AvroPublisher`) binds its own. Callers take it
        #: afresh every session: a stalled producer is replaced.
        self.produce: Callable[..., None] = self._producer.produce

    def renew(self) -> None:
        """Give this producer up for a new one (it stalled, see :mod:`pipeline.capture.stall`):
        what it holds is purged and none of its callbacks runs again."""
        self._producer.purge(in_queue=True, in_flight=True, blocking=False)
        self._open()

    def publish(
        self, topic: str, key: bytes | None, value: bytes | None, on_delivery: DeliveryCallback,
        partition: int = -1, headers: Headers | None = None,
    ) -> None:
        """Queue one record (``partition`` -1: the key chooses); waits, serving callbacks
        and ``while_waiting``, while the producer queue is full."""
        try:
            if headers is None:  # positional: as keywords, produce() costs ~0.7 µs more
                self._produce(topic, value, key, partition, on_delivery)
            else:
                self._produce(topic, value, key, partition, on_delivery=on_delivery,
                              headers=headers)
        except BufferError:
            self._wait_and_publish(topic, key, value, on_delivery, partition, headers)
        except KafkaException as exc:
            raise refused(topic, value, exc) from exc

    def _wait_and_publish(
        self, topic: str, key: bytes | None, value: bytes | None, on_delivery: DeliveryCallback,
        partition: int, headers: Headers | None,
    ) -> None:
        while True:
            self._producer.poll(0.05)
            self.while_waiting()
            try:
                if headers is None:
                    self._produce(topic, value, key, partition, on_delivery)
                else:
                    self._produce(topic, value, key, partition, on_delivery=on_delivery,
                                  headers=headers)
                return
            except BufferError:
                continue
            except KafkaException as exc:
                raise refused(topic, value, exc) from exc

    def partitions(self, topic: str, timeout: float = 30.0) -> int:
        """How many partitions ``topic`` has (for a record written to every partition)."""
        try:
            meta = list_topics(self._producer, timeout, topic).topics.get(topic)
        except KafkaException as exc:
            raise RetriableError(f"Kafka did not describe topic '{topic}': {exc}") from exc
        if meta is None or meta.error is not None or not meta.partitions:
            raise RetriableError(f"Kafka does not know topic '{topic}' yet")
        return len(meta.partitions)

    def poll(self, timeout: float = 0.0) -> int:
        """Serve delivery callbacks (and librdkafka's logs and errors); returns how many
        ran."""
        return int(self._producer.poll(timeout))

    def flush(self, timeout: float) -> int:
        """Wait up to ``timeout`` seconds for every queued record; returns how many remain."""
        return int(self._producer.flush(timeout))

    def __len__(self) -> int:
        return len(self._producer)


def capture_publisher(settings: KafkaSettings, schemas_dir: Path | None,
                      client_id: str = "cdc-capture",
                      refusals_only: bool = False) -> EventPublisher:
    """Capture's publisher: JSON values, or (``kafka.value_format: avro``) Avro registered in
    the schema registry, typed by the versions in ``schemas_dir``. Every process that writes
    change events (capture, its snapshot readers) makes its publisher here.
    ``refusals_only``: delivery callbacks for refused records only (see EventPublisher)."""
    if settings.value_format != "avro":
        return EventPublisher(settings, client_id, refusals_only)
    from pipeline.capture.avro import AvroEnvelopeSchemas, AvroPublisher
    from pipeline.evolution.registry import SchemaRegistry
    from pipeline.evolution.schemas import SchemaSet

    assert settings.schema_registry_url is not None  # KafkaSettings checks it
    schemas = SchemaSet.load(schemas_dir if schemas_dir is not None else Path("schemas"))
    return AvroPublisher(settings, AvroEnvelopeSchemas(
        schemas, SchemaRegistry(settings.schema_registry_url)), client_id, refusals_only)


def ensure_topics(
    settings: KafkaSettings,
    topics: Iterable[str],
    timeout: float = 30.0,
    config: dict[str, str] | None = None,
    partitions: int | None = None,
) -> None:
    """Create missing topics with ``partitions`` (default: the configured number; keys keep
    per-row order)."""
    admin = AdminClient(client_config(settings))
    try:
        existing = set(list_topics(admin, timeout).topics)
    except KafkaException as exc:
        raise kafka_failure(exc, f"Kafka at {settings.bootstrap_servers}") from exc
    missing = [t for t in topics if t not in existing]
    if not missing:
        return
    futures = admin.create_topics(
        [
            NewTopic(t, partitions or settings.partitions, settings.replication_factor,
                     config={**TOPIC_CONFIG, **(config or {})})
            for t in missing
        ]
    )
    for topic, future in futures.items():
        try:
            future.result(timeout)
            log.info("created topic %s with %d partitions", topic,
                     partitions or settings.partitions)
        except KafkaException as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise PermanentError(f"could not create topic '{topic}': {exc}") from exc


def refused(topic: str, value: bytes | None, exc: KafkaException) -> PermanentError:
    """Kafka refused a record before sending it; for one over the size limit, the remedy."""
    error = exc.args[0] if exc.args else None
    if getattr(error, "code", lambda: None)() == KafkaError.MSG_SIZE_TOO_LARGE:
        size = len(value or b"")
        return PermanentError(
            f"a change for '{topic}' is {size:,} bytes, over the producer's message.max.bytes: "
            "raise kafka.producer {\"message.max.bytes\": N} and the topic's "
            "max.message.bytes (or the broker's message.max.bytes) above it, or leave the "
            "column out of the publication (PostgreSQL column lists)")
    return PermanentError(f"Kafka refused a record for '{topic}': {exc}")
