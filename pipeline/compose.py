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
from pipeline.errors import RetriableError
from pipeline.metrics import Metrics, MetricsExporter
from pipeline.processing import BatchProcessor
from pipeline.sinks.base import MeasuredSink, RetryingSink, Sink

log = logging.getLogger(__name__)


def build_sinks(settings: Settings, metrics: Metrics) -> list[Sink]:
    """One sink per configured section; each wrapped in metrics, then retry."""
    sinks: list[Sink] = []
    if settings.elasticsearch is not None:
        from pipeline.sinks.search import SearchIndexSink

        sinks.append(SearchIndexSink(settings.elasticsearch))
    if settings.redis is not None:
        from pipeline.sinks.cache import CacheInvalidationSink

        sinks.append(CacheInvalidationSink(settings.redis))
    w = settings.worker
    return [
        RetryingSink(MeasuredSink(s, metrics), w.retry_initial_ms / 1000, w.retry_max_ms / 1000,
                     metrics)
        for s in sinks
    ]


def build_processor(settings: Settings, metrics: Metrics) -> BatchProcessor:
    dead_letters = DeadLetterTopic(
        settings.kafka.bootstrap_servers, settings.worker.dead_letter_topic, settings.worker.app_id
    )
    return BatchProcessor(build_sinks(settings, metrics), dead_letters, metrics)


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
