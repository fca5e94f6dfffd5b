"""The ``cdc`` command line."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import click

from pipeline import logs
from pipeline.errors import CdcError, ConfigError, exit_code


def _settings(ctx: click.Context):  # type: ignore[no-untyped-def]
    from pipeline.config import load_settings

    settings = load_settings(ctx.obj.get("config"))
    logs.configure(_log_level(ctx, settings), _log_format(settings))
    return settings


def _log_level(ctx: click.Context, settings: Any) -> str:
    """--log-level, else CDC_LOG_LEVEL, else the settings file's log_level."""
    return str(ctx.obj.get("log_level") or os.environ.get("CDC_LOG_LEVEL") or settings.log_level)


def _log_format(settings: Any) -> str:
    return os.environ.get("CDC_LOG_FORMAT") or str(settings.log_format)


def _fail(exc: Exception) -> None:
    click.echo(f"error: {exc}", err=True)
    sys.exit(exit_code(exc))


@click.group()
@click.version_option(package_name="cdc-pipeline", prog_name="cdc",
                      message="%(prog)s %(version)s")
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
    ctx.obj["log_level"] = log_level
    logs.configure(log_level or os.environ.get("CDC_LOG_LEVEL") or "INFO",
                   os.environ.get("CDC_LOG_FORMAT", "text"))


@main.group(invoke_without_command=True)
@click.option("--reset-position", is_flag=True,
              help="Forget the position kept in Kafka (after the slot was lost) and start "
                   "where the slot is; backfill with a snapshot afterwards.")
@click.pass_context
def capture(ctx: click.Context, reset_position: bool) -> None:
    """Stream PostgreSQL changes into the raw topics until stopped (SIGTERM/Ctrl-C);
    `cdc capture position ...` shows or moves the saved position."""
    from pipeline.compose import run_capture

    if ctx.invoked_subcommand is not None:
        if reset_position:
            raise click.UsageError("--reset-position runs capture; see `capture position "
                                   "reset` to start over without running it")
        return
    try:
        run_capture(_settings(ctx), reset_position)
    except CdcError as exc:
        _fail(exc)


@capture.group("position")
def capture_position() -> None:
    """The capture's saved position: show, set (advance the slot), reset (start over).
    Only while capture is stopped."""


@capture_position.command("show")
@click.pass_context
def capture_position_show(ctx: click.Context) -> None:
    """The position kept in Kafka and, for the logical source, the slot's."""
    from pipeline.capture.reposition import show

    try:
        click.echo(show(_settings(ctx)))
    except CdcError as exc:
        _fail(exc)


