"""A signal row is acted on at a stream position past its transaction's commit, never at its
own LSN: a transaction open for long leaves that below records read before it."""

from __future__ import annotations

import struct
from typing import Any

from pipeline.config import KafkaSettings, PostgresSettings
from pipeline.metrics import Metrics
from pipeline.sources.postgres.envelope import ChangeBuilder, EnvelopeWriter
from pipeline.sources.postgres.source import PostgresSource

SIGNALS = 16500


def _begin(final_lsn: int, xid: int) -> bytes:
    return b"B" + struct.pack("!QqI", final_lsn, 0, xid)


def _relation() -> bytes:
    columns = b"".join(struct.pack("!B", 1 if name == "id" else 0) + name + b"\0"
                       + struct.pack("!Ii", 25, -1) for name in (b"id", b"type", b"data"))
    return (b"R" + struct.pack("!I", SIGNALS) + b"public\0sig\0" + b"d"
            + struct.pack("!h", 3) + columns)


def _insert(*values: bytes) -> bytes:
    return (b"I" + struct.pack("!I", SIGNALS) + b"N" + struct.pack("!h", len(values))
            + b"".join(b"t" + struct.pack("!i", len(v)) + v for v in values))


def _commit(commit_lsn: int, end_lsn: int) -> bytes:
    return b"C" + struct.pack("!BQQq", 0, commit_lsn, end_lsn, 0)


def test_a_signal_row_stands_past_its_transactions_commit() -> None:
    source = PostgresSource(
        PostgresSettings(tables=("public.t",), signal_table="public.sig"),
        KafkaSettings(bootstrap_servers="127.0.0.1:1"), Metrics("t"))
    source.writer = EnvelopeWriter("p", "db")  # (open() sets these up)
    source.builder = ChangeBuilder("p", "db")
    acted: list[tuple[str, Any]] = []
    source.backfills.signal = lambda signal, position, listed: acted.append(  # type: ignore[method-assign]
        (signal.kind, position))
    # began at 0x150, long before it committed at 0x600 (after a chunk's high watermark)
    source._handle(_begin(0x600, 700), 0x150)
    source._handle(_relation(), 0x150)
    source._handle(_insert(b"s1", b"pause-snapshot", b"{}"), 0x150)
    source._handle(_commit(0x600, 0x610), 0x610)
    assert acted == [("pause-snapshot", 0x601)]
