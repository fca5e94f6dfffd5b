"""The composition root: the one place that builds stages from settings and wires them.

Every cross-cutting wrapper (retry, metrics) is stacked here, not spread through the stages.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable, MutableMapping
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline import heap
from pipeline.backpressure import Backpressure
from pipeline.config import Settings
from pipeline.deadletter import DeadLetterTopic, RawRecord
from pipeline.dedup import Deduplicator, DedupSettings
from pipeline.errors import ConfigError
from pipeline.kafka.client import STOPPING
from pipeline.metrics import Metrics, MetricsExporter
from pipeline.ordering import LatePolicy, OrderingSettings, PartitionReorderer
from pipeline.processing import BatchProcessor
from pipeline.sinks.base import MeasuredSink, RetryingSink, Sink
from pipeline.sinks.outage import OutageLimit
from pipeline.sinks.registry import build_configured, sink_names

if TYPE_CHECKING:
    from pipeline.capture.loop import CaptureLoop
    from pipeline.capture.publisher import EventPublisher
    from pipeline.capture.source import ChangeSource
    from pipeline.sources.outbox.logical import LogicalOutbox

log = logging.getLogger(__name__)


def build_sink(settings: Settings, name: str, metrics: Metrics,
               backpressure: Backpressure | None = None) -> Sink:
    """The named sink, wrapped in metrics, then retry (the only place wrappers are stacked);
    a worker's retries wait with its partitions paused (``backpressure``)."""
    sink: Sink
    if name == "search" and settings.elasticsearch is not None:
        from pipeline.sinks.search import SearchIndexSink

        sink = SearchIndexSink(settings.elasticsearch)
    elif name == "cache" and settings.redis is not None:
        from pipeline.sinks.cache import CacheInvalidationSink

        sink = CacheInvalidationSink(settings.redis)
    else:
        built = build_configured(settings, only=name)
        if name not in built:
            raise ConfigError("worker sink", f"no sink named '{name}'; configured: "
                                             f"{', '.join(sink_names(settings)) or 'none'}")
        sink = built[name]
    w = settings.worker
    measured: Sink = MeasuredSink(sink, metrics)
    if settings.errors.retry_timeout_s is not None:
        measured = OutageLimit(measured, settings.errors.retry_timeout_s)
    return RetryingSink(measured, w.retry_initial_ms / 1000, w.retry_max_ms / 1000, metrics,
                        backpressure=backpressure)


def build_sinks(settings: Settings, metrics: Metrics) -> list[Sink]:
    """Every configured sink (used by tools that write to several, e.g. dead-letter replay)."""
    return [build_sink(settings, name, metrics) for name in sink_names(settings)]


def worker_data_dir(group: str) -> Path:
    """A sink worker's local folder (Faust's datadir, the rocksdb:// seen-set):
    ``$CDC_WORKER_DATADIR/<group>``."""
    return Path(os.environ.get("CDC_WORKER_DATADIR", "/tmp/cdc-worker-data")) / group


def build_processor(
    settings: Settings,
    sink: str,
    metrics: Metrics,
    dedup_store: MutableMapping[str, Any] | None = None,
    partition_scope: Callable[[int], AbstractContextManager[Any]] | None = None,
    backpressure: Backpressure | None = None,
) -> BatchProcessor:
    """The processing of one sink's worker: its own consumer group, its own dead letters;
    evolution, ordering and dedup as configured (dedup needs the worker's table)."""
    dead_letters = DeadLetterTopic(
        settings.kafka, settings.worker.dead_letter_topic,
        settings.group_id(sink),
    )
    evolution = None
    registry_url = settings.kafka.schema_registry_url
    if settings.evolution is not None or registry_url:
        from pipeline.evolution.registry import SchemaRegistry
        from pipeline.evolution.stage import EvolutionStage

        ev = settings.evolution
        evolution = EvolutionStage.from_settings(
            None if ev is None else ev.schemas_dir, None if ev is None else ev.upcasters,
            SchemaRegistry(registry_url) if registry_url else None,
        )
        for missing in evolution.evolver.missing_steps():
            log.warning("schema evolution: %s", missing)
    o = settings.worker.ordering
    late_policy = LatePolicy(o.late_policy)
    reorderer: PartitionReorderer[tuple[str, int], RawRecord] | None = None
    if o.enabled:
        reorderer = PartitionReorderer(OrderingSettings(
            allowed_lateness_ms=o.allowed_lateness_ms, idle_flush_ms=o.idle_flush_ms,
            max_buffered=o.max_buffered, late_policy=late_policy,
        ))
    dedup = None
    d = settings.worker.dedup
    if d.enabled and dedup_store is not None:
        dedup = Deduplicator(dedup_store, DedupSettings(
            window_ms=d.window_ms, positions_per_row=d.positions_per_row,
        ))
    return BatchProcessor(
        [build_sink(settings, sink, metrics, backpressure)], dead_letters, metrics,
        evolution=evolution, reorderer=reorderer, dedup=dedup, late_policy=late_policy,
        partition_scope=partition_scope, topic_tables=settings.topic_tables(),
    )


