"""The new-record-state sink (Debezium's ExtractNewRecordState): rows, not envelopes."""

from __future__ import annotations

import orjson
import pytest

from pipeline.config import load_settings
from pipeline.errors import ConfigError
from pipeline.events import ChangeEvent, SourceInfo
from pipeline.sinks.flattened import NewRecordStateSink, flattened
from pipeline.sinks.registry import build_configured
from pipeline.teardown import owned_topics

SOURCE = SourceInfo(connector="postgresql", name="shop", db="db", schema="public",
                    table="items", ts_us=1, lsn=100)
ROW = {"id": 1, "name": "apple"}


def _event(op: str) -> ChangeEvent:
    before = ROW if op in ("u", "d") else None
    after = None if op in ("d", "t") else {**ROW, "name": "pear"}
    return ChangeEvent(op, None if op == "t" else {"id": 1}, before, after, SOURCE)


def _row(event: ChangeEvent, mode: str = "rewrite") -> object:
    keep, value = flattened(event, mode)
    return (keep, None if value is None else orjson.loads(value))


def test_creates_updates_and_reads_become_the_new_row_with_op_and_deleted() -> None:
    for op in ("c", "u", "r"):
        assert _row(_event(op)) == (True, {"id": 1, "name": "pear", "__op": op,
                                           "__deleted": "false"})


def test_deletes_are_rewritten_tombstoned_or_dropped_as_asked() -> None:
    assert _row(_event("d")) == (True, {"id": 1, "name": "apple", "__op": "d",
                                        "__deleted": "true"})
    assert _row(_event("d"), "tombstone") == (True, None)
    assert _row(_event("d"), "drop") == (False, None)


def test_truncates_carry_no_row_and_are_not_written() -> None:
    assert _row(_event("t")) == (False, None)


def _settings(tmp_path, sink: str):  # type: ignore[no-untyped-def]
    path = tmp_path / "cdc.yaml"
    path.write_text("postgres:\n  tables: [public.items]\nkafka:\n  topic_prefix: shop\n"
                    "  bootstrap_servers: '127.0.0.1:1'\n" + sink)
    return load_settings(path, {})


def test_configured_by_type_and_written_next_to_the_raw_topic(tmp_path) -> None:
    settings = _settings(tmp_path, "sinks:\n  rows: {type: new_record_state}\n")
    sink = build_configured(settings)["rows"]
    assert isinstance(sink, NewRecordStateSink)
    assert sink.topic_for(_event("c")) == "shop.public.items.rows"
    assert "shop.public.items.rows" in owned_topics(settings)  # teardown --topics knows it


def test_a_misspelled_setting_is_refused(tmp_path) -> None:
    settings = _settings(tmp_path, "sinks:\n  rows: {type: new_record_state, "
                                   "delete_handing: drop}\n")
    with pytest.raises(ConfigError, match="did you mean 'sinks.rows.delete_handling'"):
        build_configured(settings)
