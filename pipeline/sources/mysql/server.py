"""The MySQL/MariaDB server a binlog capture reads: connecting, checking it can be
captured (each refusal names the server setting or grant to change), where its binlog is.

pymysql's errors are translated here, into the pipeline's error tree, and nowhere else.
"""

from __future__ import annotations

from typing import Any

import pymysql

from pipeline.config import MysqlSettings
from pipeline.errors import PermanentError, RetriableError, SourceSetupError
from pipeline.positions import BinlogPosition

#: Server error codes: access denied (wrong password), a missing privilege, a position the
#: server no longer has (binlog purged, unknown GTID).
ACCESS_DENIED = (1044, 1045, 1698)
MISSING_PRIVILEGE = (1142, 1227, 1370)
BINLOG_GONE = 1236

#: What a capture needs of the server: variable -> (required value, why).
REQUIRED = {
    "log_bin": ("ON", "the binary log must be on (start the server with --log-bin)"),
    "binlog_format": ("ROW", "row events carry the changed rows (binlog_format=ROW)"),
    "binlog_row_image": ("FULL", "updates and deletes must carry every column "
                                 "(binlog_row_image=FULL)"),
}


def connection_settings(settings: MysqlSettings) -> dict[str, Any]:
    """pymysql keyword arguments for ``settings`` (also given to mysql-replication)."""
    return {"host": settings.host, "port": settings.port, "user": settings.user,
            "passwd": settings.password.get_secret_value(), "charset": "utf8mb4"}


def connect(settings: MysqlSettings) -> Any:
    """A plain SQL connection (autocommit), errors translated."""
    try:
        return pymysql.connect(**connection_settings(settings), autocommit=True,
                               connect_timeout=10)
    except pymysql.Error as exc:
        raise translate(exc, f"connecting to {settings.host}:{settings.port}") from exc


#: Errors of a statement the server refuses as written (unknown table or column, bad syntax,
#: a wrong function or operand): asking again cannot help.
STATEMENT_REFUSED = frozenset({1054, 1064, 1109, 1111, 1146, 1241, 1242, 1305, 1582, 1583,
                               1584})


def refused_statement(exc: BaseException) -> bool:
    """``exc`` says the statement itself is wrong (not the server, nor the connection)."""
    code = exc.args[0] if exc.args else None
    return code in STATEMENT_REFUSED or isinstance(exc, pymysql.err.ProgrammingError)


def translate(exc: BaseException, doing: str) -> Exception:
    """A pymysql error as a pipeline error: refused credentials and missing privileges are
    permanent (with the grant to give), a purged position a setup error (with the remedy),
    everything else (server down, connection lost) retriable."""
    code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else None
    text = exc.args[1] if len(exc.args) > 1 else str(exc)
    if code in ACCESS_DENIED:
        return PermanentError(f"{doing}: the server refused the login ({text}); check "
                              "mysql.user and mysql.password")
    if code in MISSING_PRIVILEGE:
        return SourceSetupError(
            f"{doing}: {text}. The capture user needs: GRANT REPLICATION SLAVE, REPLICATION "
            "CLIENT, SELECT ON *.* TO <mysql.user>")
    if code == BINLOG_GONE:
        return SourceSetupError(
            f"{doing}: the server no longer has the binlog position capture must resume "
            f"from ({text}). Changes after it are lost to the binlog: take a new snapshot of "
            "the tables and restart with `cdc capture --reset-position`, which starts at the "
            "current end of the binlog")
    return RetriableError(f"{doing}: {text}")


