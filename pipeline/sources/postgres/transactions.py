"""Transaction metadata, as Debezium's ``provide.transaction.metadata`` writes it.

Every event of a transaction gets a ``transaction`` block (``id``, ``total_order``: its place
in the transaction, ``data_collection_order``: its place among the transaction's events of
the same table), and the transaction topic gets a BEGIN record before the transaction's
events and an END record after them, with event counts per table. The id is
``<xid>:<commit LSN>`` (a transaction id alone wraps around).
"""

from __future__ import annotations

from typing import Any

import orjson

from pipeline.capture.source import ANY_PARTITION, Item

_NULL_TAIL = b"null}"


class TransactionMetadata:
    """Counts one transaction's events and stamps their envelopes."""

    __slots__ = ("id", "commit_ts_us", "total", "per_table", "_key")

    def __init__(self, txn_id: str, commit_ts_us: int) -> None:
        self.id = txn_id
        self.commit_ts_us = commit_ts_us
        self.total = 0
        self.per_table: dict[str, int] = {}
        self._key = orjson.dumps({"id": txn_id})

    def stamp(self, value: bytes, table_id: str) -> bytes:
        """``value`` (an envelope ending in ``"transaction":null}``) with the block set."""
        self.total += 1
        order = self.per_table[table_id] = self.per_table.get(table_id, 0) + 1
        if not value.endswith(_NULL_TAIL):
            raise ValueError("envelope does not end with its transaction field")
        block = orjson.dumps({"id": self.id, "total_order": self.total,
                              "data_collection_order": order})
        return value[: -len(_NULL_TAIL)] + block + b"}"

    def begin(self, out: list[Item], topic: str) -> None:
        out.append((topic, self._key, self._record("BEGIN", None, None), ANY_PARTITION))

    def end(self, out: list[Item], topic: str) -> None:
        collections = [{"data_collection": table, "event_count": count}
                       for table, count in self.per_table.items()]
        out.append((topic, self._key, self._record("END", self.total, collections),
                    ANY_PARTITION))

    def _record(self, status: str, count: int | None, collections: Any) -> bytes:
        return orjson.dumps({"status": status, "id": self.id,
                             "ts_ms": self.commit_ts_us // 1000, "event_count": count,
                             "data_collections": collections})
