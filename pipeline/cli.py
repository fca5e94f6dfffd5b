"""The ``cdc`` command line."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import click

from pipeline.errors import CdcError, exit_code


def _settings(ctx: click.Context):  # type: ignore[no-untyped-def]
    from pipeline.config import load_settings

    return load_settings(ctx.obj.get("config"))


def _fail(exc: Exception) -> None:
    click.echo(f"error: {exc}", err=True)
    sys.exit(exit_code(exc))


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
@click.option("--reset-position", is_flag=True,
              help="Forget the position kept in Kafka (after the slot was lost) and start "
                   "where the slot is; backfill with a snapshot afterwards.")
@click.pass_context
def capture(ctx: click.Context, reset_position: bool) -> None:
    """Stream PostgreSQL changes into the raw topics until stopped (SIGTERM/Ctrl-C)."""
    from pipeline.compose import run_capture

    try:
        run_capture(_settings(ctx), reset_position)
    except CdcError as exc:
        _fail(exc)


@main.command(context_settings={"ignore_unknown_options": True})
@click.option("--sink", default=None, help="Serve this sink only (default: one process each).")
@click.argument("faust_args", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def worker(ctx: click.Context, sink: str | None, faust_args: tuple[str, ...]) -> None:
    """Run the Faust workers that write the raw topics to the sinks."""
    from pipeline.capture.publisher import ensure_topics
    from pipeline.workers import die_with_supervisor

    if sink is not None:
        die_with_supervisor()  # a child of `cdc worker`: never outlive it
    try:
        settings = _settings(ctx)
        if sink is None:
            from pipeline.workers import run_all

            sys.exit(run_all(settings, faust_args))
        ensure_topics(settings.kafka, settings.raw_topics())
        ensure_topics(settings.kafka, [settings.worker.dead_letter_topic])
        # The dedup table's changelog, co-partitioned with the raw topics (Faust would
        # otherwise create it with its own partition count).
        ensure_topics(settings.kafka, [f"{settings.group_id(sink)}-dedup-changelog"],
                      config={"cleanup.policy": "compact"})
        os.environ["CDC_WORKER_SINK"] = sink
        if settings.worker.engine == "kafka":
            from pipeline.compose import run_kafka_worker

            run_kafka_worker(settings, sink)
            return
        from agents.app import app
    except CdcError as exc:
        _fail(exc)
        return
    level = {"WARNING": "warn", "CRITICAL": "crit"}.get(
        logging.getLevelName(logging.getLogger().level), logging.getLevelName(
            logging.getLogger().level)).lower()
    sys.argv = ["cdc-worker", "worker", "-l", level, *faust_args]
    if settings.worker.web_port is None:
        sys.argv.append("--without-web")
    else:
        sys.argv += ["--web-port", str(settings.worker.web_port)]
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


@main.group()
def dlq() -> None:
    """Dead letters: list, show, replay (to the raw topic or one sink), purge."""


def _dlq_options(command):  # type: ignore[no-untyped-def]
    """--topic and the filters shared by the dlq commands."""
    for option in reversed([
        click.option("--topic", default=None,
                     help="Dead-letter topic (default: worker.dead_letter_topic)."),
        click.option("--partition", type=int, default=None, help="Only this partition."),
        click.option("--stage", default=None, help="Only this stage: decode, sink:search, ..."),
        click.option("--error-class", default=None,
                     help="Only this error class (full name or last part)."),
    ]):
        command = option(command)
    return command


def _dlq_run(ctx: click.Context, action):  # type: ignore[no-untyped-def]
    try:
        return action(_settings(ctx))
    except CdcError as exc:
        _fail(exc)


@dlq.command("list")
@_dlq_options
@click.pass_context
def dlq_list(ctx: click.Context, topic: str | None, partition: int | None, stage: str | None,
             error_class: str | None) -> None:
    """Counts by original topic, stage and error class."""
    from pipeline.dlq import LetterFilter, list_letters, render_groups

    def action(settings):  # type: ignore[no-untyped-def]
        name = topic or settings.worker.dead_letter_topic
        flt = LetterFilter(partition, stage, error_class)
        click.echo(render_groups(name, list_letters(settings, name, flt)))

    _dlq_run(ctx, action)


@dlq.command("show")
@_dlq_options
@click.option("--limit", type=click.IntRange(min=0), default=20, show_default=True)
@click.option("--offset", type=click.IntRange(min=0), default=None,
              help="Start at this offset in every partition read.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.pass_context
def dlq_show(ctx: click.Context, topic: str | None, partition: int | None, stage: str | None,
             error_class: str | None, limit: int, offset: int | None, as_json: bool) -> None:
    """Each dead letter with its headers, key and value."""
    from pipeline.dlq import LetterFilter, letter_json, render_letter, show_letters

    def action(settings):  # type: ignore[no-untyped-def]
        name = topic or settings.worker.dead_letter_topic
        flt = LetterFilter(partition, stage, error_class)
        letters = show_letters(settings, name, flt, offset, limit)
        for letter in letters:
            click.echo(json.dumps(letter_json(letter)) if as_json else render_letter(letter) + "\n")
        if not letters and not as_json:
            click.echo(f"{name}: no dead letters match")

    _dlq_run(ctx, action)


@dlq.command("replay")
@_dlq_options
@click.option("--to", "destination", default="raw", show_default=True,
              help="raw (the original topic) or sink:<name> (e.g. sink:search).")
@click.option("--limit", type=click.IntRange(min=0), default=None,
              help="At most this many records.")
@click.option("--offset", type=click.IntRange(min=0), default=None,
              help="Start at this offset in every partition read.")
@click.option("--again", is_flag=True, help="raw: replay letters already replayed too.")
@click.option("--dry-run", is_flag=True, help="Show what would be replayed; change nothing.")
@click.pass_context
def dlq_replay(ctx: click.Context, topic: str | None, partition: int | None, stage: str | None,
               error_class: str | None, destination: str, limit: int | None,
               offset: int | None, again: bool, dry_run: bool) -> None:
    """Send dead letters to their original topic (once) or to one sink."""
    from pipeline.dlq import LetterFilter, replay_raw, replay_to_sink

    if destination != "raw" and not destination.startswith("sink:"):
        raise click.BadParameter("raw or sink:<name>", param_hint="--to")

    def action(settings):  # type: ignore[no-untyped-def]
        name = topic or settings.worker.dead_letter_topic
        flt = LetterFilter(partition, stage, error_class)
        if destination == "raw":
            report = replay_raw(settings, name, flt, offset, limit, again, dry_run)
        else:
            report = replay_to_sink(settings, name, destination.removeprefix("sink:"), flt,
                                    offset, limit, dry_run)
        click.echo(report.render())
        if not report.ok:
            sys.exit(1)

    _dlq_run(ctx, action)


@dlq.command("purge")
@click.option("--topic", default=None,
              help="Dead-letter topic (default: worker.dead_letter_topic).")
@click.option("--up-to", type=click.IntRange(min=0), default=None,
              help="Delete every dead letter before this offset.")
@click.option("--partition", type=int, default=None, help="Only this partition.")
@click.option("--all", "everything", is_flag=True, help="Delete every dead letter read now.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.pass_context
def dlq_purge(ctx: click.Context, topic: str | None, up_to: int | None, partition: int | None,
              everything: bool, yes: bool) -> None:
    """Delete dead letters before an offset (asks first)."""
    from pipeline.dlq import purge, purge_plan, render_purge

    if (up_to is None) == (not everything):
        raise click.UsageError("give exactly one of --up-to OFFSET or --all")

    def action(settings):  # type: ignore[no-untyped-def]
        name = topic or settings.worker.dead_letter_topic
        plan = purge_plan(settings, name, up_to, partition)
        click.echo(render_purge(name, plan))
        if not plan:
            return
        if not yes:
            click.confirm(f"delete these records of {name}?", abort=True)
        click.echo(render_purge(name, plan, purge(settings, name, plan)))

    _dlq_run(ctx, action)


@main.group()
def outbox() -> None:
    """The transactional outbox table: install, failed, retry."""


def _outbox_run(ctx: click.Context, action):  # type: ignore[no-untyped-def]
    """Run ``action(conn, table)`` on the configured outbox table."""
    import psycopg2

    from pipeline.config import OutboxSettings
    from pipeline.sources.postgres.slot import connect, translate

    try:
        settings = _settings(ctx)
        table = (settings.outbox or OutboxSettings()).table
        if table is None:
            raise click.UsageError("outbox.table is not set")
        conn = connect(settings.postgres.dsn.get_secret_value())
        try:
            return action(conn, table)
        except psycopg2.Error as exc:
            raise translate(exc, f"outbox table {table}") from exc
        finally:
            conn.close()
    except CdcError as exc:
        _fail(exc)


@outbox.command("install")
@click.option("--print-sql", is_flag=True, help="Print the DDL instead of running it.")
@click.pass_context
def outbox_install(ctx: click.Context, print_sql: bool) -> None:
    """Create the outbox table (outbox.table) and its indexes if missing."""
    from pipeline.outbox.table import create_table_sql, install

    def action(conn, table):  # type: ignore[no-untyped-def]
        if print_sql:
            click.echo(create_table_sql(table).as_string(conn))
            return
        install(conn, table)
        click.echo(f"outbox table {table} is installed")

    _outbox_run(ctx, action)


@outbox.command("failed")
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True)
@click.pass_context
def outbox_failed(ctx: click.Context, limit: int) -> None:
    """FAILED events with their last error, and what each holds back."""
    from pipeline.outbox.table import failed_events, render_failed

    _outbox_run(ctx, lambda conn, table: click.echo(
        render_failed(table, failed_events(conn, table, limit))))


@outbox.command("retry")
@click.argument("event_ids", nargs=-1)
@click.option("--all", "everything", is_flag=True, help="Every FAILED event.")
@click.pass_context
def outbox_retry(ctx: click.Context, event_ids: tuple[str, ...], everything: bool) -> None:
    """Put FAILED events (by id, or --all) back to PENDING with their attempts reset."""
    from pipeline.outbox.table import retry_failed

    if bool(event_ids) == everything:
        raise click.UsageError("give event ids or --all")

    def action(conn, table):  # type: ignore[no-untyped-def]
        count = retry_failed(conn, table, None if everything else list(event_ids))
        click.echo(f"{count} FAILED event(s) of {table} are PENDING again")
        if event_ids and count < len(event_ids):
            click.echo(f"{len(event_ids) - count} of the given ids are not FAILED", err=True)
            sys.exit(1)

    _outbox_run(ctx, action)


if __name__ == "__main__":
    main()
