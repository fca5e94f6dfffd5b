"""``python -m bench compat --worker``: our search worker on Debezium's topics, then the
index compared with the tables.

After Debezium has written its raw topics, one ``cdc worker --sink search`` (its own
consumer group and index prefix) reads the topics of the workload tables (all have a
primary key) until its group has committed every record. Then each table is read from
PostgreSQL and compared with its index: the primary keys present, and every column whose
type has a faithful, comparable form in the document (``KINDS``: integers, booleans and
``bit(1)``, numeric and money as exact decimals, floats, strings, ``char(n)`` without its
padding, bytea, json/jsonb/xml text, some ranges, and arrays and hstore as JSON). Other
columns (date/time types in Debezium's ``isostring`` form, geometric and full-text types,
bit strings in Debezium's little-endian bytes, multidimensional arrays, ...) and those
Debezium does not carry (``DEBEZIUM_DROPS``) are compared on keys only, and named in the
report.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

import httpx
import psycopg2
from confluent_kafka import Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient
from psycopg2 import sql

from bench.common import Bench, log, topic_count
from bench.compat_workload import TypeTable
from pipeline.config import load_settings
from pipeline.harness import PipelineProcess, index_documents

#: Column type (as written in ``compat_workload``) -> how it is compared. ``json``: the
#: column read with ``to_jsonb`` and the document's value (parsed if it is JSON text).
KINDS = {
    "smallint": "int", "integer": "int", "bigint": "int", "oid": "int", "posint": "int",
    "numeric": "dec", "numeric(12,2)": "dec", "money": "dec",
    "real": "float", "double precision": "float",
    "boolean": "bool", "bit(1)": "bool",
    "text": "str", "varchar(10)": "str", '"char"': "str", "uuid": "str",
    "mood": "str", "inet": "str", "cidr": "str", "macaddr": "str", "macaddr8": "str",
    "int4range": "str", "int8range": "str", "numrange": "str", "daterange": "str",
    "char(5)": "bpchar", "bytea": "bytes",
    "json": "text", "jsonb": "text", "xml": "str",
    "integer[]": "json", "text[]": "json", "boolean[]": "json", "uuid[]": "json",
    "mood[]": "json", "hstore": "json",
}
#: Types Debezium 3.6 does not carry (null or left out of the event): compared on keys only.
DEBEZIUM_DROPS = {"name": "null", "posint[]": "left out (array of a domain)"}
#: The tables that are not type tables: (column, type) besides ``id``.
OTHER_TABLES: dict[str, tuple[tuple[str, str], ...]] = {
    "items": (("name", "text"), ("big", "text")),
    "bulk": (("v", "text"),),
    "zz_end": (),
}
MAX_EXAMPLES = 3


@dataclass
class TableResult:
    table: str
    rows: int = 0
    documents: int = 0
    missing: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    #: (id, column, PostgreSQL's value, the document's)
    differing: list[tuple[str, str, Any, Any]] = field(default_factory=list)
    compared: tuple[str, ...] = ()
    keys_only: tuple[str, ...] = ()

    @property
    def differing_rows(self) -> int:
        return len({d[0] for d in self.differing})

    def equal(self) -> bool:
        return not (self.missing or self.extra or self.differing)


@dataclass
class WorkerResult:
    tables: list[TableResult]
    notes: list[str]
    seconds: float
    dead_letters: int

    def equal(self) -> bool:
        return not self.dead_letters and all(t.equal() for t in self.tables)


def run(bench: Bench, schema: str, type_tables: list[TypeTable], prefix: str,
        timeout: float) -> WorkerResult:
    """Run the worker over Debezium's topics ``<prefix>.<schema>.<table>`` and compare."""
    columns = {t.name: t.columns for t in type_tables} | OTHER_TABLES
    ids = [f"{schema}.{name}" for name in columns]
    topics = [f"{prefix}.{t}" for t in ids]
    work = bench.work / "worker"
    tag = bench.name("cw")
    env = {
        **bench.env,
        "CDC_POSTGRES__TABLES": "[" + ", ".join(ids) + "]",
        "CDC_WORKER__TOPICS": "[" + ", ".join(topics) + "]",
        "CDC_WORKER__APP_ID": tag,
        "CDC_WORKER__DEAD_LETTER_TOPIC": f"{tag}.dead-letter",
        "CDC_WORKER__BATCH_WAIT_MS": "10",
        "CDC_ELASTICSEARCH__INDEX_PREFIX": f"{tag}.",
        "CDC_METRICS__SNAPSHOT_DIR": str(work / "metrics"),
        "CDC_WORKER_DATADIR": str(work / "worker-data"),
        "CDC_LOG_LEVEL": "ERROR",
    }
    settings = load_settings(None, env)
    assert settings.elasticsearch is not None
    es_url = settings.elasticsearch.url
    group = settings.group_id("search")
    notes: list[str] = []
    log(f"worker: cdc worker --sink search on {len(topics)} Debezium topics, group {group}")
    t0 = time.monotonic()
    proc = PipelineProcess("worker --sink search", env, work / "worker-search.log")
    try:
        if not _wait_idle(bench.bootstrap, group, topics, timeout, proc.alive):
            notes.append(f"the worker did not commit every record within {timeout:.0f} s "
                         f"(alive: {proc.alive()}); compared what was indexed")
            log(f"worker: not idle; last log lines:\n{proc.tail()}")
    finally:
        proc.stop()
    seconds = time.monotonic() - t0
    log(f"worker: done in {seconds:.1f} s")
    dead = _count(bench.bootstrap, f"{tag}.dead-letter")
    results = [_compare_table(bench.dsn, es_url, schema, name, cols,
                              settings.elasticsearch.index_for(f"{schema}.{name}"))
               for name, cols in columns.items()]
    _forget_later(bench, tag, es_url)
    return WorkerResult(results, notes, seconds, dead)


