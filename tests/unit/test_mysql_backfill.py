"""The binlog source's backfill window: signal rows and watermarks read from the stream,
chunk rows the stream changed left to it, progress kept until confirmed (no servers)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from pipeline.capture.source import ANY_PARTITION, Checkpoint
from pipeline.config import KafkaSettings, MysqlSettings
from pipeline.metrics import Metrics
from pipeline.positions import BinlogPosition
from pipeline.sources.mysql.backfill import CLOSE, OPEN, Backfills, _Window
from pipeline.sources.mysql.envelope import EnvelopeWriter, TableImage
from pipeline.sources.mysql.reader import SignalRow

TOPIC = "p.app.items"
IMAGE = TableImage("app", "items", {"id": None, "name": None}, ("id",))


class _Reader:
    """What the window needs of a TableReader: rows as the chunk read them."""

    image = IMAGE

    def row(self, values: tuple[Any, ...]) -> dict[str, Any]:
        return {"id": values[0], "name": values[1]}


def _backfills(monkeypatch: pytest.MonkeyPatch) -> tuple[Backfills, list[dict[str, Any]]]:
    settings = MysqlSettings(tables=("app.items",), signal_table="app.cdc_signal")
    b = Backfills(settings, KafkaSettings(), Metrics("test"), {"app.items": TOPIC},
                  EnvelopeWriter("mariadb", "maria"))
    saved: list[dict[str, Any]] = []
    monkeypatch.setattr(b.store, "save", saved.append)
    monkeypatch.setattr(b.store, "flush", lambda: 0)
    monkeypatch.setattr(b, "_estimate", lambda entry: None)
    return b, saved


def _window(b: Backfills, *ids: int) -> None:
    b.window = _Window("m1", "app.items", TOPIC, _Reader(),  # type: ignore[arg-type]
                       [(i, f"read {i}") for i in ids], [ids[-1]] if ids else None)


def _signal(kind: str, signal_id: str, pos: int, data: Any = None) -> SignalRow:
    return SignalRow({"id": signal_id, "type": kind,
                      "data": None if data is None else orjson.dumps(data).decode()},
                     "mysql-bin.000002", pos, 1_700_000_000,
                     BinlogPosition("mysql-bin.000002", pos, 1))


def _key(i: int) -> bytes:
    return orjson.dumps({"id": i})


def _start(b: Backfills, chunk_size: int = 3) -> None:
    b.route([_signal("execute-snapshot", "s1", 100,
                     {"data-collections": ["app.items"], "chunk-size": chunk_size})])
    assert [t.table for t in b.tables] == ["app.items"]


def test_a_change_in_the_window_leaves_its_key_to_the_stream(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    b, saved = _backfills(monkeypatch)
    _start(b)
    _window(b, 1, 2, 3)
    change = (TOPIC, _key(2), b'{"op":"u"}', ANY_PARTITION)
    other = ("p.app.other", _key(3), b'{"op":"u"}', ANY_PARTITION)
    out = b.route([change, other, _signal(OPEN, "m1-open", 200),
                   _signal(CLOSE, "m1-close", 300),
                   Checkpoint(BinlogPosition("mysql-bin.000002", 300, 1))])
    published = [item for item in out if not isinstance(item, Checkpoint)]
    assert published[:2] == [change, other]
    reads = [(item[1], orjson.loads(item[2])) for item in published[2:]]  # type: ignore[index,arg-type]
    assert [k for k, _ in reads] == [_key(1), _key(3)]
    source = reads[0][1]["source"]
    assert (reads[0][1]["op"], source["snapshot"], source["pos"]) == ("r", "incremental", 300)
    assert b.window is None
    entry = b.tables[0]
    assert (entry.rows, entry.chunks, entry.after, entry.state) == (2, 1, [3], "running")
    # Saved only once the position after the chunk's rows is confirmed.
    b.confirmed(BinlogPosition("mysql-bin.000002", 299))
    assert saved and saved[-1]["tables"][0]["rows"] == 0  # the signal's state only
    b.confirmed(BinlogPosition("mysql-bin.000002", 300, 1))
    assert saved[-1]["tables"][0]["rows"] == 2


def test_a_truncate_in_the_window_publishes_nothing_of_the_chunk(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    b, _ = _backfills(monkeypatch)
    _start(b)
    _window(b, 1, 2)
    out = b.route([(TOPIC, None, b'{"op":"t"}', ANY_PARTITION),
                   _signal(CLOSE, "m1-close", 300)])
    assert len(out) == 1
    assert b.tables[0].state == "done"  # fewer rows than a chunk: the table's last


def test_the_watermark_of_an_abandoned_chunk_is_ignored(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    b, _ = _backfills(monkeypatch)
    _start(b)
    _window(b, 1, 2, 3)
    assert b.route([_signal(CLOSE, "old-close", 300)]) == []
    assert b.window is not None


def test_signals_for_uncaptured_tables_are_refused_and_each_id_applies_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    b, _ = _backfills(monkeypatch)
    b.route([_signal("execute-snapshot", "s9", 100, {"data-collections": ["app.nope"]}),
             _signal("nonsense", "s10", 110)])
    assert b.tables == []
    _start(b)
    b.route([_signal("stop-snapshot", "s2", 400, {}), _signal("stop-snapshot", "s2", 400, {})])
    assert b.tables[0].state == "stopped"
    _start(b)  # s1 again: already applied, nothing new
    assert b.tables[0].state == "stopped"


def test_the_signal_table_cannot_also_be_captured() -> None:
    with pytest.raises(ValueError, match="also in mysql.tables"):
        MysqlSettings(tables=("app.items", "app.sig"), signal_table="app.sig")
