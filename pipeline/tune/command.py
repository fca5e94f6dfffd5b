"""The ``cdc tune`` command: measure the running pipeline, model it, recommend."""

from __future__ import annotations

import json
import sys

import click

from pipeline.errors import (
    EXIT_NOTHING_FLOWING,
    EXIT_NOTHING_RUNNING,
    CdcError,
    exit_code,
)


@click.command()
@click.option("--target-p99", "target_ms", type=click.FloatRange(min=0, min_open=True),
              default=1000.0, show_default=True,
              help="The p99 commit-to-sink freshness to plan for, in ms.")
@click.option("--rate", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Plan for this many changes/s (what-if) instead of the measured rate.")
@click.option("--window", type=click.FloatRange(min=1), default=10.0, show_default=True,
              help="Seconds between the two readings of the metrics.")
@click.option("--endpoint", "endpoints", multiple=True,
              help="A process's /metrics URL (repeatable; default: the ports metrics.port "
                   "assigns, capture on it and the i-th sink's worker on port + 1 + i).")
@click.option("--prometheus", default=None,
              help="Read the metrics from this Prometheus server instead (base URL).")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
@click.pass_context
def tune(ctx: click.Context, target_ms: float, rate: float | None, window: float,
         endpoints: tuple[str, ...], prometheus: str | None, as_json: bool) -> None:
    """Recommend partitions, workers per sink and batch size/wait for a p99 freshness
    target, from a queueing model fed by the running pipeline's metrics. Exit 6: no process
    answered; 7: no change went through in the window."""
    from pipeline.config import load_settings
    from pipeline.tune.advice import advise, render, to_json
    from pipeline.tune.measure import NothingFlowing, NothingRunning, read_window, summarise

    try:
        settings = load_settings(ctx.obj.get("config") if ctx.obj else None)
        readings, down = read_window(settings, window, endpoints, prometheus)
        measured = summarise(readings, down)
        partitions = raw_topic_partitions(settings)
        advice = advise(measured, partitions, settings.worker.batch_size,
                        settings.worker.batch_wait_ms / 1000, target_ms / 1000, rate)
    except NothingRunning as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_NOTHING_RUNNING)
    except NothingFlowing as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_NOTHING_FLOWING)
    except CdcError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exit_code(exc))
    click.echo(json.dumps(to_json(advice), indent=1) if as_json else render(advice))


def raw_topic_partitions(settings: object) -> int:
    """Partitions of the raw topics (the most any has), from Kafka's metadata; the
    ``kafka.partitions`` setting if Kafka does not answer."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    from pipeline.config import Settings
    from pipeline.kafka.client import client_config, list_topics

    assert isinstance(settings, Settings)
    admin = AdminClient(client_config(settings.kafka, {"log_level": 0}))
    try:
        meta = list_topics(admin, 10.0)
    except KafkaException:
        return settings.kafka.partitions
    counts = [len(meta.topics[t].partitions) for t in settings.raw_topics() if t in meta.topics]
    return max(counts, default=settings.kafka.partitions)