def _wait_idle(bootstrap: str, group: str, topics: list[str], timeout: float,
               alive: Callable[[], bool], settle: float = 3.0) -> bool:
    """Until the group's committed offsets reach every partition's end and stay there."""
    reader = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                       "enable.auto.commit": False})
    try:
        parts = [TopicPartition(t, p) for t in topics
                 for p in reader.list_topics(t, timeout=10).topics[t].partitions]
        ends = {(tp.topic, tp.partition): reader.get_watermark_offsets(tp, timeout=10)[1]
                for tp in parts}
        deadline = time.monotonic() + timeout
        since: float | None = None
        while time.monotonic() < deadline and alive():
            try:
                committed = reader.committed(parts, timeout=10)
            except KafkaException:
                committed = []
            done = len(committed) == len(parts) and all(
                tp.offset >= ends[(tp.topic, tp.partition)] or ends[(tp.topic, tp.partition)] == 0
                for tp in committed)
            if done:
                since = since or time.monotonic()
                if time.monotonic() - since >= settle:
                    return True
            else:
                since = None
            time.sleep(0.5)
        return False
    finally:
        reader.close()


def _count(bootstrap: str, topic: str) -> int:
    try:
        return topic_count(bootstrap, topic)
    except (KafkaException, KeyError):
        return 0


def _forget_later(bench: Bench, tag: str, es_url: str) -> None:
    """Hand the worker's topics (dead letters, changelogs) and indices to the cleanup."""
    meta = AdminClient({"bootstrap.servers": bench.bootstrap}).list_topics(timeout=10)
    bench.topics.extend(t for t in meta.topics if t.startswith(tag) and t not in bench.topics)
    listed = httpx.get(f"{es_url}/_cat/indices/{tag}*", params={"h": "index", "format": "json"},
                       timeout=10).json()
    bench.indices.extend(row["index"] for row in listed)


def _query(schema: str, name: str, cols: tuple[tuple[str, str], ...]) -> sql.Composable:
    pairs: list[sql.Composable] = []
    for column, type_ in cols:
        if KINDS.get(type_) is None:
            continue
        # Exact text for numbers (psycopg2 would read a JSON number as a float) and for
        # json/jsonb; else the output function's text, as pgoutput sends it (``inet::text``
        # would add the mask, ``xml::text`` keep the declaration).
        expr = "{}::text" if KINDS[type_] in ("int", "dec", "float", "text") else "to_jsonb({})"
        pairs += [sql.Literal(column), sql.SQL(expr).format(sql.Identifier(column))]
    row = (sql.SQL("jsonb_build_object({})").format(sql.SQL(", ").join(pairs)) if pairs
           else sql.SQL("'{}'::jsonb"))
    return sql.SQL("SELECT id::text, {} FROM {}.{}").format(
        row, sql.Identifier(schema), sql.Identifier(name))


def _table_rows(dsn: str, query: sql.Composable, search_path: str) -> dict[str, dict[str, Any]]:
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute(sql.SQL("SET search_path = {}, public").format(
                sql.Identifier(search_path)))
            cur.execute(query)
            rows = {str(k): v for k, v in cur.fetchall()}
        conn.rollback()
        return rows
    finally:
        conn.close()


