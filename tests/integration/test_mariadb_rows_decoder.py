"""The one-pass rows decoder (``pipeline.sources.mysql.rows``) against mysql-replication's own
reading, on row images the real MariaDB wrote: every value, its type and its none source
must be the library's, for extremes, NULLs, zero and invalid dates, every character set and
length prefix the plan reads."""

from __future__ import annotations

import random
from typing import Any

import pytest
from pymysqlreplication import BinLogStreamReader
from pymysqlreplication.packet import BinLogPacketWrapper
from pymysqlreplication.row_event import (
    DeleteRowsEvent,
    TableMapEvent,
    UpdateRowsEvent,
    WriteRowsEvent,
)

from pipeline.sources.mysql import library_fixes, rows, server
from tests.integration.mariadb_scenario import MariadbScenario

pytestmark = pytest.mark.integration

#: column -> (DDL type, values the server holds: extremes first, then anything)
COLUMNS: dict[str, tuple[str, list[Any]]] = {
    "i8": ("TINYINT", [-128, 127, 0]),
    "u8": ("TINYINT UNSIGNED", [255, 0]),
    "i16": ("SMALLINT", [-32768, 32767]),
    "u16": ("SMALLINT UNSIGNED", [65535]),
    "i24": ("MEDIUMINT", [-8388608, 8388607, -1]),
    "u24": ("MEDIUMINT UNSIGNED", [16777215, 8388608]),
    "i32": ("INT", [-2**31, 2**31 - 1]),
    "u32": ("INT UNSIGNED", [2**32 - 1]),
    "i64": ("BIGINT", [-2**63, 2**63 - 1]),
    "u64": ("BIGINT UNSIGNED", [2**64 - 1, 2**63]),
    "f32": ("FLOAT", [3.4e38, -1.17e-38, 0.0, 1.5]),
    "f64": ("DOUBLE", [1.7976931348623157e308, 5e-324, -0.0, 0.1]),
    "d_big": ("DECIMAL(65,30)", ["-" + "9" * 35 + "." + "9" * 30,
                                  "0." + "0" * 29 + "1", "12345678901234567890.5"]),
    "d_int": ("DECIMAL(10,0)", ["-9999999999", "0", "1"]),
    "d_frac": ("DECIMAL(5,5)", ["-0.99999", "0.00001", "0"]),
    "d_money": ("DECIMAL(12,2)", ["-0.01", "9999999999.99", "-1234.50"]),
    "d_odd": ("DECIMAL(19,7)", ["-123456789012.1234567", "1.0000001"]),
    "v_short": ("VARCHAR(100) CHARACTER SET utf8mb4", ["", "naïve 😀 \U0001F600", "x" * 100]),
    "v_long": ("VARCHAR(300) CHARACTER SET utf8mb4", ["é" * 300, "'\"\\\n\t"]),
    "v_latin1": ("VARCHAR(20) CHARACTER SET latin1", ["café €", ""]),
    "c_fixed": ("CHAR(10) CHARACTER SET utf8mb4", ["a", "", "日本語"]),
    "c_latin1": ("CHAR(5) CHARACTER SET latin1", ["é", "abcde"]),
    "vb": ("VARBINARY(50)", [b"\x00\xff\x80", b""]),
    "b_fixed": ("BINARY(4)", [b"\x01\x00\x00\x00", b"\xff\xff\xff\xff"]),
    "t_tiny": ("TINYTEXT CHARACTER SET utf8mb4", ["", "t"]),
    "t_text": ("TEXT CHARACTER SET utf8mb4", ["😀" * 10000]),
    "t_medium": ("MEDIUMTEXT CHARACTER SET utf8mb4", ["m" * 1_000_000]),
    "bl": ("BLOB", [bytes(range(256)) * 10]),
    "bl_long": ("LONGBLOB", [b"\x00" * 70_000, b""]),
    "dte": ("DATE", ["1000-01-01", "9999-12-31", "0000-00-00", "2024-02-30", "2024-00-10"]),
    "dt0": ("DATETIME", ["1000-01-01 00:00:00", "9999-12-31 23:59:59", "0000-00-00 00:00:00"]),
    "dt1": ("DATETIME(1)", ["2024-01-02 03:04:05.9", "2024-01-02 03:04:05.0"]),
    "dt3": ("DATETIME(3)", ["2024-02-29 12:00:00.001"]),
    "dt5": ("DATETIME(5)", ["2024-02-29 12:00:00.00001"]),
    "dt6": ("DATETIME(6)", ["9999-12-31 23:59:59.999999", "2024-02-30 01:02:03.5"]),
    "ts0": ("TIMESTAMP NULL", ["1970-01-01 00:00:01", "2038-01-19 03:14:07",
                               "0000-00-00 00:00:00"]),
    "ts6": ("TIMESTAMP(6) NULL", ["2038-01-19 03:14:07.999999", "1999-12-31 23:59:59.000001"]),
    "yr": ("YEAR", [1901, 2155, 0]),
}


