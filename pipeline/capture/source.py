"""The interface every change source implements, and what it hands to the capture loop.

A source turns its database's change stream into encoded Kafka records and says where in
that stream it is. It knows nothing of Kafka: the capture loop (:mod:`pipeline.capture.loop`)
publishes what :meth:`ChangeSource.read` returns, tracks every acknowledgement, and calls
:meth:`ChangeSource.confirm` with the highest position whose every earlier record Kafka has
acknowledged.

``read`` returns a list of items in stream order. An item is either a record, a plain tuple
``(topic, key, value, partition)`` (``value`` None is a tombstone; ``partition`` is
:data:`ANY_PARTITION` to let the key choose, or :data:`EVERY_PARTITION` to write one copy to
each partition of the topic), optionally with a fifth element, its Kafka headers
``[(name, bytes), ...]`` (the outbox's event ``id``); or a :class:`Checkpoint`: "once every
record before me is acknowledged, my position may be confirmed". A PostgreSQL transaction
is its records followed by a checkpoint at its end LSN; records of one transaction may span
many ``read`` calls. A checkpoint with no records before it (an idle source moving on) is fine.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

#: Let the key choose the partition (the producer's partitioner).
ANY_PARTITION = -1
#: One copy of the record in every partition of its topic (a truncate: every worker that
#: owns a partition of the table must see it in order with that partition's rows).
EVERY_PARTITION = -2

#: Kafka headers of a record: ``[(name, value), ...]``.
Headers = list[tuple[str, str | bytes | None]]
#: ``(topic, key, value, partition)``: one encoded record.
PlainRecord = tuple[str, bytes | None, bytes | None, int]
#: ``(topic, key, value, partition, headers)``: one encoded record with headers.
HeadedRecord = tuple[str, bytes | None, bytes | None, int, Headers]
Record = PlainRecord | HeadedRecord


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A position that may be confirmed once every record before it is acknowledged.

    ``position``: the source's typed, totally ordered position (an ``Lsn`` for PostgreSQL).
    ``commit_ts_us``: the source commit time, for the commit-to-Kafka latency metric (0 when
    the checkpoint is not a commit).
    """

    position: Any
    commit_ts_us: int = 0


Item = Record | Checkpoint


class ChangeSource(Protocol):
    """A stream of change records with confirmable positions."""

    #: For logs and metrics, e.g. ``"postgres slot cdc_slot"``.
    name: str

    def open(self) -> list[str]:
        """Connect and check the source can be captured (create what is missing); start
        reading after the last confirmed position. Returns the topics ``read`` writes to, so
        the loop can create them. Raises SourceSetupError (fatal, with the remedy) or
        RetriableError (the loop reconnects with backoff)."""
        ...

    def read(self, max_items: int) -> list[Item]:
        """Up to about ``max_items`` items, waiting at most a few tens of milliseconds when
        nothing is there (an empty list is fine)."""
        ...

    def confirm(self, position: Any) -> None:
        """Everything up to ``position`` is safely in Kafka: the source may forget it."""
        ...

    def keepalive(self) -> None:
        """Called while the loop waits for Kafka (backpressure): keep the connection alive
        (a PostgreSQL walsender drops a silent client after ``wal_sender_timeout``)."""
        ...

    def close(self) -> None:
        """Release connections; called after every ``open``, also on errors."""
        ...

    # A source may also define ``refused(position, reason)``: Kafka refused a record of the
    # unit ending at ``position`` for good. Without it a refusal stops capture; with it the
    # source decides (the outbox relay counts an attempt) and confirmation goes on past it.
    #
    # And ``finish()``: called after the source raised SourceExhausted and the session
    # ended with everything it handed out confirmed, to release what only streaming on
    # would need (the PostgreSQL source drops its slot after ``initial_only``). Idempotent;
    # a RetriableError from it retries the session, which ends exhausted again.

    def forget_positions(self) -> None:
        """Forget every position this source keeps in Kafka (``cdc capture
        --reset-position``): the next ``open`` starts as if for the first time."""
        ...
