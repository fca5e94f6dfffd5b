"""Outbox routing inside the logical source (Debezium's outbox event router on the WAL).

The PostgreSQL source hands this object the changes of ``outbox.table`` and the logical
decoding messages whose prefix is ``outbox.message_prefix``; every other table stays on the
source's own path, untouched. An INSERT into the outbox table, or a message, becomes one record
on its aggregate type's topic (:class:`~pipeline.sources.outbox.router.OutboxRouter`), inside
its transaction: it is confirmed to the slot with the transaction, so it is published at least
once and in commit order.

UPDATEs and DELETEs of the outbox table are not events: they are counted
(``cdc_outbox_events_total{outcome="ignored_update"|"ignored_delete"}``) and skipped, as
Debezium's router does. That allows Debezium's recommendation of deleting the row in the same
transaction right after inserting it, which keeps the table empty while the insert stays in
the WAL; nothing here deletes rows. A row or message that cannot be routed goes to the
dead-letter topic with the reason (stage ``outbox``).
"""

from __future__ import annotations

import logging
from typing import Any

import orjson

from pipeline.capture.publisher import ensure_topics
from pipeline.capture.source import Item
from pipeline.config import KafkaSettings, OutboxSettings
from pipeline.errors import BadOutboxEvent
from pipeline.metrics import Metrics
from pipeline.positions import Lsn
from pipeline.sources.outbox import exact_json
from pipeline.sources.outbox.router import OutboxEvent, OutboxRouter
from pipeline.sources.postgres.pgoutput import Delete, Insert, Message, Update

log = logging.getLogger(__name__)

_REQUIRED = ("id", "aggregatetype", "aggregateid")


class LogicalOutbox:
    """Routes outbox rows and messages from the WAL to records."""

    def __init__(self, settings: OutboxSettings, router: OutboxRouter, kafka: KafkaSettings,
                 metrics: Metrics) -> None:
        self.settings = settings
        self.table = settings.table
        self.prefix = settings.message_prefix
        self.router = router
        self.kafka = kafka
        self.metrics = metrics
        self.connector = "capture"
        self._topics: set[str] = set()

    def owns(self, table_id: str) -> bool:
        return table_id == self.table

    def change(self, msg: Insert | Update | Delete, row: dict[str, Any] | None, lsn: int,
               out: list[Item]) -> None:
        """A change of the outbox table: an INSERT is an event (``row`` its values)."""
        if type(msg) is not Insert or row is None:
            kind = "ignored_update" if type(msg) is Update else "ignored_delete"
            self.metrics.inc("cdc_outbox_events_total", outcome=kind)
            return
        source = f"table {self.table}"
        missing = [c for c in _REQUIRED if row.get(c) is None]
        if missing:
            self._dead_letter(source, lsn, row, orjson.dumps(row, default=str), BadOutboxEvent(
                f"outbox row without {', '.join(missing)}"), out)
            return
        extra = {p.column: row.get(p.column) for p in self.router.placements}
        event = OutboxEvent(str(row["id"]), str(row["aggregatetype"]),
                            str(row["aggregateid"]), _text(row.get("type")),
                            row.get("payload"), row.get("headers"), extra)
        self._route(event, source, lsn, orjson.dumps(row, default=str), out)

    def message(self, msg: Message, lsn: int, out: list[Item]) -> None:
        """A logical decoding message with the outbox prefix (``pipeline.outbox.emit``)."""
        source = f"message prefix {msg.prefix}"
        try:  # numbers as written: the payload is re-encoded from this
            content = exact_json.loads(msg.content, "outbox message")
        except BadOutboxEvent as exc:
            self._dead_letter(source, lsn, None, msg.content, exc, out)
            return
        missing = [f for f in _REQUIRED if not isinstance(content, dict) or
                   content.get(f) is None]
        if missing:
            self._dead_letter(source, lsn, content if isinstance(content, dict) else None,
                              msg.content, BadOutboxEvent(
                                  f"outbox message without {', '.join(missing)}"), out)
            return
        extra = {p.column: content.get(p.column) for p in self.router.placements}
        event = OutboxEvent(str(content["id"]), str(content["aggregatetype"]),
                            str(content["aggregateid"]), _text(content.get("type")),
                            content.get("payload"), content.get("headers"), extra)
        self._route(event, source, lsn, msg.content, out)

    def _route(self, event: OutboxEvent, source: str, lsn: int, original: bytes,
               out: list[Item]) -> None:
        try:
            record = self.router.route(event)
        except BadOutboxEvent as exc:
            self._dead_letter(source, lsn, {"aggregateid": event.aggregate_id}, original, exc,
                              out)
            return
        self._ensure(record[0])
        out.append(record)
        self.metrics.inc("cdc_outbox_events_total", outcome="routed")

    def _dead_letter(self, source: str, lsn: int, fields: dict[str, Any] | None,
                     original: bytes, error: BadOutboxEvent, out: list[Item]) -> None:
        log.warning("outbox event from %s at %s to the dead-letter topic %s: %s", source,
                    Lsn(lsn), self.router.dead_letter_topic, error)
        aggregate = None if fields is None else fields.get("aggregateid")
        key = None if aggregate is None else str(aggregate).encode()
        record = self.router.dead_letter(source, str(Lsn(lsn)), key, original, error,
                                         self.connector)
        self._ensure(record[0])
        out.append(record)
        self.metrics.inc("cdc_outbox_events_total", outcome="dead_lettered")

    def _ensure(self, topic: str) -> None:
        """Create a topic the first time an event goes to it (aggregate types are data)."""
        if topic not in self._topics:
            ensure_topics(self.kafka, [topic])
            self._topics.add(topic)


def _text(value: Any) -> str | None:
    return None if value is None else str(value)
