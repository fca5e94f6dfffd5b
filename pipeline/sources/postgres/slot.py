"""Replication slot and publication: checked and created when missing, before capture starts."""

from __future__ import annotations

import logging
import re
from typing import Any

import psycopg2
from psycopg2 import sql

from pipeline.config import PostgresSettings
from pipeline.errors import RetriableError, SourceSetupError
from pipeline.positions import Lsn
from pipeline.sources.postgres.sql_ascii import as_stored

log = logging.getLogger(__name__)

#: The slot's position, how far it is behind, and how much WAL it keeps on disk.
RETAINED_WAL_SQL = (
    "SELECT active, confirmed_flush_lsn::text, "
    " pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint, "
    " pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint, wal_status "
    "FROM pg_replication_slots WHERE slot_name = %s"
)


#: What libpq says when a login is refused. A refused connection attempt carries no SQLSTATE
#: in psycopg2 (no result to read it from), so the server's FATAL text is all there is.
_LOGIN_REFUSED = re.compile(
    r"authentication failed|no pg_hba\.conf entry|role \".*\" does not exist"
    r"|is not permitted to log in|no password supplied|password authentication"
    r"|database \".*\" does not exist|SCRAM authentication requires", re.IGNORECASE)
_NO_PRIVILEGE = re.compile(r"permission denied|must be superuser or (have )?replication",
                           re.IGNORECASE)
#: What psycopg2 and libpq say when the connection went away under a running statement or
#: COPY (server stopped or restarted, network cut): InterfaceError or plain DatabaseError.
_CONNECTION_LOST = re.compile(
    r"no COPY in progress|connection already closed|server closed the connection"
    r"|terminating connection|connection to server .* lost|could not (receive|send) data"
    r"|SSL connection has been closed|SSL SYSCALL error|the database system is "
    r"(shutting down|starting up|in recovery mode)|cursor already closed", re.IGNORECASE)


def translate(exc: psycopg2.Error, doing: str) -> Exception:
    """Map a driver error to the error tree: rights and auth are permanent, a lost or
    refused connection retriable, anything else a setup problem."""
    code = getattr(exc, "pgcode", None) or ""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    whole = str(exc)
    if code.startswith(("28", "3D")) or _LOGIN_REFUSED.search(whole):
        return SourceSetupError(f"{doing}: PostgreSQL refused the login: {text}")
    if code == "42501" or _NO_PRIVILEGE.search(whole):
        return SourceSetupError(f"{doing}: the role lacks a privilege: {text}")
    lost = isinstance(exc, psycopg2.OperationalError | psycopg2.InterfaceError)
    if lost or code.startswith(("08", "57P")) or _CONNECTION_LOST.search(whole):
        return RetriableError(f"{doing}: PostgreSQL is unreachable: {text}")
    if code == "22021":  # character_not_in_repertoire: stored bytes that are not UTF-8
        return SourceSetupError(
            f"{doing}: {text}. The database (SQL_ASCII) holds bytes that are not UTF-8: the "
            "other sessions read each as U+FFFD, but the polling strategy's reads text as "
            "UTF-8 and stops on them (its watermark keys must be exact). Fix those values, "
            "or capture the table with capture.source: logical")
    return SourceSetupError(f"{doing}: {text}")


def connect(dsn: str, text_as_stored: bool = False, **kwargs: Any) -> Any:
    """A connection; with ``text_as_stored``, a ``SQL_ASCII`` database's text is read as
    stored, each byte that is not UTF-8 as U+FFFD (:mod:`.sql_ascii`)."""
    try:
        conn = psycopg2.connect(dsn, **kwargs)
        return as_stored(conn) if text_as_stored else conn
    except psycopg2.Error as exc:
        raise translate(exc, "connecting to PostgreSQL") from exc


