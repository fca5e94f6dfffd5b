"""Trigger capture's pure parts: log rows to envelopes, positions, settings, status text."""

from __future__ import annotations

import orjson
import pytest

from pipeline.capture.source import ANY_PARTITION, EVERY_PARTITION
from pipeline.config import TriggerSettings
from pipeline.events import decode
from pipeline.positions import ChangePosition, TriggerLogPosition
from pipeline.sources.postgres.envelope import TableShape
from pipeline.sources.postgres.pgoutput import Column, Relation
from pipeline.sources.triggers.ddl import Blocker, HorizonLag, LogStatus, TriggerLog, render_lag
from pipeline.sources.triggers.rows import LogRow, LogRowEncoder, image, parse_row, unknown_columns

INT4, TEXT, NUMERIC, TIMESTAMPTZ, BYTEA = 23, 25, 1700, 1184, 17

ITEMS = Relation(16500, "shop", "items", "d", (
    Column(True, "id", INT4, -1),
    Column(False, "name", TEXT, -1),
    Column(False, "price", NUMERIC, -1),
    Column(False, "at", TIMESTAMPTZ, -1),
    Column(False, "raw", BYTEA, -1),
))
SHAPE = TableShape.from_relation(ITEMS, ("id",))
ENCODER = LogRowEncoder("shop", "shopdb")
NOW_MS = 1_700_000_000_999


def _row(op: str, old: dict[str, str | None] | None, new: dict[str, str | None] | None,
         lsn: int = 0x1_0000_0A28) -> LogRow:
    return LogRow(id=7, xid=(3 << 32) | 731, lsn=lsn, op=op, schema="shop", table="items",
                  old=old, new=new, captured_at_us=1_700_000_000_654_321)


APPLE = {"id": "1", "name": "apple", "price": "1.50", "at": "2024-01-02 03:04:05.5+00",
         "raw": "\\x00ff"}


def test_an_insert_converts_each_text_value_like_the_logical_source() -> None:
    (event,) = ENCODER.events(_row("c", None, APPLE), SHAPE, NOW_MS)
    assert event.op == "c" and event.key == {"id": 1}
    assert event.after == {"id": 1, "name": "apple", "price": "1.50",
                           "at": "2024-01-02T03:04:05.5Z", "raw": "AP8="}
    assert list(event.after) == ["id", "name", "price", "at", "raw"]  # table order


def test_the_source_block_names_the_table_transaction_and_wal_position() -> None:
    (topic, key, value, partition), = ENCODER.records(_row("c", None, APPLE), SHAPE,
                                                      "p.shop.items", NOW_MS)
    assert (topic, key, partition) == ("p.shop.items", b'{"id":1}', ANY_PARTITION)
    event = decode(key, value)
    assert event is not None
    src = event.source
    assert (src.connector, src.name, src.db, src.schema, src.table) == (
        "postgresql", "shop", "shopdb", "shop", "items")
    assert src.tx_id == 731  # the 32-bit xid, as pgoutput's BEGIN carries it
    assert src.lsn == 0x1_0000_0A28 and src.commit_lsn is None
    assert src.ts_us == 1_700_000_000_654_321
    assert orjson.loads(orjson.loads(value)["source"]["sequence"]) == [None, str(0x1_0000_0A28)]


def test_an_update_carries_the_whole_old_row() -> None:
    newer = {**APPLE, "price": "2.00"}
    (event,) = ENCODER.events(_row("u", APPLE, newer), SHAPE, NOW_MS)
    assert event.op == "u" and event.key == {"id": 1}
    assert event.before is not None and event.before["price"] == "1.50"
    assert event.after is not None and event.after["price"] == "2.00"


def test_a_key_change_is_a_delete_and_a_create_at_one_position() -> None:
    moved = {**APPLE, "id": "2"}
    deleted, created = ENCODER.events(_row("u", APPLE, moved), SHAPE, NOW_MS)
    assert (deleted.op, deleted.key, created.op, created.key) == ("d", {"id": 1}, "c", {"id": 2})
    assert ChangePosition.of(deleted) == ChangePosition.of(created)


def test_a_delete_and_a_truncate() -> None:
    (event,) = ENCODER.events(_row("d", APPLE, None), SHAPE, NOW_MS)
    assert (event.op, event.key, event.after) == ("d", {"id": 1}, None)
    (record,) = ENCODER.records(_row("t", None, None), SHAPE, "p.shop.items", NOW_MS)
    assert record[1] is None and record[3] == EVERY_PARTITION
    assert orjson.loads(record[2])["op"] == "t"


def test_a_row_the_triggers_never_write_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="change log row 7 of shop.items: op 'u'"):
        ENCODER.events(_row("u", None, APPLE), SHAPE, NOW_MS)


def test_columns_dropped_or_added_since_the_change() -> None:
    dropped = {**APPLE, "legacy": "x"}  # a column that existed when the change was made
    assert image(SHAPE, dropped)["legacy"] == "x"
    assert unknown_columns(SHAPE, _row("c", None, dropped))
    added_later = {k: v for k, v in APPLE.items() if k != "raw"}
    assert "raw" not in image(SHAPE, added_later)  # no NULL for a column it did not have
    assert not unknown_columns(SHAPE, _row("c", None, added_later))


def test_later_changes_of_a_row_have_higher_positions_whatever_the_relay_order() -> None:
    """The workers version by the trigger's WAL position, not by the order of relaying."""
    first = ENCODER.events(_row("c", None, APPLE, lsn=100), SHAPE, NOW_MS)[0]
    second = ENCODER.events(_row("u", APPLE, {**APPLE, "name": "b"}, lsn=200), SHAPE,
                            NOW_MS)[0]
    assert ChangePosition.of(first) < ChangePosition.of(second)
    assert first.version < second.version


def test_parse_row_reads_the_json_images() -> None:
    row = parse_row((5, "12884902619", 4096, "c", "shop", "items", None, '{"id": "1"}',
                     1_700_000_000_000_000), orjson.loads)
    assert row.xid == (3 << 32) | 731 and row.new == {"id": "1"} and row.old is None


def test_positions_order_by_round_then_sequence() -> None:
    """A later round may hold lower sequence numbers (a transaction that wrote first and
    committed last): it still comes after."""
    assert TriggerLogPosition(10, 500) < TriggerLogPosition(11, 3) < TriggerLogPosition(11, 4)


def test_log_names_and_settings() -> None:
    log = TriggerLog.of(TriggerSettings(log_schema="cdc", log_table="change_log"))
    assert (log.name, log.row_trigger) == ("cdc.change_log", "cdc__change_log__row")
    with pytest.raises(ValueError, match="lower-case letters"):
        TriggerSettings(log_schema="Bad-Name")
    with pytest.raises(ValueError):
        TriggerSettings(batch_size=0)


def test_status_names_what_holds_the_relay_back() -> None:
    lag = HorizonLag(3, 42.4, Blocker(1234, "idle in transaction", 60.2, "psql"))
    assert render_lag(lag) == ("visibility horizon: 3 committed changes waiting behind an "
                               "open transaction, oldest 42s, held by pid 1234 (psql), idle "
                               "in transaction for 60s")
    assert render_lag(HorizonLag(0, 0.0, None)) == (
        "visibility horizon: no committed change waiting")
    log = TriggerLog("cdc", "change_log")
    text = LogStatus(True, ("s.a",), ("s.b",), 5, lag).render(log)
    assert "5 rows not yet relayed" in text and "listed but without triggers: s.b" in text
    assert "not installed" in LogStatus(False).render(log)
