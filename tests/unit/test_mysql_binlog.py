"""The binlog source's pure parts: positions, the binlog LSN, value conversion, and how the
decoder follows transactions, checkpoints and skips what a restart already published."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from pymysqlreplication.constants import FIELD_TYPE
from pymysqlreplication.event import (
    GtidEvent,
    MariadbGtidEvent,
    QueryEvent,
    RotateEvent,
    XAPrepareEvent,
    XidEvent,
)
from pymysqlreplication.row_event import TableMapEvent, UpdateRowsEvent, WriteRowsEvent

from pipeline.capture.source import EVERY_PARTITION, Checkpoint
from pipeline.config import load_settings
from pipeline.errors import ConfigError
from pipeline.positions import BinlogPosition, binlog_lsn
from pipeline.sources.mysql import values
from pipeline.sources.mysql.envelope import EnvelopeWriter, truncated_table
from pipeline.sources.mysql.reader import BinlogDecoder
from pipeline.sources.mysql.xa import outcome

FILE = "mysql-bin.000007"


def test_positions_order_by_file_number_then_place() -> None:
    assert BinlogPosition("b.000009", 900) < BinlogPosition("b.000010", 4)
    assert BinlogPosition("b.999999", 4) < BinlogPosition("b.1000000", 4)  # not by text
    assert BinlogPosition(FILE, 100, 2, 0) < BinlogPosition(FILE, 100, 2, 1)
    assert BinlogPosition(FILE, 100, 9, 9) < BinlogPosition(FILE, 101)
    saved = BinlogPosition(FILE, 100, 2, 3, "0-1-5,1-2-9")
    assert BinlogPosition.from_dict(orjson.loads(orjson.dumps(saved.to_dict()))) == saved
    with pytest.raises(ValueError, match="not a binlog position"):
        BinlogPosition.from_dict({"file": "nodigits", "pos": 4})


def test_binlog_lsn_follows_binlog_order_within_63_bits() -> None:
    assert binlog_lsn(FILE, 1000, 0) < binlog_lsn(FILE, 1000, 1) < binlog_lsn(FILE, 2000)
    assert binlog_lsn(FILE, 2**32 - 1) < binlog_lsn("mysql-bin.000008", 4)
    assert binlog_lsn("x.8388607", 2**40 - 1) == 2**63 - 1
    with pytest.raises(ValueError):
        binlog_lsn("x.8388608", 4)


@pytest.mark.parametrize("query,db,table", [
    ("TRUNCATE TABLE shop.items", "", "shop.items"),
    ("truncate `shop`.`it``ems`", "x", "shop.it`ems"),
    ("TRUNCATE items", "shop", "shop.items"),
    ("TRUNCATE items", "", None),
    ("ALTER TABLE items ADD c INT", "shop", None),
    # the binlog keeps the statement as written: its comments too
    ("/* hi */ TRUNCATE TABLE items", "shop", "shop.items"),
    ("TRUNCATE TABLE items -- why", "shop", "shop.items"),
    ("TRUNCATE TABLE items # why", "shop", "shop.items"),
    ("TRUNCATE /* a\nb */ TABLE shop.items /* c */;", "", "shop.items"),
    ("TRUNCATE TABLE items\n-- why\n;", "shop", "shop.items"),
    ("/*!40000 TRUNCATE TABLE items */", "shop", "shop.items"),  # executable: it runs
    ("TRUNCATE TABLE `a#b`.`c--d /*e*/`", "", "a#b.c--d /*e*/"),  # names keep theirs
    ("DELETE FROM items -- TRUNCATE TABLE items", "shop", None),
    ("/* TRUNCATE TABLE items */ DELETE FROM items", "shop", None),
])
def test_truncate_statements(query: str, db: str, table: str | None) -> None:
    assert truncated_table(query, db) == table


def _column(kind: int, **attrs: Any) -> Any:
    return SimpleNamespace(type=kind, name="c", **attrs)


def test_values_as_debezium_writes_them() -> None:
    assert values.converter(_column(FIELD_TYPE.NEWDECIMAL))(Decimal("0E-10")) == "0.0000000000"
    assert values.converter(_column(FIELD_TYPE.FLOAT))(0.10000000149011612) == 0.1
    assert values.converter(_column(FIELD_TYPE.BIT, bits=1))("1") is True
    assert values.converter(_column(FIELD_TYPE.BIT, bits=12))("000100000001") == "AQE="
    assert values.converter(_column(FIELD_TYPE.SET, set_values=["a", "b", "c"]))(
        {"c", "a"}) == "a,c"
    assert values.converter(_column(FIELD_TYPE.TIMESTAMP2, fsp=3))(
        dt.datetime(2024, 1, 1, 0, 0, 0, 500000)) == "2024-01-01T00:00:00.500Z"
    assert values.converter(_column(FIELD_TYPE.DATETIME2, fsp=0))(
        dt.datetime(1970, 1, 2)) == 86_400_000
    assert values.converter(_column(FIELD_TYPE.DATETIME2, fsp=6))(
        dt.datetime(1970, 1, 1, 0, 0, 0, 7)) == 7
    assert values.converter(_column(FIELD_TYPE.TIME2, fsp=0))(
        dt.timedelta(hours=-1)) == -3_600_000_000
    assert values.converter(_column(FIELD_TYPE.DATE))(dt.date(1969, 12, 31)) == -1
    assert values.converter(_column(FIELD_TYPE.BLOB))(b"\x00\xff") == "AP8="
    assert values.converter(_column(FIELD_TYPE.BLOB))("text") == "text"
    assert values.converter(_column(FIELD_TYPE.GEOMETRY))(
        b"\xe6\x10\x00\x00\x01") == {"wkb": "AQ==", "srid": 4326}
    assert values.converter(_column(FIELD_TYPE.LONGLONG)) is None
    # BINARY(4): the binlog leaves out trailing zero bytes the column holds (all of them:
    # the library hands over ""); CHAR(4) text stays as it is
    fixed = values.converter(_column(FIELD_TYPE.STRING, max_length=4,
                                     character_set_name="binary"))
    assert (fixed(b"A"), fixed(""), fixed(b"ABCD")) == ("QQAAAA==", "AAAAAA==", "QUJDRA==")
    text = values.converter(_column(FIELD_TYPE.STRING, max_length=16,
                                    character_set_name="utf8mb4"))
    assert text("ab") == "ab" and text("") == ""
    # a negative TIME with a fraction: the library reads -(S + f) as -(S + 1) + f
    time6 = values.converter(_column(FIELD_TYPE.TIME2, fsp=6))
    assert time6(dt.timedelta(seconds=-3600.9)) == -3_600_100_000
    assert time6(dt.timedelta(microseconds=-999_999)) == -1
    assert time6(dt.timedelta(seconds=-2)) == -2_000_000  # no fraction: as read
    assert time6(dt.timedelta(seconds=0.5)) == 500_000
    # YEAR 0000 comes from the library as 1900, a year no YEAR column holds
    year = values.converter(_column(FIELD_TYPE.YEAR))
    assert (year(1900), year(1901), year(2155)) == (0, 1901, 2155)


# -- the decoder, on events built without a server ------------------------------------
def _event(cls: type, start: int, size: int = 50, **attrs: Any) -> Any:
    event = cls.__new__(cls)
    event.packet = SimpleNamespace(log_pos=start + size, event_size=size, server_id=1)
    event.timestamp = 1_700_000_000
    for name, value in attrs.items():
        setattr(event, name, value)
    return event


COLUMNS = [SimpleNamespace(name="id", type=FIELD_TYPE.LONG),
           SimpleNamespace(name="name", type=FIELD_TYPE.VARCHAR)]


def _table_map(start: int) -> Any:
    return _event(TableMapEvent, start, table_id=11, schema="shop", table="items",
                  null_bitmask=b"\x02", columns=COLUMNS, optional_metadata=SimpleNamespace(
                      column_name_list=["id", "name"], simple_primary_key_list=[0],
                      primary_keys_with_prefix={}))


def _writes(start: int, ids: list[int], table: str = "items") -> Any:
    event = _event(WriteRowsEvent, start, 100, schema="shop", table=table, table_id=11,
                   columns=COLUMNS)
    event._RowsEvent__rows = [{"values": {"id": i, "name": f"n{i}"}} for i in ids]
    return event


def _transaction(first_ids: list[int], second_ids: list[int]) -> list[Any]:
    """GTID at 1000; table map; two rows events (1100, 1200); XID ending at 1350."""
    return [
        _event(RotateEvent, 0, next_binlog=FILE),
        _event(MariadbGtidEvent, 1000, gtid="0-1-42", flags=0),
        _table_map(1050),
        _writes(1100, first_ids),
        _table_map(1150),
        _writes(1200, second_ids),
        _event(XidEvent, 1300),
    ]


def _decoder(start: BinlogPosition) -> BinlogDecoder:
    return BinlogDecoder(start, {"shop.items": "cdc.shop.items"},
                         EnvelopeWriter("mariadb", "srv"), tombstones=True, track_gtids=True)


def _feed(decoder: BinlogDecoder, events: list[Any]) -> list[Any]:
    return [item for event in events for item in decoder.feed(event, 5)]


def test_a_transaction_checkpoints_after_each_rows_event_and_at_its_end() -> None:
    items = _feed(_decoder(BinlogPosition(FILE, 1000, gtids="0-1-41,1-5-3")),
                  _transaction([1, 2], [3]))
    records = [i for i in items if isinstance(i, tuple)]
    checkpoints = [i.position for i in items if isinstance(i, Checkpoint)]
    assert checkpoints == [
        BinlogPosition(FILE, 1000, 1, 0, "0-1-41,1-5-3"),
        BinlogPosition(FILE, 1000, 2, 0, "0-1-41,1-5-3"),
        BinlogPosition(FILE, 1350, 0, 0, "0-1-42,1-5-3"),
    ]
    sources = [orjson.loads(value)["source"] for _, _, value, _ in records]
    assert [(s["pos"], s["row"], s["gtid"]) for s in sources] == [
        (1100, 0, "0-1-42"), (1100, 1, "0-1-42"), (1200, 0, "0-1-42")]
    assert [s["lsn"] for s in sources] == [binlog_lsn(FILE, 1100), binlog_lsn(FILE, 1100, 1),
                                           binlog_lsn(FILE, 1200)]
    assert [key for _, key, _, _ in records] == [b'{"id":1}', b'{"id":2}', b'{"id":3}']


def test_a_restart_inside_a_transaction_skips_what_was_published() -> None:
    """Saved after the first rows event and one row of the second: only the rest comes."""
    items = _feed(_decoder(BinlogPosition(FILE, 1000, 1, 1)), _transaction([1, 2], [3, 4]))
    keys = [key for key, *_ in (i[1:] for i in items if isinstance(i, tuple))]
    assert keys == [b'{"id":4}']
    # The next transaction is read whole.
    decoder = _decoder(BinlogPosition(FILE, 1000, 1, 1))
    _feed(decoder, _transaction([1, 2], [3, 4]))
    again = _feed(decoder, _transaction([5], [6])[1:])
    assert [i[1] for i in again if isinstance(i, tuple)] == [b'{"id":5}', b'{"id":6}']


def test_uncaptured_tables_move_the_position_without_records() -> None:
    events = _transaction([1], [2])
    events[3] = _writes(1100, [1], table="other")
    items = _feed(_decoder(BinlogPosition(FILE, 1000)), events)
    assert [i[1] for i in items if isinstance(i, tuple)] == [b'{"id":2}']
    assert isinstance(items[-1], Checkpoint) and items[-1].position.pos == 1350


def test_a_key_change_is_a_delete_then_a_create() -> None:
    update = _event(UpdateRowsEvent, 1100, 100, schema="shop", table="items", table_id=11,
                    columns=COLUMNS)
    update._RowsEvent__rows = [{"before_values": {"id": 1, "name": "a"},
                                "after_values": {"id": 2, "name": "a"}}]
    events = [_event(RotateEvent, 0, next_binlog=FILE),
              _event(MariadbGtidEvent, 1000, gtid="0-1-9", flags=0), _table_map(1050), update]
    records = [i for i in _feed(_decoder(BinlogPosition(FILE, 1000)), events)
               if isinstance(i, tuple)]
    assert [(key, value is None) for _, key, value, _ in records] == [
        (b'{"id":1}', False), (b'{"id":1}', True), (b'{"id":2}', False)]


def test_truncate_goes_to_every_partition_and_ends_its_statement() -> None:
    events = [_event(RotateEvent, 0, next_binlog=FILE),
              _event(MariadbGtidEvent, 2000, gtid="0-1-50", flags=1),
              _event(QueryEvent, 2050, query="TRUNCATE shop.items", schema=b"shop",
                     slave_proxy_id=8)]
    items = _feed(_decoder(BinlogPosition(FILE, 2000, gtids="0-1-49")), events)
    (topic, key, value, partition), checkpoint = items
    assert (topic, key, partition) == ("cdc.shop.items", None, EVERY_PARTITION)
    assert orjson.loads(value)["op"] == "t"
    assert checkpoint.position == BinlogPosition(FILE, 2100, gtids="0-1-50")


def test_mysql_settings_need_no_postgres_section() -> None:
    settings = load_settings(None, {"CDC_CAPTURE__SOURCE": "mysql",
                                    "CDC_MYSQL__TABLES": "[shop.items]"})
    assert settings.raw_topics() == ("cdc.shop.items",)
    assert settings.topic_tables() == {"cdc.shop.items": "shop.items"}
    with pytest.raises(ConfigError, match="mysql.tables is required"):
        load_settings(None, {"CDC_CAPTURE__SOURCE": "mysql", "CDC_POSTGRES__TABLES": "[a.b]"})


# -- XA transactions: held from XA PREPARE to their outcome ----------------------------
def _xa_prepared(start: int, ids: list[int], gtrid: bytes, seq: int) -> list[Any]:
    """MariaDB's prepared part: GTID flagged FL_PREPARED_XA, rows, XA END, XA_PREPARE."""
    return [
        _event(MariadbGtidEvent, start, gtid=f"0-1-{seq}", flags=76),
        _table_map(start + 50),
        _writes(start + 100, ids),
        _event(QueryEvent, start + 200, query=f"XA END X'{gtrid.hex()}',X'',1",
               schema=b"shop", slave_proxy_id=8),
        _event(XAPrepareEvent, start + 250, one_phase=False, xid_format_id=1,
               xid_gtrid=gtrid, xid_bqual=b""),
    ]


