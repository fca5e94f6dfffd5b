"""Backfill signals, the window's bookkeeping and the status line (no servers)."""

from __future__ import annotations

import time

import orjson
import pytest

from pipeline.capture.signals import filter_problem
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
    # a filter that would not stay one condition inside the chunk query's parentheses
    ("execute-snapshot", '{"data-collections": ["a.b"], "additional-conditions": '
     '[{"data-collection": "a.b", "filter": "id > 3) or (true"}]}', "closes more"),
])
def test_signals_capture_cannot_act_on_say_why(kind: str, data: str, reason: str) -> None:
    with pytest.raises(SignalError, match=reason):
        parse(kind, data)


@pytest.mark.parametrize(("where", "problem"), [
    ("id > 3", None),
    ("(a > 1 AND (b < 2)) OR c IN (1, 2)", None),
    ("name = 'a)b' AND note = \"x\"\"y)\" AND `we(ird` = 1", None),  # quoted: skipped
    ("name = 'it''s'", None),  # a doubled quote
    ("path = 'C:\\dir' AND body->>'k' ~ '^a(b)' AND j ?| array['x']", None),
    ("id > 3 # (\n) OR (true # )", "comment"),  # MariaDB's comments hide parentheses
    ("x = 'a\\' ) OR (true OR x = 'y'", "not closed"),  # PostgreSQL: 'a\' ends there
    ("body = $$it's$$", "'$'"),
    ("id > 3) OR (true", "closes more than it opens"),
    ("id IN (1, 2", "not closed"),
    ("name = 'open", "quote is not closed"),
    ("id > 1; DROP TABLE t", "';'"),
    ("id > 1 -- note", "comment"),
    ("id > 1 /* ) */", "comment"),
    ("  ", "empty"),
])
def test_a_filter_must_stay_one_condition(where: str, problem: str | None) -> None:
    found = filter_problem(where)
    assert found is None if problem is None else problem in (found or ""), found


def _backfills() -> Backfills:
    pg = PostgresSettings(tables=("public.t",))
    return Backfills(pg, KafkaSettings(), Metrics("test"), "", UnconvertedValues())


SHAPE = TableShape(1, "public", "t", ("id", "note", "qty"), (None, None, None), ("id",))


def _window(*rows: tuple[str, str, str]) -> _Window:
    return _Window("m", "public.t", SHAPE, [list(r) for r in rows], None)


def _value(op: str, after: dict | None) -> bytes:
    return orjson.dumps({"before": None, "after": after, "op": op})


def _published(b: Backfills) -> list[bytes]:
    assert b.window is not None
    b.window.phase = "emitting"
    out = []
    while b.window is not None and b.window.phase == "emitting":
        out += [item[1] for item in b.step(1, 0)]  # type: ignore[index]
        if b.window.phase == "ending":
            break
    return out


def test_a_change_inside_the_window_takes_its_key_out_of_the_chunk(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    b = _backfills()
    monkeypatch.setattr(b, "_emit", lambda content: None)
    b.window = _window(("1", "a", "1"), ("2", "b", "2"), ("3", "c", "3"))
    b.changed(b'{"id":"1"}', "u", _value("u", {"id": "1"}))
    b.changed(b'{"id":"9"}', "c", _value("c", {"id": "9"}))  # not in the chunk: harmless
    assert _published(b) == [b'{"id":"2"}', b'{"id":"3"}']


def test_a_truncate_inside_the_window_publishes_nothing_of_the_chunk(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    b = _backfills()
    monkeypatch.setattr(b, "_emit", lambda content: None)
    b.window = _window(("1", "a", "1"), ("2", "b", "2"))
    b.truncated("public.t")
    assert _published(b) == []


def test_unchanged_toast_values_are_filled_from_the_newest_version_held() -> None:
    b = _backfills()
    key = b'{"id":"1"}'
    b.window = _window(("1", "read", "1"))
    first = b.changed(key, "u", _value("u", {"id": "1", "note": UNAVAILABLE_VALUE, "qty": 2}))
    assert orjson.loads(first)["after"] == {"id": "1", "note": "read", "qty": 2}
    # A later change of the TOAST value in the window, then one that leaves it unchanged:
    b.changed(key, "u", _value("u", {"id": "1", "note": "newer", "qty": 3}))
    third = b.changed(key, "u", _value("u", {"id": "1", "note": UNAVAILABLE_VALUE, "qty": 4}))
    assert orjson.loads(third)["after"]["note"] == "newer"
    # After a delete nothing is known any more: the placeholder stays for the sink.
    b.changed(key, "d", _value("d", None))
    fourth = _value("c", {"id": "1", "note": UNAVAILABLE_VALUE, "qty": 5})
    assert b.changed(key, "c", fourth) == fourth


def test_a_full_change_before_the_row_is_converted_still_feeds_a_later_fill() -> None:
    b = _backfills()
    key = b'{"id":"2"}'
    b.window = _window(("1", "a", "1"), ("2", "read", "2"))
    b.changed(key, "u", _value("u", {"id": "2", "note": "changed", "qty": 2}))
    later = b.changed(key, "u", _value("u", {"id": "2", "note": UNAVAILABLE_VALUE, "qty": 3}))
    assert orjson.loads(later)["after"]["note"] == "changed"


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
