"""The relay's SQL: claim whole aggregates, then mark what Kafka acknowledged.

A claim runs in one transaction that stays open until Kafka has answered for every event
of it (:meth:`OutboxTable.finish` commits). Its row locks are the relays' agreement:

* the *head* of an aggregate (its oldest event not yet SENT) is locked ``FOR UPDATE SKIP
  LOCKED``: an aggregate whose head another relay holds is skipped whole, so two relays never
  publish events of one aggregate at the same time, nor one relay an event while another
  still holds an earlier one (plain SKIP LOCKED on events would let relay B publish event 2
  while relay A still holds event 1);
* an event is a head only if no earlier event of its aggregate is unsent (PENDING, or
  FAILED while ``outbox.failed_holds_aggregate``): the later events wait;
* the pending events of the claimed aggregates are then read in ``seq`` order (locked too).

A relay that dies holding a claim loses its transaction: the events stay PENDING and the next
claim publishes them again, with the same ids.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from psycopg2 import sql

from pipeline.config import OutboxSettings
from pipeline.errors import SourceSetupError
from pipeline.outbox import table_identifier
from pipeline.sources.outbox.router import OutboxEvent

#: Columns the relay reads and writes (``cdc outbox install`` creates them).
RELAY_COLUMNS = ("id", "aggregatetype", "aggregateid", "type", "payload", "headers",
                 "created_at", "status", "retry_count", "last_error", "next_attempt_at", "seq")
#: Longest wait before retrying a refused event.
MAX_RETRY_DELAY_S = 300.0


@dataclass(frozen=True, slots=True)
class ClaimedEvent:
    event: OutboxEvent
    seq: int
    retry_count: int
    created_us: int


class OutboxTable:
    """The outbox table as the relay sees it, through one connection."""

    def __init__(self, conn: Any, settings: OutboxSettings, extra_columns: tuple[str, ...]):
        assert settings.table is not None
        self.conn = conn
        self.settings = settings
        self.name = settings.table
        self.extra = extra_columns
        t = table_identifier(settings.table)
        blocking = ["PENDING", "FAILED"] if settings.failed_holds_aggregate else ["PENDING"]
        self._blocking = blocking
        self._heads = sql.SQL(
            "SELECT o.id::text, o.retry_count FROM {t} o"
            " WHERE o.status = 'PENDING'"
            " AND (o.next_attempt_at IS NULL OR o.next_attempt_at <= now())"
            " AND NOT EXISTS (SELECT 1 FROM {t} e WHERE e.aggregatetype = o.aggregatetype"
            "  AND e.aggregateid = o.aggregateid AND e.seq < o.seq AND e.status = ANY(%s))"
            " ORDER BY o.seq LIMIT %s FOR UPDATE OF o SKIP LOCKED").format(t=t)
        columns: sql.Composable = sql.SQL(
            "id::text, aggregatetype, aggregateid, type, payload::text, headers::text, seq,"
            " retry_count, (extract(epoch FROM created_at) * 1000000)::bigint")
        if extra_columns:
            columns = columns + sql.SQL(", ") + sql.SQL(", ").join(
                sql.Identifier(c) for c in extra_columns)
        self._events = sql.SQL(
            "SELECT {c} FROM {t} WHERE status = 'PENDING' AND (aggregatetype, aggregateid) IN"
            " (SELECT aggregatetype, aggregateid FROM {t} WHERE id = ANY(%s::uuid[]))"
            " ORDER BY seq LIMIT %s FOR UPDATE").format(c=columns, t=t)
        self._one = sql.SQL("SELECT {c} FROM {t} WHERE id = %s::uuid").format(c=columns, t=t)
        if settings.delete_after_publish:
            self._sent = sql.SQL("DELETE FROM {} WHERE id = ANY(%s::uuid[])").format(t)
        else:
            self._sent = sql.SQL(
                "UPDATE {} SET status = 'SENT' WHERE id = ANY(%s::uuid[])").format(t)
        self._refused = sql.SQL(
            "UPDATE {} SET retry_count = retry_count + 1, last_error = %s,"
            " status = CASE WHEN retry_count + 1 >= %s THEN 'FAILED' ELSE 'PENDING' END,"
            " next_attempt_at = now() + make_interval(secs => %s)"
            " WHERE id = %s::uuid RETURNING status").format(t)
        self._invalid = sql.SQL(
            "UPDATE {} SET status = 'FAILED', retry_count = retry_count + 1, last_error = %s"
            " WHERE id = %s::uuid").format(t)

    def check(self) -> None:
        """SourceSetupError naming the remedy unless the table has the relay's columns."""
        schema, _, name = self.name.rpartition(".")
        with self.conn.cursor() as cur:
            cur.execute("SELECT column_name FROM information_schema.columns"
                        " WHERE table_schema = %s AND table_name = %s", (schema, name))
            present = {r[0] for r in cur.fetchall()}
        self.conn.rollback()
        if not present:
            raise SourceSetupError(
                f"outbox table {self.name} does not exist (or the role cannot see it): create "
                f"it with `cdc outbox install`, or set outbox.table")
        missing = [c for c in RELAY_COLUMNS if c not in present]
        if missing:
            raise SourceSetupError(
                f"outbox table {self.name} lacks the relay's columns {', '.join(missing)}: "
                f"`cdc outbox install` creates the table with them (see README, "
                f"Transactional outbox)")
        unknown = [c for c in self.extra if c not in present]
        if unknown:
            raise SourceSetupError(
                f"outbox.additional_placement names {', '.join(unknown)}, which "
                f"{self.name} does not have")

    def claim(self) -> list[ClaimedEvent]:
        """Lock and read the next events to publish, in ``seq`` order per aggregate (the
        transaction stays open: :meth:`finish` or :meth:`release`). An event Kafka refused
        before is claimed alone, so a refusal of a shared batch is told apart from its own."""
        batch = self.settings.batch_size
        with self.conn.cursor() as cur:
            cur.execute(self._heads, (self._blocking, batch))
            heads = cur.fetchall()
            if not heads:
                return []
            if heads[0][1] > 0:  # a retry: published on its own
                cur.execute(self._one, (heads[0][0],))
            else:
                fresh = [h[0] for h in heads if h[1] == 0]
                cur.execute(self._events, (fresh, batch))
            rows = cur.fetchall()
        return [self._claimed(row) for row in rows]

    def _claimed(self, row: tuple[Any, ...]) -> ClaimedEvent:
        id_, atype, aid, etype, payload, headers, seq, retries, created = row[:9]
        extra = dict(zip(self.extra, row[9:], strict=True))
        return ClaimedEvent(OutboxEvent(id_, atype, aid, etype, payload, headers, extra),
                            seq, retries, int(created))

    def finish(self, sent: list[str], refused: list[tuple[ClaimedEvent, str]],
               invalid: list[tuple[str, str]]) -> int:
        """Mark the outcome of a claim and commit (releasing its locks); returns how many
        refused events became FAILED."""
        failed = 0
        with self.conn.cursor() as cur:
            if sent:
                cur.execute(self._sent, (sent,))
            for claimed, reason in refused:
                delay = min(self.settings.retry_delay_s * 2 ** claimed.retry_count,
                            MAX_RETRY_DELAY_S)
                cur.execute(self._refused, (reason[:4000], self.settings.max_attempts, delay,
                                            claimed.event.id))
                row = cur.fetchone()
                failed += row is not None and row[0] == "FAILED"
            for event_id, reason in invalid:
                cur.execute(self._invalid, (reason[:4000], event_id))
        self.conn.commit()
        return failed

    def release(self) -> None:
        """Give up a claim: its events stay PENDING for the next one."""
        self.conn.rollback()