def _compare_table(dsn: str, es_url: str, schema: str, name: str,
                   cols: tuple[tuple[str, str], ...], index: str) -> TableResult:
    rows = _table_rows(dsn, _query(schema, name, cols), schema)
    docs = index_documents(es_url, index)
    out = TableResult(f"{schema}.{name}", rows=len(rows), documents=len(docs),
                      compared=tuple(c for c, t in cols if t in KINDS),
                      keys_only=tuple(f"{c} (Debezium: {DEBEZIUM_DROPS[t]})"
                                      if t in DEBEZIUM_DROPS else c
                                      for c, t in cols if t not in KINDS))
    out.missing = sorted(set(rows) - set(docs), key=_id_order)
    out.extra = sorted(set(docs) - set(rows), key=_id_order)
    kinds = {c: KINDS[t] for c, t in cols if t in KINDS}
    for doc_id in sorted(set(rows) & set(docs), key=_id_order):
        row, doc = rows[doc_id], docs[doc_id]
        if _canon("int", doc.get("id")) != _canon("int", doc_id):
            out.differing.append((doc_id, "id", doc_id, doc.get("id")))
        for column, kind in kinds.items():
            if column not in doc:
                out.differing.append((doc_id, column, row.get(column), "(absent)"))
                continue
            pg, ours = _canon(kind, row.get(column), True), _canon(kind, doc[column])
            if pg != ours:
                out.differing.append((doc_id, column, row.get(column), doc[column]))
    return out


def _id_order(doc_id: str) -> tuple[int, str]:
    return (int(doc_id), "") if doc_id.lstrip("-").isdigit() else (0, doc_id)


def _canon(kind: str, value: Any, from_pg: bool = False) -> Any:
    """A value in a form both sides share (``from_pg``: PostgreSQL's text or JSON);
    anything unreadable stays as it is, so it shows as a difference."""
    if value is None:
        return None
    try:
        if kind == "int":
            return None if isinstance(value, bool) else int(value)
        if kind == "bool":
            return {"1": True, "0": False}.get(value, value) if from_pg else value
        if kind == "dec":
            text = str(value).replace("$", "").replace(",", "") if from_pg else str(value)
            d = Decimal(text)
            return "NaN" if d.is_nan() else d
        if kind == "float":
            f = float(value)
            return "NaN" if math.isnan(f) else f
        if kind == "bpchar":
            return str(value).rstrip(" ")
        if kind == "bytes":
            return bytes.fromhex(value[2:]) if from_pg else base64.b64decode(value,
                                                                             validate=True)
        if kind == "json" and isinstance(value, str) and not from_pg:
            return json.loads(value)
    except (ValueError, TypeError, InvalidOperation, binascii.Error):
        return value
    return value


def report(result: WorkerResult) -> str:
    """Markdown: per table rows, documents, missing, extra, differing; then the verdict."""
    lines = ["", f"Our search worker on Debezium's topics ({result.seconds:.0f} s): index "
             "documents against the tables' rows.", ""]
    lines += [f"- note: {n}" for n in result.notes]
    if result.dead_letters:
        lines.append(f"- {result.dead_letters} records dead-lettered")
    lines += ["", "| table | rows | documents | missing | extra | differing | "
              "columns compared on keys only |", "|---|---|---|---|---|---|---|"]
    for t in result.tables:
        lines.append(f"| {t.table.split('.', 1)[1]} | {t.rows} | {t.documents} | "
                     f"{len(t.missing)} | {len(t.extra)} | {t.differing_rows} | "
                     f"{', '.join(t.keys_only) or '-'} |")
    lines.append("")
    if result.equal():
        lines.append("index equals tables (keys, and every column not listed as keys only)")
        return "\n".join(lines)
    for t in result.tables:
        short = t.table.split(".", 1)[1]
        if t.missing:
            lines.append(f"- {short}: missing ids {', '.join(t.missing[:10])}")
        if t.extra:
            lines.append(f"- {short}: extra ids {', '.join(t.extra[:10])}")
        by_column: dict[str, list[tuple[str, Any, Any]]] = {}
        for doc_id, column, pg, doc in t.differing:
            by_column.setdefault(column, []).append((doc_id, pg, doc))
        for column, items in by_column.items():
            shown = "; ".join(f"id {i}: PostgreSQL `{_short(p)}`, index `{_short(d)}`"
                              for i, p, d in items[:MAX_EXAMPLES])
            lines.append(f"- {short}.{column}: {len(items)} rows differ ({shown})")
    return "\n".join(lines)


def _short(value: Any, width: int = 100) -> str:
    text = json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else value
    return text if len(text) <= width else text[:width - 10] + "..."


def as_json(result: WorkerResult) -> dict[str, Any]:
    return {
        "equal": result.equal(), "seconds": round(result.seconds, 1),
        "dead_letters": result.dead_letters, "notes": result.notes,
        "tables": [{"table": t.table, "rows": t.rows, "documents": t.documents,
                    "missing": t.missing, "extra": t.extra,
                    "differing": [list(map(str, d)) for d in t.differing],
                    "compared": list(t.compared), "keys_only": list(t.keys_only)}
                   for t in result.tables],
    }

