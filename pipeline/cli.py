"""The ``cdc`` command line."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import click

from pipeline.errors import CdcError, ConfigError


def _settings(ctx: click.Context):  # type: ignore[no-untyped-def]
    from pipeline.config import load_settings

    return load_settings(ctx.obj.get("config"))


def _fail(exc: Exception) -> None:
    click.echo(f"error: {exc}", err=True)
    sys.exit(2 if isinstance(exc, ConfigError) else 1)


@click.group()
@click.option("--config", "-c", type=click.Path(dir_okay=False), envvar="CDC_CONFIG",
              help="YAML settings file (default: $CDC_CONFIG); CDC_* variables override it.")
@click.option("--log-level", default=None, help="DEBUG, INFO, WARNING or ERROR.")
@click.pass_context
def main(ctx: click.Context, config: str | None, log_level: str | None) -> None:
    """Change data capture: PostgreSQL -> Kafka -> Elasticsearch, Redis, dead-letter topic."""
    ctx.ensure_object(dict)
    ctx.obj["config"] = config
    if config:
        os.environ["CDC_CONFIG"] = str(Path(config).resolve())
    logging.basicConfig(
        level=(log_level or os.environ.get("CDC_LOG_LEVEL") or "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for chatty in ("httpx", "httpcore", "elastic_transport"):
        logging.getLogger(chatty).setLevel(logging.WARNING)


@main.command()
@click.pass_context
def capture(ctx: click.Context) -> None:
    """Stream PostgreSQL changes into the raw topics until stopped (SIGTERM/Ctrl-C)."""
    from pipeline.compose import run_capture

    try:
        run_capture(_settings(ctx))
    except CdcError as exc:
        _fail(exc)


@main.command(context_settings={"ignore_unknown_options": True})
@click.argument("faust_args", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def worker(ctx: click.Context, faust_args: tuple[str, ...]) -> None:
    """Run a Faust worker fanning the raw topics out to the sinks."""
    from pipeline.kafka.publisher import ensure_topics

    try:
        settings = _settings(ctx)
        ensure_topics(settings.kafka, settings.raw_topics())
        ensure_topics(settings.kafka, [settings.worker.dead_letter_topic])
        from agents.app import app
    except CdcError as exc:
        _fail(exc)
        return
    level = logging.getLevelName(logging.getLogger().level).lower()
    sys.argv = ["cdc-worker", "worker", "-l", level, "--without-web", *faust_args]
    if settings.worker.web_port is not None:
        sys.argv.remove("--without-web")
    app.main()


@main.command("config")
@click.pass_context
def show_config(ctx: click.Context) -> None:
    """Print the effective settings (secrets hidden)."""
    try:
        click.echo(json.dumps(_settings(ctx).redacted(), indent=2))
    except CdcError as exc:
        _fail(exc)


@main.command()
@click.pass_context
def status(ctx: click.Context) -> None:
    """Replication slot lag, and each process's throughput, errors and latency."""
    from pipeline.status import render_status

    try:
        click.echo(render_status(_settings(ctx)))
    except CdcError as exc:
        _fail(exc)


@main.command(context_settings={"ignore_unknown_options": True, "help_option_names": []})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def stack(args: tuple[str, ...]) -> None:
    """The local servers: up [SERVICE...] | down | status | env | start|stop SERVICE."""
    from pipeline.stack.__main__ import main as stack_main

    sys.exit(stack_main(list(args) or ["--help"]))


@main.command()
@click.option("--keep-running", is_flag=True, help="Leave the stack, capture and worker running.")
@click.option("--rows", default=200, show_default=True, help="Rows per table in the workload.")
def demo(keep_running: bool, rows: int) -> None:
    """Start everything, drive a workload, and show it reach Elasticsearch and Redis."""
    from pipeline.demo import run_demo

    try:
        sys.exit(run_demo(keep_running=keep_running, rows=rows))
    except CdcError as exc:
        _fail(exc)


if __name__ == "__main__":
    main()