def _xa_outcome(start: int, verb: str, gtrid: bytes, seq: int) -> list[Any]:
    return [_event(MariadbGtidEvent, start, gtid=f"0-1-{seq}", flags=141),
            _event(QueryEvent, start + 50, query=f"XA {verb} X'{gtrid.hex()}',X'',1",
                   schema=b"shop", slave_proxy_id=8)]


def _plain(start: int, ids: list[int], seq: int) -> list[Any]:
    return [_event(MariadbGtidEvent, start, gtid=f"0-1-{seq}", flags=12),
            _table_map(start + 50), _writes(start + 100, ids), _event(XidEvent, start + 200)]


def _keys(items: list[Any]) -> list[bytes]:
    return [i[1] for i in items if isinstance(i, tuple) and i[2] is not None]


def test_a_prepared_xa_transaction_is_published_at_its_commit_and_dropped_at_rollback() -> None:
    decoder = _decoder(BinlogPosition(FILE, 1000, gtids="0-1-9"))
    start = [_event(RotateEvent, 0, next_binlog=FILE)]
    held = _feed(decoder, start + _xa_prepared(1000, [1], b"\xff\x00a", 10)
                 + _xa_prepared(2000, [2], b"b", 11) + _plain(3000, [3], 12))
    # Only the plain transaction is published; every checkpoint is before the first held.
    assert _keys(held) == [b'{"id":3}']
    before = BinlogPosition(FILE, 1000, gtids="0-1-9")
    assert {i.position for i in held if isinstance(i, Checkpoint)} == {before}
    rolled_back = _feed(decoder, _xa_outcome(4000, "ROLLBACK", b"\xff\x00a", 13))
    assert _keys(rolled_back) == []
    assert {i.position for i in rolled_back if isinstance(i, Checkpoint)} == {
        BinlogPosition(FILE, 2000, gtids="0-1-10")}  # now the second one holds it back
    committed = _feed(decoder, _xa_outcome(5000, "COMMIT", b"b", 14))
    assert _keys(committed) == [b'{"id":2}']
    assert isinstance(committed[-1], Checkpoint)
    assert committed[-1].position == BinlogPosition(FILE, 5100, gtids="0-1-14")


