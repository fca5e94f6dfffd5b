"""Encoding snapshot reads (``op: r``) fast: only the row differs from one read to the next.

Every read of one table in one chunk shares its whole envelope but the row: the ``source``
block (same LSN, time and ``snapshot`` marker), the op and the time. The envelope is encoded
once, through the same :func:`pipeline.events.encode_value` as every other event, around a
placeholder row; each read is then that envelope's two halves joined around the row's JSON:
the bytes ``encode_value`` would write for it, without building an event per row.
"""

from __future__ import annotations

import orjson

from pipeline.events import ChangeEvent, Row, SourceInfo, encode_value
from pipeline.sources.postgres.envelope import TableShape

_PLACEHOLDER = {"\x00row": 0}
_PLACEHOLDER_JSON = orjson.dumps(_PLACEHOLDER)


class ReadEncoder:
    """(key, value) bytes of snapshot reads of one database's tables."""

    def __init__(self, server_name: str, db: str) -> None:
        self.server_name = server_name
        self.db = db
        self._halves: dict[tuple[str, str, str, int, int, int], tuple[bytes, bytes]] = {}

    def encode(self, shape: TableShape, after: Row, marker: str, lsn: int, ts_us: int,
               now_ms: int) -> tuple[bytes, bytes]:
        """The key and value of a read of ``after`` (``source.snapshot`` = ``marker``)."""
        return shape.key_json(after), self.value(shape, orjson.dumps(after), marker, lsn,
                                                 ts_us, now_ms)

    def value(self, shape: TableShape, row_json: bytes, marker: str, lsn: int, ts_us: int,
              now_ms: int) -> bytes:
        """The value of a read whose row is already encoded (``orjson.dumps(after)``)."""
        head, tail = self.halves(shape, marker, lsn, ts_us, now_ms)
        return b"".join((head, row_json, tail))  # one copy of a wide row, not two

    def halves(self, shape: TableShape, marker: str, lsn: int, ts_us: int,
               now_ms: int) -> tuple[bytes, bytes]:
        """What a read's value holds before and after its row's JSON."""
        ident = (shape.schema, shape.table, marker, lsn, ts_us, now_ms)
        halves = self._halves.get(ident)
        if halves is None:
            if len(self._halves) > 64:  # one chunk's few markers and times at a time
                self._halves.clear()
            source = SourceInfo(connector="postgresql", name=self.server_name, db=self.db,
                                schema=shape.schema, table=shape.table, ts_us=ts_us, lsn=lsn,
                                commit_lsn=None, snapshot=marker)
            whole = encode_value(ChangeEvent("r", None, None, _PLACEHOLDER, source, now_ms))
            before, found, after = whole.partition(_PLACEHOLDER_JSON)
            assert found, "the placeholder row is encoded as it is on its own"
            halves = self._halves[ident] = (before, after)
        return halves