def start_metrics(settings: Settings, process: str) -> tuple[Metrics, MetricsExporter]:
    metrics = Metrics(process)
    m = settings.metrics
    exporter = MetricsExporter(metrics, m.snapshot_dir, m.port, m.interval_s)
    exporter.start()
    return metrics, exporter


def stop_on_signals() -> threading.Event:
    """An event set by SIGTERM/SIGINT, so a process stops cleanly between messages."""
    stop = threading.Event()

    def handler(signum: int, _frame: object) -> None:
        log.info("signal %d: stopping", signum)
        stop.set()
        STOPPING.set()  # requests waiting for Kafka give up at once

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return stop


def build_source(settings: Settings, metrics: Metrics) -> ChangeSource:
    """The source ``capture.source`` names (the one branch each capture strategy adds)."""
    if settings.capture.source == "triggers":
        from pipeline.sources.triggers.source import TriggerLogSource

        return TriggerLogSource(settings.postgres, settings.triggers, settings.kafka, metrics)
    if settings.capture.source == "polling":
        from pipeline.sources.polling.source import PollingSource

        return PollingSource(settings.postgres, settings.polling, settings.kafka, metrics)
    if settings.capture.source == "mysql":
        from pipeline.sources.mysql.source import MysqlBinlogSource

        return MysqlBinlogSource(settings.mysql, settings.kafka, metrics)
    from pipeline.sources.postgres.source import PostgresSource

    if settings.capture.source == "outbox":
        from pipeline.config import OutboxSettings
        from pipeline.sources.outbox.router import OutboxRouter
        from pipeline.sources.outbox.source import OutboxRelay

        outbox = settings.outbox or OutboxSettings()
        return OutboxRelay(settings.postgres, outbox, settings.kafka,
                           OutboxRouter(outbox, settings.worker.dead_letter_topic), metrics)
    return PostgresSource(settings.postgres, settings.kafka, metrics,
                          outbox=_logical_outbox(settings, metrics),
                          schemas_dir=_schemas_dir(settings))


def _logical_outbox(settings: Settings, metrics: Metrics) -> LogicalOutbox | None:
    """Outbox routing for the logical source, when an ``outbox`` section is given."""
    if settings.outbox is None:
        return None
    from pipeline.sources.outbox.logical import LogicalOutbox
    from pipeline.sources.outbox.router import OutboxRouter

    router = OutboxRouter(settings.outbox, settings.worker.dead_letter_topic)
    return LogicalOutbox(settings.outbox, router, settings.kafka, metrics)


def build_capture(settings: Settings, metrics: Metrics,
                  reset_position: bool = False) -> CaptureLoop:
    """The configured source in the one capture loop. ``reset_position``: forget the
    source's position kept in Kafka first (after a lost slot)."""
    from pipeline.capture.loop import CaptureLoop

    source = build_source(settings, metrics)
    if reset_position:
        source.forget_positions()
        log.warning("forgot the saved position of %s: capture starts where the source is "
                    "(a new slot: the current end of the WAL)", source.name)
    return CaptureLoop(source, _publisher(settings), settings.kafka, metrics,
                       retry_timeout_s=settings.errors.retry_timeout_s,
                       throughput_log_s=settings.capture.throughput_log_interval_s)


def _publisher(settings: Settings) -> EventPublisher:
    """Capture's publisher: JSON values, or Avro registered in the schema registry."""
    from pipeline.capture.publisher import capture_publisher

    return capture_publisher(settings.kafka, _schemas_dir(settings))


def _schemas_dir(settings: Settings) -> Path:
    from pipeline.config import EvolutionSettings

    return (settings.evolution or EvolutionSettings()).schemas_dir


def run_capture(settings: Settings, reset_position: bool = False) -> None:
    """Capture until a signal; reconnects with backoff after transient failures.
    ``reset_position``: forget the position kept in Kafka first (after a lost slot)."""
    metrics, exporter = start_metrics(settings, "capture")
    stop = stop_on_signals()
    try:
        capture = build_capture(settings, metrics, reset_position)
        heap.settle()  # set up: freeze it
        capture.run(stop)
    finally:
        exporter.stop()


def snapshot_dir_default(state_dir: Path) -> Path:
    return state_dir / "metrics"


def run_kafka_worker(settings: Settings, sink: str) -> None:
    """One sink's worker on the ``kafka`` engine, until a signal."""
    import asyncio

    from pipeline.kafka.sink_worker import KafkaSinkWorker

    metrics, exporter = start_metrics(settings, f"worker-{sink}-{os.getpid()}")
    stop = stop_on_signals()
    try:
        asyncio.run(KafkaSinkWorker(settings, sink, metrics).run(stop))
    finally:
        exporter.stop()