def test_a_restart_reads_a_held_xa_transaction_again() -> None:
    """The held position is where a restart begins: the prepared part is read again and
    its commit publishes it, although the plain transaction after it comes twice."""
    decoder = _decoder(BinlogPosition(FILE, 1000, gtids="0-1-9"))
    events = ([_event(RotateEvent, 0, next_binlog=FILE)] + _xa_prepared(1000, [1], b"a", 10)
              + _plain(2000, [2], 11))
    saved = [i.position for i in _feed(decoder, events) if isinstance(i, Checkpoint)][-1]
    again = _decoder(saved)
    replayed = _feed(again, events + _xa_outcome(3000, "COMMIT", b"a", 12))
    assert _keys(replayed) == [b'{"id":2}', b'{"id":1}']


def test_a_large_prepared_xa_transaction_is_published_as_read(
        caplog: pytest.LogCaptureFixture) -> None:
    decoder = BinlogDecoder(BinlogPosition(FILE, 1000), {"shop.items": "cdc.shop.items"},
                            EnvelopeWriter("mariadb", "srv"), tombstones=True,
                            track_gtids=True, xa_held_records=2)
    items = _feed(decoder, [_event(RotateEvent, 0, next_binlog=FILE)]
                  + _xa_prepared(1000, [1, 2, 3], b"a", 10))
    assert _keys(items) == [b'{"id":1}', b'{"id":2}', b'{"id":3}']
    assert "mysql.xa_held_records" in caplog.text
    assert _keys(_feed(decoder, _xa_outcome(2000, "ROLLBACK", b"a", 11))) == []
    assert "rolled back after its changes were published" in caplog.text


