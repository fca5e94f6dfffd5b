"""Snapshot reads encoded around a shared envelope are the bytes encode_value writes."""

from __future__ import annotations

from typing import Any

import pytest

from pipeline.capture.source import ANY_PARTITION
from pipeline.events import ChangeEvent, SourceInfo, encode_key, encode_value
from pipeline.sources.postgres.envelope import TableShape
from pipeline.sources.postgres.reads import ReadEncoder

SHAPE = TableShape(1, "public", "t", ("id", "name", "doc"), (None, None, None), ("id",))


@pytest.mark.parametrize("after", [
    {"id": 1, "name": "a", "doc": None},
    {"id": -(2**62), "name": "\U0001f600 \x00 \"quoted\" {\x00row}", "doc": {"k": [1, 2]}},
    {"id": 0, "name": "", "doc": "x" * 10_000},
])
@pytest.mark.parametrize("marker", ["first", "true", "last", "incremental"])
def test_a_read_is_what_encode_value_writes(after: dict[str, Any], marker: str) -> None:
    encoder = ReadEncoder("srv", "db")
    key, value = encoder.encode(SHAPE, after, marker, 123456, 1_700_000_000_000_000, 42)
    source = SourceInfo(connector="postgresql", name="srv", db="db", schema="public",
                        table="t", ts_us=1_700_000_000_000_000, lsn=123456, snapshot=marker)
    event = ChangeEvent("r", {"id": after["id"]}, None, after, source, 42)
    assert value == encode_value(event)
    assert key == encode_key(event)


def test_a_chunk_encoded_in_one_loop_is_each_read_encoded_alone() -> None:
    """``TableShape.reads`` (the snapshot's compiled loop over a chunk's middle rows) gives
    the records :meth:`ReadEncoder.encode` gives for each row, in order, from ``start`` up to
    ``stop`` only."""
    shape = TableShape(1, "public", "t", ("id", "name", "doc"), (int, None, None), ("id",))
    rows = [("1", "a", None), ("-4611686018427387904", "\U0001f600 \x00 {\x00row}", "x" * 9_000),
            ("0", "", "{}"), ("7", None, "last")]
    encoder = ReadEncoder("srv", "db")
    head, tail = encoder.halves(shape, "true", 99, 1_700_000_000_000_000, 42)
    records = shape.reads(rows, 1, 3, "srv.public.t", head, tail)
    expected = [encoder.encode(shape, shape.row(r), "true", 99, 1_700_000_000_000_000, 42)
                for r in rows[1:3]]
    assert [(t, k, v) for t, k, v, _p in records] == [("srv.public.t", k, v)
                                                       for k, v in expected]
    assert all(p == ANY_PARTITION for *_r, p in records)  # the key chooses the partition
    assert shape.reads(rows, 2, 2, "srv.public.t", head, tail) == []
