"""Snapshot reads encoded around a shared envelope are the bytes encode_value writes."""

from __future__ import annotations

from typing import Any

import pytest

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