def test_xa_commit_one_phase_and_unknown_outcomes() -> None:
    """MySQL binlogs XA COMMIT ... ONE PHASE as XA START .. XA END, XA_PREPARE(one phase)."""
    decoder = BinlogDecoder(BinlogPosition(FILE, 1000), {"shop.items": "cdc.shop.items"},
                            EnvelopeWriter("mysql", "srv"), tombstones=True, track_gtids=False)
    one_phase = [
        _event(RotateEvent, 0, next_binlog=FILE),
        _event(type("Gtid", (GtidEvent,), {"gtid": "u:5"}), 1000),
        _event(QueryEvent, 1040, query="XA START X'61',X'',1", schema=b"shop",
               slave_proxy_id=8),
        _table_map(1080), _writes(1100, [7]),
        _event(QueryEvent, 1200, query="XA END X'61',X'',1", schema=b"shop", slave_proxy_id=8),
        _event(XAPrepareEvent, 1250, one_phase=True, xid_format_id=1, xid_gtrid=b"a",
               xid_bqual=b""),
    ]
    items = _feed(decoder, one_phase)
    assert _keys(items) == [b'{"id":7}']
    assert items[-1].position == BinlogPosition(FILE, 1300)
    # The outcome of a transaction prepared before the start: nothing to publish.
    outcome_group = [_event(type("Gtid", (GtidEvent,), {"gtid": "u:6"}), 2000),
                     _event(QueryEvent, 2050, query="XA COMMIT X'7a',X'',1", schema=b"shop",
                            slave_proxy_id=8)]
    assert _keys(_feed(decoder, outcome_group)) == []
    assert outcome("XA COMMIT X'ff00',X'01',7") == (True, (7, b"\xff\x00", b"\x01"))
    assert outcome("xa rollback X'',X'',0") == (False, (0, b"", b""))
    assert outcome("XA COMMIT 'a'") is None and outcome("INSERT INTO t VALUES (1)") is None


