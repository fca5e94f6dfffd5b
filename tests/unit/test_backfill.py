"""Backfill signals, the window's bookkeeping and the status line (no servers)."""

from __future__ import annotations

import time

import orjson
import pytest

from pipeline.config import KafkaSettings, PostgresSettings
from pipeline.events import UNAVAILABLE_VALUE
from pipeline.metrics import Metrics
from pipeline.sources.postgres.backfill import Backfills, _Window
from pipeline.sources.postgres.backfill_control import render
from pipeline.sources.postgres.envelope import TableShape
from pipeline.sources.postgres.signals import Signal, SignalError, from_message, parse
from pipeline.sources.postgres.unconverted import UnconvertedValues


def test_debezium_execute_snapshot_signal_is_read() -> None:
    data = {"data-collections": ["public.a", "public.b"], "type": "INCREMENTAL",
            "additional-conditions": [{"data-collection": "public.a", "filter": "id > 5"}]}
    signal = parse("execute-snapshot", orjson.dumps(data).decode(), "s1")
    assert signal.tables == ("public.a", "public.b")
    assert signal.conditions == {"public.a": "id > 5"}
    assert signal.id == "s1"


def test_a_signal_survives_its_own_encoding() -> None:
    sent = Signal("execute-snapshot", ("public.a",), {"public.a": "x = 'y'"}, 10, "id-1")
    assert from_message(sent.to_json()) == sent


@pytest.mark.parametrize(("kind", "data", "reason"), [
    ("execute-snapshot", "{}", "names no table"),
    ("execute-snapshot", '{"data-collections": ["a.b"], "type": "blocking"}', "only"),
    ("execute-snapshot", "not json", "not JSON"),
    ("explode", "{}", "unknown signal type"),
    ("execute-snapshot", '{"data-collections": ["a.b"], "chunk-size": 0}', "chunk-size"),
])
def test_signals_capture_cannot_act_on_say_why(kind: str, data: str, reason: str) -> None:
    with pytest.raises(SignalError, match=reason):
        parse(kind, data)


def _backfills() -> Backfills:
    pg = PostgresSettings(tables=("public.t",))
    return Backfills(pg, KafkaSettings(), Metrics("test"), "", UnconvertedValues())


def _window(rows: dict[bytes, dict]) -> _Window:
    shape = TableShape(1, "public", "t", ("id", "note", "qty"), (None, None, None), ("id",))
    return _Window("m", "public.t", shape, rows, set(rows), None, len(rows))


def _value(op: str, after: dict | None) -> bytes:
    return orjson.dumps({"before": None, "after": after, "op": op})


def test_a_change_inside_the_window_takes_its_key_out_of_the_chunk() -> None:
    b = _backfills()
    b.window = _window({b'{"id":1}': {"id": 1}, b'{"id":2}': {"id": 2}})
    b.changed(b'{"id":1}', "u", _value("u", {"id": 1}))
    b.changed(b'{"id":9}', "c", _value("c", {"id": 9}))  # not in the chunk: ignored
    assert b.window.pending == {b'{"id":2}'}
    b.truncated("public.t")
    assert b.window.pending == set()


def test_unchanged_toast_values_are_filled_from_the_newest_version_held() -> None:
    b = _backfills()
    key = b'{"id":1}'
    b.window = _window({key: {"id": 1, "note": "read", "qty": 1}})
    first = b.changed(key, "u", _value("u", {"id": 1, "note": UNAVAILABLE_VALUE, "qty": 2}))
    assert orjson.loads(first)["after"] == {"id": 1, "note": "read", "qty": 2}
    # A later change of the TOAST value in the window, then one that leaves it unchanged:
    b.changed(key, "u", _value("u", {"id": 1, "note": "newer", "qty": 3}))
    third = b.changed(key, "u", _value("u", {"id": 1, "note": UNAVAILABLE_VALUE, "qty": 4}))
    assert orjson.loads(third)["after"]["note"] == "newer"
    # After a delete nothing is known any more: the placeholder stays for the sink.
    b.changed(key, "d", _value("d", None))
    fourth = _value("c", {"id": 1, "note": UNAVAILABLE_VALUE, "qty": 5})
    assert b.changed(key, "c", fourth) == fourth


def test_the_status_line_shows_progress_rate_and_eta() -> None:
    now = time.time()
    state = {"tables": [
        {"table": "public.t", "chunk_size": 10, "rows": 500, "estimate": 1000,
         "state": "running", "started_at": now - 10, "updated_at": now},
        {"table": "public.u", "chunk_size": 10, "rows": 7, "estimate": None,
         "state": "failed", "error": "boom", "started_at": now - 1, "updated_at": now},
    ]}
    text = render(state)
    assert "public.t" in text and " 50.0%" in text and "50 rows/s" in text and "ETA" in text
    assert "failed: boom" in text
    assert "no backfill" in render({})