class ReplicationSlot:
    """The logical slot and publication this pipeline reads through."""

    def __init__(self, settings: PostgresSettings) -> None:
        self.settings = settings

    def prepare(self, saved_position: str | None = None, create_slot: bool = True,
                when_lost_start_over: bool = False) -> bool:
        """Verify the server can be captured and create what is missing; True if the slot
        exists now.

        ``saved_position``: the last position capture confirmed through this slot, as kept
        outside it (Kafka). Then the slot must exist: a new one would start at the current
        end of the WAL and silently skip every change in between, unless
        ``when_lost_start_over`` (``snapshot_mode: when_needed``: the caller snapshots again).
        ``create_slot``: create a missing slot here (else the caller creates it, exporting a
        snapshot).

        Raises SourceSetupError with the fix when wal_level, rights, tables or the slot are
        wrong.
        """
        conn = connect(self.settings.dsn.get_secret_value())
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                self._check_server(cur)
                self._check_tables(cur)
                self._check_signal_table(cur)
                self._ensure_publication(cur)
                return self._ensure_slot(cur, saved_position, create_slot,
                                         when_lost_start_over)
        except psycopg2.Error as exc:
            raise translate(exc, "preparing the replication slot") from exc
        finally:
            conn.close()

    def _check_server(self, cur: Any) -> None:
        cur.execute("SHOW wal_level")
        (wal_level,) = cur.fetchone()
        if wal_level != "logical":
            raise SourceSetupError(
                f"wal_level is '{wal_level}', logical replication needs 'logical': set "
                "wal_level = logical in postgresql.conf (or ALTER SYSTEM) and restart PostgreSQL"
            )
        cur.execute("SELECT rolsuper, rolreplication FROM pg_roles WHERE rolname = current_user")
        superuser, replication = cur.fetchone()
        if not (superuser or replication):
            raise SourceSetupError(
                "the role has neither REPLICATION nor SUPERUSER: "
                "ALTER ROLE <user> WITH REPLICATION (and grant SELECT on the captured tables)"
            )

    def _check_tables(self, cur: Any) -> None:
        for table_id in self.settings.tables:
            schema, table = table_id.split(".", 1)
            cur.execute(
                "SELECT c.relreplident, "
                " EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary), "
                # a primary-key column the replica identity index lacks (its old tuples
                # would carry no value for it)
                " EXISTS (SELECT 1 FROM pg_index p, unnest(p.indkey) AS k(attnum) "
                "   WHERE p.indrelid = c.oid AND p.indisprimary AND k.attnum <> ALL ("
                "     SELECT unnest(r.indkey) FROM pg_index r "
                "     WHERE r.indrelid = c.oid AND r.indisreplident)) "
                "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p')",
                (schema, table),
            )
            row = cur.fetchone()
            if row is None:
                raise SourceSetupError(f"postgres.tables names '{table_id}', which does not exist")
            identity, has_pk, key_outside_identity = row
            if identity == "i" and has_pk and key_outside_identity:
                raise SourceSetupError(
                    f"table '{table_id}' has REPLICA IDENTITY USING INDEX on an index without "
                    "all of its primary key's columns, so its deletes and key changes would "
                    "carry no primary key (events are keyed by it): ALTER TABLE ... REPLICA "
                    "IDENTITY DEFAULT (or FULL), or use an index holding the primary key")
            if identity == "n":
                raise SourceSetupError(
                    f"table '{table_id}' has REPLICA IDENTITY NOTHING, so its deletes carry no "
                    "key: ALTER TABLE ... REPLICA IDENTITY DEFAULT (or FULL)"
                )
            if not has_pk and identity != "i":
                raise SourceSetupError(
                    f"table '{table_id}' has no primary key, so its changes cannot be keyed: "
                    "add a primary key or set REPLICA IDENTITY USING INDEX <unique index>"
                )

    def _check_signal_table(self, cur: Any) -> None:
        table_id = self.settings.signal_table
        if table_id is None:
            return
        schema, table = table_id.split(".", 1)
        cur.execute(
            "SELECT array_agg(a.attname::text) FROM pg_attribute a "
            "JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relname = %s AND a.attnum > 0 AND NOT a.attisdropped",
            (schema, table))
        columns = set(cur.fetchone()[0] or ())
        if not {"id", "type", "data"} <= columns:
            raise SourceSetupError(
                f"postgres.signal_table names '{table_id}', which "
                f"{'lacks the columns id, type, data' if columns else 'does not exist'}: "
                f"CREATE TABLE {table_id} (id varchar(42) PRIMARY KEY, type varchar(32) NOT NULL, "
                "data varchar(2048))")

    def _published(self) -> list[str]:
        """The listed tables, and the signal table (its inserts are signals)."""
        signals = self.settings.signal_table
        return [*self.settings.tables, *([signals] if signals else [])]

    def _ensure_publication(self, cur: Any) -> None:
        name = self.settings.publication
        tables = self._published()
        cur.execute(
            "SELECT schemaname || '.' || tablename FROM pg_publication_tables WHERE pubname = %s",
            (name,),
        )
        present = {r[0] for r in cur.fetchall()}
        cur.execute("SELECT 1 FROM pg_publication WHERE pubname = %s", (name,))
        if cur.fetchone() is None:
            cur.execute(
                # Changes of a partitioned table's partitions arrive under the table's name.
                sql.SQL("CREATE PUBLICATION {} FOR TABLE {} "
                        "WITH (publish_via_partition_root = true)").format(
                    sql.Identifier(name), _table_list(tables)
                )
            )
            log.info("created publication %s for %s", name, ", ".join(tables))
            return
        missing = [t for t in tables if t not in present]
        if missing:
            cur.execute(
                sql.SQL("ALTER PUBLICATION {} ADD TABLE {}").format(
                    sql.Identifier(name), _table_list(missing)
                )
            )
            log.warning("added %s to publication %s: changes from now on are captured; "
                        "the rows it already holds are not (no snapshot of a table added "
                        "later): `cdc snapshot start %s` backfills them while streaming",
                        ", ".join(missing), name, " ".join(missing))

    def _ensure_slot(self, cur: Any, saved_position: str | None, create: bool,
                     start_over: bool) -> bool:
        slot = self.settings.slot
        cur.execute(
            "SELECT plugin, wal_status FROM pg_replication_slots WHERE slot_name = %s", (slot,)
        )
        row = cur.fetchone()
        if start_over and row is not None and row[1] == "lost":
            log.warning("slot %s was invalidated: dropping it to start over with a snapshot "
                        "(snapshot_mode when_needed)", slot)
            cur.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
            row = None
        if row is None and saved_position is not None and start_over:
            log.warning("slot %s is gone (capture had confirmed up to %s): starting over with "
                        "a snapshot (snapshot_mode when_needed)", slot, saved_position)
        elif row is None and saved_position is not None:
            raise SourceSetupError(
                f"replication slot '{slot}' is gone, but capture had confirmed changes up to "
                f"{saved_position} through it (kept in Kafka): a new slot would start at the "
                "current end of the WAL and silently skip every change since. Remedy: run "
                "`cdc capture --reset-position` to start a new slot from now, then backfill "
                "the tables (`cdc snapshot start <schema.table>...`; or set "
                "postgres.snapshot_mode: when_needed to snapshot again automatically)"
            )
        if row is not None and row[1] == "lost":
            raise SourceSetupError(
                f"replication slot '{slot}' was invalidated (max_slot_wal_keep_size): the WAL "
                "it needed is removed and changes are lost to it. Remedy: drop the slot "
                f"(SELECT pg_drop_replication_slot('{slot}')), run `cdc capture "
                "--reset-position`, then backfill the tables (`cdc snapshot start`); raise "
                "max_slot_wal_keep_size to avoid it"
            )
        if row is None:
            if not create:
                return False
            cur.execute(
                "SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (self.settings.slot,)
            )
            log.info("created replication slot %s", self.settings.slot)
        elif row[0] != "pgoutput":
            raise SourceSetupError(
                f"slot '{self.settings.slot}' uses plugin '{row[0]}', not pgoutput: "
                "choose another postgres.slot or drop that slot"
            )
        return True

    def confirmed_position(self) -> Lsn | None:
        """The slot's confirmed flush position (where streaming resumes), or None."""
        conn = connect(self.settings.dsn.get_secret_value())
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT confirmed_flush_lsn::text FROM pg_replication_slots "
                            "WHERE slot_name = %s", (self.settings.slot,))
                row = cur.fetchone()
        except psycopg2.Error as exc:
            raise translate(exc, "reading the replication slot's position") from exc
        finally:
            conn.close()
        return Lsn.parse(row[0]) if row is not None and row[0] else None

    def drop_slot(self) -> bool:
        """Remove the slot only (the publication holds no WAL); True if it was there.
        Raises through :func:`translate` (a slot still in use is a setup error naming it)."""
        return self._drop(publication=False)

    def drop(self) -> None:
        """Remove the slot and publication (used by tests and `cdc reset`)."""
        self._drop(publication=True)

    def _drop(self, publication: bool) -> bool:
        try:
            conn = connect(self.settings.dsn.get_secret_value())
            conn.autocommit = True
            try:
                with conn.cursor() as cur:
                    cur.execute(
                        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                        "WHERE slot_name = %s", (self.settings.slot,))
                    dropped = cur.rowcount > 0
                    if publication:
                        cur.execute(sql.SQL("DROP PUBLICATION IF EXISTS {}").format(
                            sql.Identifier(self.settings.publication)))
                    return dropped
            finally:
                conn.close()
        except psycopg2.Error as exc:
            raise translate(exc, f"dropping replication slot '{self.settings.slot}'") from exc


def _table_list(tables: Any) -> sql.Composable:
    return sql.SQL(", ").join(sql.Identifier(*t.split(".", 1)) for t in tables)


def primary_key_columns(cur: Any, relation_oid: int) -> tuple[str, ...]:
    """The primary-key column names of a table, in index order (empty if it has none)."""
    cur.execute(
        "SELECT a.attname FROM pg_index i "
        "JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) ON true "
        "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum "
        "WHERE i.indrelid = %s AND i.indisprimary ORDER BY k.ord",
        (relation_oid,),
    )
    return tuple(r[0] for r in cur.fetchall())