def test_zero_dates_follow_the_columns_nullability() -> None:
    """The table map's null bitmap decides: null when nullable, the epoch when NOT NULL."""
    from pipeline.sources.mysql.envelope import TableImage
    columns = [SimpleNamespace(name=n, type=t, fsp=0) for n, t in (
        ("d", FIELD_TYPE.DATE), ("dn", FIELD_TYPE.DATE), ("s", FIELD_TYPE.TIMESTAMP2),
        ("sn", FIELD_TYPE.TIMESTAMP2))]
    image = TableImage.of("shop", "items", columns, (), null_bitmap=bytes([0b0101]))
    epoch = dt.datetime(1970, 1, 1)
    zero = "out of date range"
    row = image.row({"d": None, "dn": None, "s": epoch, "sn": epoch},
                    {"d": zero, "dn": zero})
    assert row == {"d": None, "dn": 0, "s": None, "sn": "1970-01-01T00:00:00Z"}
    # a real NULL, and a column the row image left out, stay null
    assert image.row({"dn": None}, {"dn": "cols bitmap"}) == {"dn": None}


def test_a_prepared_xa_transaction_of_uncaptured_tables_holds_nothing_back() -> None:
    """Another application's XA, left prepared: capture's position must keep moving."""
    decoder = _decoder(BinlogPosition(FILE, 1000, gtids="0-1-9"))
    other = _xa_prepared(1000, [99], b"app", 10)
    other[2] = _writes(1100, [99], table="not_captured")
    items = _feed(decoder, [_event(RotateEvent, 0, next_binlog=FILE)] + other
                  + _plain(2000, [1], 11))
    assert _keys(items) == [b'{"id":1}']
    assert items[-1].position == BinlogPosition(FILE, 2250, gtids="0-1-11")


