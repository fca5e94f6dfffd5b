"""The schema history of a binlog capture, kept in Kafka as Debezium keeps its database
history topic: each captured table's columns and primary key at the position capture
started from, then after every DDL statement of the binlog that changes them.

Why: a server with ``binlog_row_metadata=MINIMAL`` writes table maps without column
names, ENUM/SET labels or key (:mod:`pipeline.sources.mysql.ddl`); the reader then names
an event's columns from this history, as of the event. With FULL metadata the events name
their own columns and the history is only kept, in case the server is switched.

Each entry is one record of the compacted topic ``mysql.schema_history_topic`` (default
``<kafka.offsets_topic>.schema-history``), keyed by the source, the table and the binlog
position after the statement, so compaction keeps every entry and a statement read again
after a restart overwrites its own entry. On restart the schemas are rebuilt from the
entries at or before the resume position; later ones are ignored (their statements are
read again). An entry is in Kafka before the position after its statement can be
confirmed: :meth:`SchemaHistory.apply` waits for Kafka's acknowledgement.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import orjson
from confluent_kafka import Producer

from pipeline.capture.offsets import read_compacted
from pipeline.config import KafkaSettings
from pipeline.errors import RetriableError, SourceSetupError
from pipeline.kafka.client import client_config
from pipeline.positions import BinlogPosition
from pipeline.sources.mysql.ddl import Schemas, TableSchema, UnreadableDdl, apply_ddl

log = logging.getLogger(__name__)

_REMEDY = ("take a new snapshot with `cdc capture --reset-position` (it records the "
           "tables' schemas at its position), or set binlog_row_metadata=FULL on the server "
           "before these changes are written")


def read_schemas(cur: Any, tables: tuple[str, ...]) -> Schemas:
    """The tables' columns and primary keys now, from information_schema."""
    out: Schemas = {}
    for table in tables:
        db, name = table.split(".", 1)
        cur.execute("SELECT COLUMN_NAME, COLUMN_TYPE FROM information_schema.COLUMNS "
                    "WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s ORDER BY ORDINAL_POSITION",
                    (db, name))
        columns = [(str(c), str(t)) for c, t in cur.fetchall()]
        cur.execute("SELECT COLUMN_NAME FROM information_schema.KEY_COLUMN_USAGE "
                    "WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s "
                    "AND CONSTRAINT_NAME = 'PRIMARY' ORDER BY ORDINAL_POSITION", (db, name))
        key = [str(r[0]) for r in cur.fetchall()]
        out[table] = TableSchema.from_information_schema(columns, key)
    return out


def schemas_at(cur: Any, tables: tuple[str, ...], position: Callable[[], BinlogPosition],
               attempts: int = 5) -> tuple[BinlogPosition, Schemas]:
    """``position()`` and the tables' schemas at it. information_schema is not read in a
    transaction's snapshot, so the schemas are read before and after the position: equal
    reads mean no DDL ran in between, and they are the schemas at the position."""
    for _ in range(attempts):
        before = read_schemas(cur, tables)
        at = position()
        if read_schemas(cur, tables) == before:
            return at, before
        log.info("a table's schema changed while capture read it; reading again")
    raise RetriableError("the captured tables' schemas kept changing while capture read "
                         "them (DDL running)")


