"""The ``cdc verify`` command: options, progress bars, the summary table, the report."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click
import orjson

from pipeline.errors import (
    EXIT_NOT_INDEXED,
    EXIT_UNAVAILABLE,
    CdcError,
    ConfigError,
    RetriableError,
    exit_code,
)
from pipeline.verify.compare import DIFFERING, EXTRA, MISSING, TableResult

if TYPE_CHECKING:
    from pipeline.config import Settings
    from pipeline.verify.database import TableRows
    from pipeline.verify.index import SearchIndex
    from pipeline.verify.run import Options

#: Drifts listed per table in the summary (the JSON report has them all).
SHOWN = 20


@click.command()
@click.option("--table", "tables", multiple=True,
              help="Only this captured table (schema.table); repeatable. Default: all.")
@click.option("--chunk-size", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Rows per key-ordered chunk (and document ids per page).")
@click.option("--rate", type=click.FloatRange(min=0, min_open=True), default=None,
              help="At most this many rows (and document ids) a second.")
@click.option("--recheck-delay", type=click.FloatRange(min=0), default=2.0, show_default=True,
              help="Seconds before a divergent key is read again on both sides.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None,
              help="Write the full report (every drift) to this file.")
@click.option("--repair", is_flag=True,
              help="Backfill missing and differing keys through the pipeline; delete "
                   "documents whose row does not exist.")
@click.pass_context
def verify(ctx: click.Context, tables: tuple[str, ...], chunk_size: int, rate: float | None,
           recheck_delay: float, json_path: str | None, repair: bool) -> None:
    """Compare each captured table with its search index: missing, extra and differing
    documents. Exit 0: equal; 1: drift; 4: unreachable; 5: a table has no index yet."""
    from pipeline.config import load_settings
    from pipeline.verify.index import SearchIndex
    from pipeline.verify.run import Options

    try:
        settings = load_settings(ctx.obj.get("config") if ctx.obj else None)
        if settings.elasticsearch is None:
            raise ConfigError("elasticsearch", "no search index is configured to verify")
        chosen = tables or settings.postgres.tables
        for table in chosen:
            if table not in settings.postgres.tables:
                raise ConfigError("--table", f"{table} is not captured (postgres.tables: "
                                  f"{', '.join(settings.postgres.tables)})")
        es = SearchIndex(settings.elasticsearch)
        opened: dict[str, TableRows] = {}
        try:
            options = Options(chunk_size, rate, recheck_delay)
            results = _verify_all(settings, es, chosen, options, opened)
            click.echo(summary(results))
            report: dict[str, object] = {"tables": [r.to_json() for r in results]}
            if repair:
                from pipeline.verify.repair import repair as run_repair

                done = run_repair(settings, es, opened, results, click.echo)
                report["repair"] = [vars(d) for d in done]
                for d in done:
                    line = f"{d.table}: {d.deleted} deleted, {d.backfilled} backfilled"
                    if d.changed:
                        line += f", {d.changed} changed meanwhile (left to the stream)"
                    if d.signal:
                        line += f" (signal {d.signal}; progress: cdc snapshot status)"
                    if d.error:
                        line += f"; {d.error}"
                    click.echo(line)
            if json_path:
                Path(json_path).write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
        finally:
            es.close()
            for db in opened.values():
                db.close()
    except RetriableError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_UNAVAILABLE)
    except CdcError as exc:
        from pipeline.verify.index import IndexMissing

        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_NOT_INDEXED if isinstance(exc, IndexMissing) else exit_code(exc))
    sys.exit(1 if any(r.drifts for r in results) else 0)


def _verify_all(settings: Settings, es: SearchIndex, tables: tuple[str, ...],
                options: Options, opened: dict[str, TableRows]) -> list[TableResult]:
    """Each table in turn, with a progress bar on stderr (rows, then document ids)."""
    from pipeline.verify.database import TableRows
    from pipeline.verify.run import verify_table

    assert settings.elasticsearch is not None
    results: list[TableResult] = []
    for table in tables:
        index = settings.elasticsearch.index_for(table)
        db = opened[table] = TableRows(settings.postgres, table)
        documents = es.check(index, table)
        with click.progressbar(length=max(db.estimate(), documents, 1) + documents, label=table,
                               file=sys.stderr, show_pos=True) as bar:
            results.append(verify_table(db, es, index, options, bar.update))
    return results


def summary(results: list[TableResult]) -> str:
    """A table per verified table, then each drift (up to ``SHOWN`` per table)."""
    head = ("table", "rows", "documents", "missing", "extra", "differing", "settled",
            "seconds")
    lines = [[r.table, str(r.rows), str(r.documents), str(r.count(MISSING)),
              str(r.count(EXTRA)), str(r.count(DIFFERING)), str(r.settled),
              f"{r.seconds:.1f}"] for r in results]
    widths = [max(len(x) for x in column) for column in zip(head, *lines, strict=False)]
    out = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                     for i, (c, w) in enumerate(zip(row, widths, strict=True)))
           for row in (head, *lines)]
    for r in results:
        for drift in r.drifts[:SHOWN]:
            text = f"{r.table}  {drift.kind:<9}  id={drift.doc_id}"
            if drift.columns:
                text += f"  columns: {', '.join(drift.columns)}"
            out.append(text)
        if len(r.drifts) > SHOWN:
            out.append(f"{r.table}  ... {len(r.drifts) - SHOWN} more (--json FILE for all)")
        if r.unchecked:
            out.append(f"{r.table}  {r.unchecked} document(s) not checked for a row: "
                       f"{r.unchecked_because} (never reported as extra nor deleted)")
    verdict = sum(len(r.drifts) for r in results)
    out.append("verdict: index equals table" if not verdict else
               f"verdict: {verdict} document(s) drifted")
    return "\n".join(out)