def _row(rng: random.Random, key: int) -> list[Any]:
    """A row of extremes and NULLs: each column NULL in a fifth of the rows."""
    return [key] + [None if rng.random() < 0.2 else rng.choice(values)
                    for _t, values in COLUMNS.values()]


class _Bytes:
    """What a packet wrapper reads from: ``data`` from its start."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def read(self, size: int) -> bytes:
        self.pos += size
        return self.data[self.pos - size:self.pos]

    def advance(self, size: int) -> None:
        self.pos += size


def _Rewound(data: bytes, read_bytes: int) -> Any:  # noqa: N802 - stands for a class
    """A packet wrapper of the library about to read ``data`` again (its own ``unread``
    appends to a buffer, so it cannot be handed back bytes already read)."""
    wrapper = BinLogPacketWrapper.__new__(BinLogPacketWrapper)
    wrapper._BinLogPacketWrapper__data_buffer = b""
    wrapper.packet = _Bytes(data)
    wrapper.read_bytes = read_bytes
    return wrapper


def _typed(value: Any) -> Any:
    """A value with its type, so 1 and 1.0 or b'' and '' differ; containers recursed."""
    if isinstance(value, dict):
        return {k: _typed(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_typed(v) for v in value]
    if isinstance(value, float) and value == 0:
        return ("float", str(value))  # -0.0 and 0.0 compare equal
    return (type(value).__name__, value)


def test_rows_read_in_one_pass_are_the_librarys_rows(maria: MariadbScenario) -> None:
    m = maria
    m.execute("CREATE TABLE {db}.wide (id INT PRIMARY KEY, "
              + ", ".join(f"{name} {ddl}" for name, (ddl, _v) in COLUMNS.items()) + ")")
    file, pos = m.query("SHOW MASTER STATUS")[0][:2]
    rng = random.Random(20261203)
    names = ", ".join(["id", *COLUMNS])
    holes = ", ".join(["%s"] * (len(COLUMNS) + 1))
    conn = m.connect()
    with conn.cursor() as cur:
        cur.execute("SET SESSION sql_mode = 'ALLOW_INVALID_DATES', time_zone = '+00:00'")
        for start in range(0, 120, 30):  # a few transactions of several rows each
            cur.executemany(f"INSERT INTO {m.db}.wide ({names}) VALUES ({holes})",
                            [_row(rng, k) for k in range(start, start + 30)])
            conn.commit()
        for key in range(0, 120, 7):  # updates: every column to another value or NULL
            values = _row(rng, key)[1:]
            sets = ", ".join(f"{n} = %s" for n in COLUMNS)
            cur.execute(f"UPDATE {m.db}.wide SET {sets} WHERE id = %s", (*values, key))
        conn.commit()
        cur.execute(f"DELETE FROM {m.db}.wide WHERE id % 5 = 0")
        cur.execute(f"INSERT INTO {m.db}.wide (id) VALUES (1000)")  # every column NULL
        conn.commit()
    conn.close()

    library_fixes.install()
    library_fetch = library_fixes._LIBRARY["fetch_rows"]
    stream = BinLogStreamReader(
        connection_settings=server.connection_settings(m.settings.mysql),
        server_id=rng.randint(10_000, 2**31), log_file=file, log_pos=pos,
        resume_stream=True, blocking=False,
        only_events=[TableMapEvent, WriteRowsEvent, UpdateRowsEvent, DeleteRowsEvent])
    compared = {"write": 0, "update": 0, "delete": 0}
    try:
        for event in stream:
            if isinstance(event, TableMapEvent) or event.table != "wide":
                continue
            plan = rows.plan_for(event.table_map[event.table_id])
            assert plan is not None, "the plan reads every column type of the table"
            packet = event.packet
            start = packet.read_bytes
            data = packet.read(event.event_size - start)
            update = isinstance(event, UpdateRowsEvent)
            ours = rows.read_rows(plan, data, update)
            event.packet = _Rewound(data, start)  # the library reads the same bytes
            library_fetch(event)
            theirs = event._RowsEvent__rows
            assert len(ours) == len(theirs)
            for mine, library in zip(ours, theirs, strict=True):
                a, b = _typed(mine), _typed(library)
                differing = {(part, col): (a[part].get(col), b[part].get(col))
                             for part in b for col in set(a[part]) | set(b[part])
                             if a[part].get(col) != b[part].get(col)}
                assert not differing, differing
            kind = ("update" if update else
                    "delete" if isinstance(event, DeleteRowsEvent) else "write")
            compared[kind] += len(ours)
    finally:
        stream.close()
    assert compared["write"] == 121 and compared["update"] == 18 and compared["delete"] == 24
    # the values above reached the row images (not all NULL or refused by the server)
    seen = m.query("SELECT COUNT(DISTINCT d_big), COUNT(DISTINCT dte), COUNT(t_medium) "
                   "FROM {db}.wide")[0]
    assert seen[0] >= 2 and seen[1] >= 3 and seen[2] >= 1