def check(cur: Any, tables: tuple[str, ...]) -> None:
    """Refuse a server or tables capture cannot read correctly."""
    for name, (wanted, why) in REQUIRED.items():
        cur.execute("SELECT @@GLOBAL." + name)  # names from the constant above only
        value = str(cur.fetchone()[0]).upper()
        if value in ("1", "TRUE"):
            value = "ON"
        if value != wanted:
            raise SourceSetupError(f"the server has {name}={value}: {why}. Set {name}="
                                   f"{wanted} in the server's configuration and restart it")
    cur.execute("SHOW MASTER STATUS")  # needs REPLICATION CLIENT (BINLOG MONITOR)
    for table in tables:
        db, name = table.split(".", 1)
        cur.execute("SELECT COUNT(*) FROM information_schema.TABLES "
                    "WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s", (db, name))
        if cur.fetchone()[0] == 0:
            raise SourceSetupError(f"table {table} (mysql.tables) does not exist or the "
                                   "capture user cannot see it (GRANT SELECT)")
        cur.execute("SELECT COUNT(*) FROM information_schema.KEY_COLUMN_USAGE "
                    "WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s "
                    "AND CONSTRAINT_NAME = 'PRIMARY'", (db, name))
        if cur.fetchone()[0] == 0:
            raise SourceSetupError(
                f"table {table} has no primary key: its changes would have no record key "
                f"(the search index and Kafka compaction need one). Add one (ALTER TABLE "
                f"... ADD PRIMARY KEY) or remove the table from mysql.tables")


def row_metadata(cur: Any) -> str:
    """``binlog_row_metadata`` (FULL: table maps name their columns and key; MINIMAL or
    NO_LOG, and servers without the variable (MariaDB < 10.5, MySQL < 8.0.1): they do not,
    and capture names them from its schema history)."""
    try:
        cur.execute("SELECT @@GLOBAL.binlog_row_metadata")
    except pymysql.err.OperationalError as exc:
        if exc.args and exc.args[0] == 1193:  # unknown system variable
            return "MINIMAL"
        raise
    return str(cur.fetchone()[0]).upper()


def current_position(cur: Any, flavor: str) -> BinlogPosition:
    """The end of the binlog now, with the GTIDs before it (MariaDB: exactly at that file
    and position, ``BINLOG_GTID_POS``)."""
    cur.execute("SHOW MASTER STATUS")
    row = cur.fetchone()
    if row is None:
        raise SourceSetupError("SHOW MASTER STATUS shows no binlog: start the server with "
                               "--log-bin")
    file, pos = str(row[0]), int(row[1])
    gtids = ""
    if flavor == "mariadb":
        cur.execute("SELECT BINLOG_GTID_POS(%s, %s)", (file, pos))
        gtids = str(cur.fetchone()[0] or "")
    return BinlogPosition(file, pos, gtids=gtids)


def binlog_files(cur: Any) -> list[str]:
    """The binlog files the server still has, oldest first."""
    cur.execute("SHOW BINARY LOGS")
    return [str(row[0]) for row in cur.fetchall()]


def begin_snapshot(cur: Any, flavor: str) -> BinlogPosition:
    """Open a consistent-snapshot transaction on ``cur``'s connection and return the binlog
    position it sees: every transaction committed before that position is visible to the
    transaction, none after it.

    MariaDB says so itself: inside ``START TRANSACTION WITH CONSISTENT SNAPSHOT`` the
    status variables ``binlog_snapshot_file``/``binlog_snapshot_position`` hold the
    position of the snapshot (MariaDB takes both under its group-commit lock). No global
    read lock, so no RELOAD grant. MySQL has no such variables: there the position is read
    under ``FLUSH TABLES WITH READ LOCK`` (RELOAD), released once the transaction is open.
    """
    cur.execute("SET SESSION time_zone = '+00:00'")  # TIMESTAMP values read as UTC
    cur.execute("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
    if flavor == "mariadb":
        cur.execute("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
        cur.execute("SHOW STATUS LIKE 'binlog_snapshot_%'")
        status = {str(k).lower(): str(v) for k, v in cur.fetchall()}
        file = status.get("binlog_snapshot_file")
        pos = status.get("binlog_snapshot_position")
        if not file or not pos:
            raise SourceSetupError("the server shows no binlog_snapshot_file/position in a "
                                   "consistent-snapshot transaction: start it with --log-bin")
        cur.execute("SELECT BINLOG_GTID_POS(%s, %s)", (file, int(pos)))
        return BinlogPosition(file, int(pos), gtids=str(cur.fetchone()[0] or ""))
    cur.execute("FLUSH TABLES WITH READ LOCK")
    try:
        cur.execute("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
        return current_position(cur, flavor)
    finally:
        cur.execute("UNLOCK TABLES")