def test_released_xa_records_are_ordered_at_their_commit() -> None:
    """Published at the XA COMMIT, after changes with higher LSNs: each keeps its own lsn
    (the index version) but carries the COMMIT as sequence[0], so a worker's reorder
    buffer takes it in order (it was late, and dead-lettered under late_policy
    dead_letter)."""
    from pipeline.events import decode
    from pipeline.ordering import LatePolicy, OrderingSettings, ReorderBuffer
    decoder = _decoder(BinlogPosition(FILE, 1000, gtids="0-1-9"))
    items = _feed(decoder, [_event(RotateEvent, 0, next_binlog=FILE)]
                  + _xa_prepared(1000, [1], b"a", 10) + _plain(2000, [2], 11)
                  + _xa_outcome(3000, "COMMIT", b"a", 12))
    records = [i for i in items if isinstance(i, tuple) and i[2] is not None]
    assert _keys(records) == [b'{"id":2}', b'{"id":1}']
    sources = [orjson.loads(value)["source"] for _, _, value, _ in records]
    assert [orjson.loads(s["sequence"])[0] for s in sources] == [
        str(binlog_lsn(FILE, 2000)), str(binlog_lsn(FILE, 3000))]
    assert sources[1]["lsn"] == binlog_lsn(FILE, 1100)  # its own change's place
    buffer: ReorderBuffer = ReorderBuffer(OrderingSettings(
        allowed_lateness_ms=0, late_policy=LatePolicy.DEAD_LETTER))
    for _, key, value, _ in records:
        buffer.add(decode(key, value), key, 0)
        assert not buffer.release().dead


def test_a_restart_inside_a_published_xa_transaction_publishes_the_rest(
        caplog: pytest.LogCaptureFixture) -> None:
    """Over the limit its first part was published and confirmed; a restart there must not
    hold (and then silently drop at a rollback) the rest."""
    decoder = BinlogDecoder(BinlogPosition(FILE, 1000, 1, 0, "0-1-9"),
                            {"shop.items": "cdc.shop.items"}, EnvelopeWriter("mariadb", "srv"),
                            tombstones=True, track_gtids=True, xa_held_records=100)
    prepared = _xa_prepared(1000, [1], b"a", 10)
    prepared[3:3] = [_table_map(1150), _writes(1160, [2])]  # a second rows event
    items = _feed(decoder, [_event(RotateEvent, 0, next_binlog=FILE)] + prepared
                  + _xa_outcome(2000, "ROLLBACK", b"a", 11))
    assert _keys(items) == [b'{"id":2}']
    assert "rolled back after its changes were published" in caplog.text


def test_an_invalid_date_is_read_as_a_zero_date_not_raised() -> None:
    """ALLOW_INVALID_DATES lets a DATE hold '2024-02-30'; the library raised ValueError at
    it, and capture stopped at that rows event on every restart."""
    from pymysqlreplication.row_event import RowsEvent

    from pipeline.sources.mysql import library_fixes
    library_fixes.install()

    def read(year: int, month: int, day: int) -> Any:
        event = RowsEvent.__new__(RowsEvent)
        event.packet = SimpleNamespace(read_uint24=lambda: year << 9 | month << 5 | day)
        return event._RowsEvent__read_date()

    assert read(2024, 2, 30) is None and read(2023, 13, 1) is None
    assert read(2024, 2, 29) == dt.date(2024, 2, 29) and read(0, 0, 0) is None

    def read_old_datetime(text: str) -> Any:  # a DATETIME made before MySQL 5.6's format
        event = RowsEvent.__new__(RowsEvent)
        event.packet = SimpleNamespace(read_uint64=lambda: int(text))
        return event._RowsEvent__read_datetime()

    assert read_old_datetime("20240230101112") is None
    assert read_old_datetime("20240229101112") == dt.datetime(2024, 2, 29, 10, 11, 12)


def test_a_mysql_replication_the_fixes_were_not_made_for_is_refused_with_the_remedy() -> None:
    from pymysqlreplication.row_event import RowsEvent

    from pipeline.errors import ConfigError
    from pipeline.sources.mysql import library_fixes
    library_fixes.check()  # the pinned one
    with pytest.raises(ConfigError, match=r"mysql-replication 1\.1\.0 is installed.*pip install"):
        library_fixes.check("1.1.0")
    with pytest.raises(ConfigError, match="has no RowsEvent._gone"):
        library_fixes.check(required=[(RowsEvent, "_gone")])
