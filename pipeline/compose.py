"""The composition root: the one place that builds stages from settings and wires them.

Every cross-cutting wrapper (retry, metrics) is stacked here, not spread through the stages.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from pathlib import Path

from pipeline.config import Settings
from pipeline.deadletter import DeadLetterTopic
from pipeline.errors import ConfigError, RetriableError
from pipeline.metrics import Metrics, MetricsExporter
from pipeline.processing import BatchProcessor
from pipeline.sinks.base import MeasuredSink, RetryingSink, Sink
from pipeline.sinks.registry import build_configured, sink_names

log = logging.getLogger(__name__)


def build_sink(settings: Settings, name: str, metrics: Metrics) -> Sink:
    """The named sink, wrapped in metrics, then retry (the only place wrappers are stacked)."""
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
    return RetryingSink(MeasuredSink(sink, metrics), w.retry_initial_ms / 1000,
                        w.retry_max_ms / 1000, metrics)


def build_sinks(settings: Settings, metrics: Metrics) -> list[Sink]:
    """Every configured sink (used by tools that write to several, e.g. dead-letter replay)."""
    return [build_sink(settings, name, metrics) for name in sink_names(settings)]


def build_processor(settings: Settings, sink: str, metrics: Metrics) -> BatchProcessor:
    """The processing of one sink's worker: its own consumer group, its own dead letters."""
    dead_letters = DeadLetterTopic(
        settings.kafka.bootstrap_servers, settings.worker.dead_letter_topic,
        settings.group_id(sink),
    )
    return BatchProcessor([build_sink(settings, sink, metrics)], dead_letters, metrics)


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

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return stop


def run_capture(settings: Settings) -> None:
    """Capture until a signal; reconnects with backoff after transient failures."""
    from pipeline.postgres.capture import PostgresCapture

    metrics, exporter = start_metrics(settings, "capture")
    stop = stop_on_signals()
    delay = 0.5
    try:
        while not stop.is_set():
            capture = PostgresCapture(settings.postgres, settings.kafka, metrics)
            started = time.monotonic()
            try:
                capture.run(stop)
            except RetriableError as exc:
                metrics.inc("cdc_capture_errors_total", kind="retriable")
                if time.monotonic() - started > 30:
                    delay = 0.5
                log.warning("capture interrupted, resuming from the slot in %.1fs: %s", delay, exc)
                stop.wait(delay)
                delay = min(delay * 2, 30.0)
    finally:
        exporter.stop()


def snapshot_dir_default(state_dir: Path) -> Path:
    return state_dir / "metrics"