class SchemaHistory:
    """The captured tables' schemas as of the binlog position the reader is at."""

    def __init__(self, kafka: KafkaSettings, topic: str, identity: dict[str, str],
                 tables: tuple[str, ...], strict: bool) -> None:
        self.kafka = kafka
        self.topic = topic
        self.identity = identity
        self.tracked_tables = tables
        self.tracked = frozenset(tables)
        #: Stop at a DDL statement of a captured table that is not understood (the server
        #: sends MINIMAL metadata); else only mark the table's schema unknown.
        self.strict = strict
        self.schemas: Schemas = {}
        self._producer: Producer | None = None

    def _key(self, table: str, position: BinlogPosition) -> bytes:
        where = {k: v for k, v in position.to_dict().items() if k != "gtids"}
        return orjson.dumps({**self.identity, "table": table, **where},
                            option=orjson.OPT_SORT_KEYS)

    def _entries(self) -> list[tuple[bytes, dict[str, Any]]]:
        """This source's entries, oldest first."""
        out = []
        for key, value in read_compacted(self.kafka, self.topic):
            if key is None or value is None:
                continue
            ident = orjson.loads(key)
            if all(ident.get(k) == v for k, v in self.identity.items()):
                out.append((key, orjson.loads(value)))
        return out

    def load(self, at: BinlogPosition) -> list[str]:
        """Rebuild the schemas as of ``at``; returns the captured tables without any entry
        at or before it (their schemas are then unknown)."""
        newest: dict[str, tuple[BinlogPosition, dict[str, Any]]] = {}
        for _, entry in self._entries():
            try:
                position = BinlogPosition.from_dict(entry["position"])
                table = str(entry["table"])
            except (KeyError, TypeError, ValueError) as exc:
                raise SourceSetupError(f"an entry of the schema history '{self.topic}' is "
                                       f"unreadable ({exc}): {entry!r}") from exc
            if position <= at and (table not in newest or newest[table][0] <= position):
                newest[table] = (position, entry)
        self.schemas = {t: TableSchema.from_dict(e) for t, (_, e) in newest.items()}
        missing = sorted(self.tracked - set(newest))
        for table in missing:
            self.schemas[table] = TableSchema.unknown_after(
                f"the schema history '{self.topic}' has no entry for it at or before {at}")
        return missing

    def start(self, at: BinlogPosition, schemas: Schemas) -> None:
        """Record ``schemas``, read at ``at``, where capture starts without history."""
        for table in sorted(schemas):
            self.schemas[table] = schemas[table]
            self._produce(table, at, schemas[table], None)
        self._flush()
        log.info("schema history: recorded %d tables at %s in '%s'", len(schemas), at,
                 self.topic)

    def apply(self, query: str, default_db: str, after: BinlogPosition) -> None:
        """Follow one DDL statement of the binlog (``after``: the position after it)."""
        try:
            changed = apply_ddl(self.schemas, query, default_db, self.tracked)
        except UnreadableDdl as exc:
            message = (f"the DDL statement at {after} is not understood for the schema "
                       f"history ({exc}): `{query}`")
            if self.strict:
                raise SourceSetupError(f"{message}. Row events after it cannot be named "
                                       f"with certainty; remedy: {_REMEDY}") from exc
            log.warning("%s; the tables it names are marked unknown (harmless while the "
                        "server sends FULL row metadata)", message)
            changed = {t: TableSchema.unknown_after(f"`{query}` at {after} is not "
                                                    f"understood ({exc})")
                       for t in self.tracked if t.split(".", 1)[1] in query}
        for table, schema in changed.items():
            self.schemas[table] = schema
            self._produce(table, after, schema, query)
        if changed:
            self._flush()
            log.info("schema history: %s at %s changes %s", query[:200], after,
                     ", ".join(sorted(changed)))

    def schema_of(self, table: str) -> TableSchema:
        """The schema of captured ``table`` now; SourceSetupError when it is not known."""
        schema = self.schemas.get(table)
        if schema is None or schema.unknown is not None:
            why = schema.unknown if schema is not None else "no entry"
            raise SourceSetupError(
                f"a change of {table} carries no column names (binlog_row_metadata is not "
                f"FULL) and its schema at this point of the binlog is not known: {why}. "
                f"Remedy: {_REMEDY}")
        return schema

    def forget(self) -> None:
        """Remove this source's history (tombstones), with its saved position."""
        keys = [key for key, _ in self._entries()]
        producer = self._producer_now()
        for key in keys:
            producer.produce(self.topic, None, key)
        self._flush()

    def _producer_now(self) -> Producer:
        if self._producer is None:
            self._producer = Producer(client_config(self.kafka, {
                "enable.idempotence": True, "acks": "all"}))
        return self._producer

    def _produce(self, table: str, at: BinlogPosition, schema: TableSchema,
                 ddl: str | None) -> None:
        value = {"table": table, "position": at.to_dict(), "ddl": ddl, **schema.to_dict()}
        self._producer_now().produce(self.topic, orjson.dumps(value), self._key(table, at))

    def _flush(self) -> None:
        if self._producer is not None and self._producer.flush(30):
            raise RetriableError(f"Kafka did not acknowledge the schema history in "
                                 f"'{self.topic}'")