@capture_position.command("set")
@click.argument("lsn")
@click.option("--dry-run", is_flag=True, help="Print what would move; change nothing.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.pass_context
def capture_position_set(ctx: click.Context, lsn: str, dry_run: bool, yes: bool) -> None:
    """Advance the replication slot to LSN (pg_replication_slot_advance): the changes in
    between are skipped, never published."""
    from pipeline.capture.reposition import apply_set, plan_set, render_set

    try:
        settings = _settings(ctx)
        slot, target = plan_set(settings, lsn)
        if dry_run or not yes:
            click.echo(render_set(settings, slot, target, done=False))
        if dry_run:
            return
        if not yes:
            click.confirm("advance the slot?", abort=True)
        apply_set(settings, target)
        click.echo(render_set(settings, slot, target, done=True))
    except CdcError as exc:
        _fail(exc)


@capture_position.command("reset")
@click.option("--dry-run", is_flag=True, help="Print what would be forgotten; change nothing.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.pass_context
def capture_position_reset(ctx: click.Context, dry_run: bool, yes: bool) -> None:
    """Start over: forget the positions kept in Kafka and drop the slot; the next capture
    creates a new one and snapshots per postgres.snapshot_mode."""
    from pipeline.capture.reposition import apply_reset, plan_reset, render_reset

    try:
        settings = _settings(ctx)
        slot = plan_reset(settings)
        if dry_run or not yes:
            click.echo(render_reset(settings, slot, done=False))
        if dry_run:
            return
        if not yes:
            click.confirm("start over?", abort=True)
        apply_reset(settings, slot)
        click.echo(render_reset(settings, slot, done=True))
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
        logs.configure(_log_level(ctx, settings), _log_format(settings), sink=sink)
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
    quiet = [] if settings.worker.faust_banner else ["--quiet"]  # the banner, not the logs
    sys.argv = ["cdc-worker", *quiet, "worker", "-l", level, *faust_args]
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


@main.command()
@click.option("--dry-run", is_flag=True, help="Print what would be dropped; change nothing.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--topics", is_flag=True,
              help="Also delete the raw topics, the dead-letter topic and the changelogs.")
@click.option("--indices", is_flag=True,
              help="Also delete the search indices of the configured tables.")
@click.pass_context
def teardown(ctx: click.Context, dry_run: bool, yes: bool, topics: bool,
             indices: bool) -> None:
    """Decommission: drop the replication slot and publication, forget the positions kept
    in Kafka (asks first; refuses while capture runs)."""
    from pipeline.teardown import SlotInUseError, execute, plan

    try:
        settings = _settings(ctx)
        found = plan(settings, topics, indices)
        refusal = found.refusal()
        if dry_run or not yes or refusal is not None or found.empty:
            click.echo(found.render())
        if refusal is not None:
            raise SlotInUseError(refusal)
        if dry_run or found.empty:
            return
        if not yes:
            click.confirm("drop these?", abort=True)
        execute(settings, found)
        click.echo(found.render(done=True))
    except CdcError as exc:
        _fail(exc)


@main.group()
def triggers() -> None:
    """Trigger-based capture (capture.source: triggers): the change log and its triggers."""


@triggers.command("install")
@click.pass_context
def triggers_install(ctx: click.Context) -> None:
    """Create the change log and a trigger on each table of postgres.tables (idempotent;
    removes the triggers of tables no longer listed)."""
    from pipeline.sources.triggers.ddl import TriggerLog, install

    try:
        settings = _settings(ctx)
        click.echo(install(settings).render(TriggerLog.of(settings.triggers)))
    except CdcError as exc:
        _fail(exc)


@triggers.command("uninstall")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.pass_context
def triggers_uninstall(ctx: click.Context, yes: bool) -> None:
    """Drop the triggers, the function and the change log (asks first: rows not yet
    relayed are lost)."""
    from pipeline.sources.triggers.ddl import TriggerLog, uninstall, unrelayed_rows

    try:
        settings = _settings(ctx)
        name = TriggerLog.of(settings.triggers).name
        rows = unrelayed_rows(settings)
        if not yes:
            waiting = "" if not rows else f" ({rows} changes not yet relayed are lost)"
            click.confirm(f"drop the change log {name} and its triggers{waiting}?", abort=True)
        click.echo(uninstall(settings).render())
    except CdcError as exc:
        _fail(exc)


@triggers.command("status")
@click.pass_context
def triggers_status(ctx: click.Context) -> None:
    """Tables with triggers, rows waiting in the log, and what holds the relay back."""
    from pipeline.sources.triggers.ddl import TriggerLog, status

    try:
        settings = _settings(ctx)
        click.echo(status(settings).render(TriggerLog.of(settings.triggers)))
    except CdcError as exc:
        _fail(exc)


@main.group()
def stack() -> None:
    """The local servers on 127.0.0.1 (installed on first use, then reused): up, down,
    status, env, start, stop. State in $CDC_STACK_DIR (default <repo>/.stack)."""


def _stack_run(action):  # type: ignore[no-untyped-def]
    from pipeline.stack import StackError

    try:
        return action()
    except StackError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)


def _stack_exports(info) -> None:  # type: ignore[no-untyped-def]
    """The settings to export. A section your configuration file leaves out (a sink you do
    not use) is not switched on by an export: it is named in a comment instead."""
    from pipeline.stack import env_vars

    click.echo(f"# state_dir: {info.state_dir}")
    left_out = _sections_left_out()
    for key, value in env_vars(info).items():
        section = key.removeprefix("CDC_").split("__", 1)[0].lower()
        if section in left_out:
            click.echo(f"# {key} not exported: {os.environ['CDC_CONFIG']} has no "
                       f"'{section}' section (add it to use the local {section})")
            continue
        click.echo(f"export {key}='{value}'")


#: Sections that an exported variable would switch on (the sinks; the sources are needed).
_OPTIONAL_SECTIONS = ("elasticsearch", "redis")


def _sections_left_out() -> set[str]:
    """Optional sections absent from the configuration file ($CDC_CONFIG), if one is set."""
    data = _config_file()
    if data is None:
        return set()
    return {s for s in _OPTIONAL_SECTIONS if s not in data}


def _config_wants_avro() -> bool:
    """Whether the configuration file ($CDC_CONFIG) sets kafka.value_format: avro."""
    data = _config_file()
    kafka = data.get("kafka") if data else None
    return isinstance(kafka, dict) and kafka.get("value_format") == "avro"


def _config_file() -> dict[str, Any] | None:
    path = os.environ.get("CDC_CONFIG")
    if not path or not Path(path).is_file():
        return None
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except yaml.YAMLError:
        return None
    return data if isinstance(data, dict) else None


class _Service(click.ParamType):
    """A service of the stack (checked when used: importing the stack costs 0.2 s)."""

    name = "service"

    def convert(self, value: str, param: click.Parameter | None,
                ctx: click.Context | None) -> str:
        from pipeline.stack import ALL

        if value not in ALL:
            self.fail(f"'{value}' is not one of {', '.join(ALL)}", param, ctx)
        return value


_SERVICES = _Service()


@stack.command("up")
@click.argument("services", nargs=-1, type=_SERVICES)
@click.option("--with-registry", is_flag=True,
              help="Start the schema registry too (also when $CDC_CONFIG sets "
                   "kafka.value_format: avro).")
def stack_up(services: tuple[str, ...], with_registry: bool) -> None:
    """Install (once) and start SERVICES (default: all but the schema registry), reusing
    running ones; prints the settings to export (eval "$(cdc stack up)")."""
    import time

    from pipeline.stack import DEFAULT, up
    from pipeline.stack.registry import NAME as REGISTRY

    names = list(services) or list(DEFAULT)
    if (with_registry or _config_wants_avro()) and REGISTRY not in names:
        names.append(REGISTRY)
    started = time.monotonic()
    info = _stack_run(lambda: up(names))
    click.echo(f"# stack up in {time.monotonic() - started:.1f}s")
    _stack_exports(info)


@stack.command("down")
def stack_down() -> None:
    """Stop every service of the stack (data and downloads stay)."""
    from pipeline.stack import down

    _stack_run(down)
    click.echo("stack stopped")


@stack.command("status")
def stack_status() -> None:
    """Each service: running or not, port, pid (exit 1 unless all run)."""
    from pipeline.stack import status

    rows = _stack_run(status)
    for st in rows.values():
        state = "running" if st.running else "stopped"
        conn = " ".join(f"{k}={v}" for k, v in st.connection.items())
        click.echo(f"{st.name:14} {state:8} port={st.port} pid={st.pid} {conn}")
    sys.exit(0 if rows and all(s.running for s in rows.values()) else 1)


@stack.command("env")
def stack_env() -> None:
    """The export lines of the running stack."""
    from pipeline.stack import load

    info = _stack_run(load)
    if info is None:
        click.echo("error: the stack is not (fully) running: cdc stack up", err=True)
        sys.exit(1)
    _stack_exports(info)


@stack.command("start")
@click.argument("service", type=_SERVICES)
def stack_start(service: str) -> None:
    """Start one stopped service on its old port, with its data."""
    from pipeline.stack import start_service

    _stack_exports(_stack_run(lambda: start_service(service)))


@stack.command("stop")
@click.argument("service", type=_SERVICES)
def stack_stop(service: str) -> None:
    """Stop one service, keeping its port and data (to try an outage)."""
    from pipeline.stack import stop_service

    _stack_run(lambda: stop_service(service))


@main.command()
@click.option("--keep-running", is_flag=True, help="Leave the stack, capture and worker running.")
@click.option("--keep", is_flag=True, help="Keep this run's topics and search indices.")
@click.option("--rows", default=200, show_default=True, help="Rows per table in the workload.")
def demo(keep_running: bool, keep: bool, rows: int) -> None:
    """Start everything, drive a workload, and show it reach Elasticsearch and Redis
    (then removes the slot, topics and indices it created, unless --keep/--keep-running)."""
    from pipeline.demo import run_demo

    try:
        sys.exit(run_demo(keep_running=keep_running, rows=rows, keep=keep))
    except CdcError as exc:
        _fail(exc)


@main.group()
def snapshot() -> None:
    """Incremental backfills of existing rows while the stream goes on: start, status,
    pause, resume, stop (sent to the running capture through the WAL; for a MySQL/MariaDB
    capture, as rows of mysql.signal_table through the binlog)."""


@snapshot.command("start")
@click.argument("tables", nargs=-1, required=True)
@click.option("--where", default=None,
              help="Only rows matching this SQL condition (Debezium's additional-conditions).")
@click.option("--chunk-size", type=click.IntRange(min=1), default=None,
              help="Rows per chunk (default: postgres.snapshot_chunk_size, or "
                   "mysql.snapshot_chunk_size).")
@click.option("--follow", is_flag=True, help="Then show progress until it is done.")
@click.pass_context
def snapshot_start(ctx: click.Context, tables: tuple[str, ...], where: str | None,
                   chunk_size: int | None, follow: bool) -> None:
    """Backfill TABLES (schema.table ...): every row, read in key-ordered chunks, reaches
    the raw topics as op r, in order with the stream; nothing is written to your tables."""
    from pipeline.capture.signals import Signal

    try:
        settings = _settings(ctx)
        control = _backfill_control(settings)
        control.check_start(settings, tables, where)
        conditions = dict.fromkeys(tables, where) if where else {}
        signal_id = control.send(settings, Signal("execute-snapshot", tables, conditions,
                                                  chunk_size))
        click.echo(f"backfill of {', '.join(tables)} requested (signal {signal_id}); capture "
                   "starts it in order with the stream")
        if follow:
            _follow(settings)
        else:
            click.echo("progress: cdc snapshot status --follow")
    except CdcError as exc:
        _fail(exc)


def _backfill_control(settings):  # type: ignore[no-untyped-def]
    """The backfill requests and status of the configured source (PostgreSQL: messages in
    the WAL; MySQL/MariaDB: rows of mysql.signal_table)."""
    if settings.capture.source == "mysql":
        from pipeline.sources.mysql import backfill_control as mysql_control

        return mysql_control
    from pipeline.sources.postgres import backfill_control as control

    return control


def _follow(settings) -> None:  # type: ignore[no-untyped-def]
    import time

    control = _backfill_control(settings)

    drawn = 0
    tty = sys.stdout.isatty()
    last = ""
    while True:
        state = control.load_state(settings)
        text = control.render(state)
        if text != last:
            if tty and drawn:
                click.echo(f"\x1b[{drawn}F\x1b[J", nl=False)
            click.echo(text)
            drawn, last = text.count("\n") + 1, text
        if not control.running(state):
            return
        time.sleep(1.0)


@snapshot.command("status")
@click.option("--follow", is_flag=True, help="Redraw every second until no backfill runs.")
@click.option("--json", "as_json", is_flag=True, help="The state as JSON.")
@click.pass_context
def snapshot_status(ctx: click.Context, follow: bool, as_json: bool) -> None:
    """Each backfill's progress: rows, percent, rows/s, ETA (or how it ended)."""
    try:
        settings = _settings(ctx)
        control = _backfill_control(settings)
        if as_json:
            click.echo(json.dumps(control.load_state(settings), indent=2))
        elif follow:
            _follow(settings)
        else:
            click.echo(control.render(control.load_state(settings)))
    except CdcError as exc:
        _fail(exc)


def _snapshot_signal(ctx: click.Context, kind: str, tables: tuple[str, ...]) -> None:
    from pipeline.capture.signals import Signal

    try:
        settings = _settings(ctx)
        signal_id = _backfill_control(settings).send(settings, Signal(kind, tables))
        click.echo(f"{kind} sent (signal {signal_id})")
    except CdcError as exc:
        _fail(exc)


@snapshot.command("pause")
@click.pass_context
def snapshot_pause(ctx: click.Context) -> None:
    """Pause every backfill (the stream goes on; resume continues at the next chunk)."""
    _snapshot_signal(ctx, "pause-snapshot", ())


@snapshot.command("resume")
@click.pass_context
def snapshot_resume(ctx: click.Context) -> None:
    """Resume paused backfills."""
    _snapshot_signal(ctx, "resume-snapshot", ())


@snapshot.command("stop")
@click.argument("tables", nargs=-1)
@click.pass_context
def snapshot_stop(ctx: click.Context, tables: tuple[str, ...]) -> None:
    """Stop the backfill of TABLES (all when none given); rows already sent stay."""
    if tables:
        try:
            settings = _settings(ctx)
            captured = settings.captured_tables()
            for table in tables:
                if table not in captured:
                    raise ConfigError("cdc snapshot stop", f"{table} is not captured (the "
                                      f"captured tables: {', '.join(captured)})")
            state = _backfill_control(settings).load_state(settings)
            running = {t.get("table") for t in state.get("tables", [])
                       if t.get("state") == "running"}
        except CdcError as exc:
            _fail(exc)
        idle = [t for t in tables if t not in running]
        if idle:  # sent anyway: a start still on its way to capture is stopped too
            click.echo(f"note: no backfill of {', '.join(idle)} is running as capture last "
                       "saved it (cdc snapshot status)")
    _snapshot_signal(ctx, "stop-snapshot", tables)


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
@click.option("--replay-id", default=None,
              help="Only records that failed again after this replay.")
@click.pass_context
def dlq_list(ctx: click.Context, topic: str | None, partition: int | None, stage: str | None,
             error_class: str | None, replay_id: str | None) -> None:
    """Counts by original topic, stage and error class."""
    from pipeline.dlq import LetterFilter, list_letters, render_groups

    def action(settings):  # type: ignore[no-untyped-def]
        name = topic or settings.worker.dead_letter_topic
        flt = LetterFilter(partition, stage, error_class, replay_id)
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
@click.option("--again", is_flag=True,
              help="raw: replay letters already replayed, and records that failed again "
                   "after a replay, too.")
@click.option("--transform", "transform_path", default=None, metavar="MODULE:FUNCTION",
              help="Fix each value first: FUNCTION(value, letter) returns the corrected "
                   "value (or None to leave the letter out).")
@click.option("--wait", "wait_s", type=click.FloatRange(min=0), default=0.0,
              help="raw: then wait up to this many seconds for the workers, and report the "
                   "replayed records dead-lettered again.")
@click.option("--dry-run", is_flag=True, help="Show what would be replayed; change nothing.")
@click.pass_context
def dlq_replay(ctx: click.Context, topic: str | None, partition: int | None, stage: str | None,
               error_class: str | None, destination: str, limit: int | None,
               offset: int | None, again: bool, transform_path: str | None, wait_s: float,
               dry_run: bool) -> None:
    """Send dead letters to their original topic (once) or to one sink."""
    from pipeline.dlq import LetterFilter, replay_raw, replay_to_sink
    from pipeline.dlq_transform import load_transform

    if destination != "raw" and not destination.startswith("sink:"):
        raise click.BadParameter("raw or sink:<name>", param_hint="--to")
    if destination != "raw" and (again or wait_s):
        raise click.UsageError("--again and --wait apply to a replay to the raw topic, not "
                               f"to --to {destination} (written at once, checked against "
                               "the sink's seen-set)")

    def action(settings):  # type: ignore[no-untyped-def]
        name = topic or settings.worker.dead_letter_topic
        flt = LetterFilter(partition, stage, error_class)
        if transform_path is not None and "" not in sys.path:
            sys.path.insert(0, "")  # a module of fixes next to where the command runs
        fix = None if transform_path is None else load_transform(transform_path)
        if destination == "raw":
            report = replay_raw(settings, name, flt, offset, limit, again, dry_run, fix,
                                transform_path, wait_s)
        else:
            report = replay_to_sink(settings, name, destination.removeprefix("sink:"), flt,
                                    offset, limit, dry_run, fix)
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


def _add_verify() -> None:
    from pipeline.verify.command import verify

    main.add_command(verify)


_add_verify()


def _add_tune() -> None:
    from pipeline.tune.command import tune

    main.add_command(tune)


_add_tune()

if __name__ == "__main__":
    main()
