"""Issue 9, item 6: every driver error is sorted into the tree where PostgreSQL is called.

A lost connection (server stopped mid-stream) must be retriable, so capture resumes; a
refused login or a missing privilege must be permanent, so capture exits with the reason
instead of retrying forever. The messages are the ones libpq and psycopg2 really print.
"""

from __future__ import annotations

from typing import Any

import psycopg2
import pytest

from pipeline.config import KafkaSettings, PostgresSettings
from pipeline.errors import RetriableError, SourceSetupError
from pipeline.metrics import Metrics
from pipeline.sources.postgres.slot import translate
from pipeline.sources.postgres.source import PostgresSource

LOST = [
    psycopg2.DatabaseError("no COPY in progress\n"),
    psycopg2.InterfaceError("connection already closed"),
    psycopg2.OperationalError("server closed the connection unexpectedly\n\tThis probably "
                              "means the server terminated abnormally\n"),
    psycopg2.DatabaseError("SSL SYSCALL error: EOF detected\n"),
    psycopg2.OperationalError('connection to server at "127.0.0.1", port 5432 failed: '
                              "Connection refused\n\tIs the server running on that host?\n"),
    psycopg2.OperationalError('connection to server at "127.0.0.1", port 5432 failed: FATAL:  '
                              "the database system is shutting down\n"),
    psycopg2.errors.AdminShutdown("terminating connection due to administrator command\n"),
]

REFUSED = [
    psycopg2.OperationalError('connection to server at "127.0.0.1", port 5432 failed: FATAL:  '
                              'password authentication failed for user "cdc"\n'),
    psycopg2.OperationalError('connection to server at "127.0.0.1", port 5432 failed: FATAL:  '
                              'role "nobody" does not exist\n'),
    psycopg2.OperationalError('connection to server at "10.0.0.5", port 5432 failed: FATAL:  '
                              'no pg_hba.conf entry for host "10.0.0.9", user "cdc"\n'),
    psycopg2.OperationalError('connection to server at "127.0.0.1", port 5432 failed: FATAL:  '
                              'database "nodb" does not exist\n'),
    psycopg2.OperationalError('connection to server at "127.0.0.1", port 5432 failed: '
                              "fe_sendauth: no password supplied\n"),
    psycopg2.OperationalError('connection to server at "127.0.0.1", port 5432 failed: FATAL:  '
                              'permission denied for database "cdc"\n'),
    psycopg2.OperationalError("FATAL:  must be superuser or replication role to start "
                              "walsender\n"),
]


class _Coded(psycopg2.DatabaseError):
    pgcode = "42501"


@pytest.mark.parametrize("exc", LOST, ids=lambda e: str(e)[:40])
def test_a_lost_connection_is_retriable(exc: psycopg2.Error) -> None:
    assert type(translate(exc, "streaming")) is RetriableError


@pytest.mark.parametrize("exc", REFUSED, ids=lambda e: str(e)[60:100])
def test_a_refused_login_or_privilege_is_permanent(exc: psycopg2.Error) -> None:
    error = translate(exc, "connecting")
    assert isinstance(error, SourceSetupError)
    assert "unreachable" not in str(error)


def test_sqlstate_42501_is_permanent() -> None:
    assert "lacks a privilege" in str(translate(_Coded("permission denied for table t"), "x"))


class _DeadCursor:
    """A replication cursor whose server went away."""

    wal_end = 0

    def __init__(self, exc: psycopg2.Error) -> None:
        self.exc = exc

    def read_message(self) -> Any:
        raise self.exc

    def send_feedback(self, **_kw: Any) -> None:
        raise self.exc


def _source(cursor: _DeadCursor) -> PostgresSource:
    source = PostgresSource(PostgresSettings(tables=("public.t",)),
                            KafkaSettings(bootstrap_servers="127.0.0.1:1"), Metrics("test"))
    source._cur = cursor
    return source


def test_reading_from_a_stopped_server_is_retriable() -> None:
    source = _source(_DeadCursor(psycopg2.DatabaseError("no COPY in progress\n")))
    with pytest.raises(RetriableError, match="no COPY in progress"):
        source.read(10)


def test_confirming_to_a_closed_connection_is_retriable() -> None:
    from pipeline.positions import Lsn

    source = _source(_DeadCursor(psycopg2.InterfaceError("connection already closed")))
    with pytest.raises(RetriableError, match="connection already closed"):
        source.confirm(Lsn(1000))


def test_a_slot_initial_only_cannot_drop_is_retried_naming_the_remedy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The snapshot is confirmed, but another process holds its slot: retried (a walsender
    may still be letting go of it) with what to do, as the slot would hold WAL for good;
    the stream position is forgotten first (a later ``initial`` run then snapshots again
    instead of streaming from a stale slot)."""
    from pipeline.sources.postgres.slot import ReplicationSlot

    source = PostgresSource(
        PostgresSettings(tables=("public.t",), slot="snap_slot", snapshot_mode="initial_only"),
        KafkaSettings(bootstrap_servers="127.0.0.1:1"), Metrics("test"))
    source._snapshot_done_here = True
    steps: list[str] = []
    monkeypatch.setattr(source.offsets, "forget", lambda: steps.append("forget"))
    monkeypatch.setattr(source.offsets, "flush", lambda: 0)

    def in_use(_slot: ReplicationSlot) -> bool:
        steps.append("drop")
        raise translate(psycopg2.errors.ObjectInUse(
            'replication slot "snap_slot" is active for PID 4242\n'),
            "dropping replication slot 'snap_slot'")

    monkeypatch.setattr(ReplicationSlot, "drop_slot", in_use)
    with pytest.raises(RetriableError) as refused:
        source.finish()
    message = str(refused.value)
    assert "is active for PID 4242" in message
    assert "pg_drop_replication_slot('snap_slot')" in message
    assert "postgres.initial_only_keep_slot" in message
    assert steps == ["forget", "drop"]
