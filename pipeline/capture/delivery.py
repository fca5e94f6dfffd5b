"""Which source positions may be confirmed: only those Kafka has acknowledged in full.

Capture publishes each record as soon as the source hands it over (so a transaction of any
size streams through a bounded producer queue) and registers it with the unit it belongs to
(a source transaction: the records up to a :class:`~pipeline.capture.source.Checkpoint`). The
confirmed position advances to a unit's position only when every record of that unit, and of
every earlier one, has been acknowledged by Kafka. Acknowledgements may arrive out of order
across partitions; confirmation never does.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from pipeline.errors import PermanentError


class DeliveryFailed(PermanentError):
    """Kafka refused an event for good; nothing after it may be confirmed. Capture stops
    with this message (the slot keeps everything from the last confirmed position)."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"Kafka refused a change event, capture stops without confirming "
                         f"past it: {reason}")


class TransactionDelivery:
    """One source transaction's outstanding records. Used as the producer's delivery
    callback. ``end_lsn`` is the position (any ordered value) to confirm once it is done."""

    __slots__ = ("pending", "end_lsn", "error", "commit_ts_us", "acked_at")

    def __init__(self, commit_ts_us: int = 0) -> None:
        self.commit_ts_us = commit_ts_us
        self.pending = 0
        self.end_lsn: Any = None  # set at commit; None while the transaction is open
        self.error: str | None = None
        self.acked_at = 0.0  # when Kafka acknowledged the last event (Unix seconds)

    def __call__(self, err: Any, msg: Any = None) -> None:
        self.pending -= 1
        if err is not None and self.error is None:
            self.error = str(err)
        elif msg is not None and self.pending == 0:
            # Produce time plus librdkafka's measured produce-to-ack latency: the real
            # acknowledgement time, however late this callback is served.
            kind, created_ms = msg.timestamp()
            latency = msg.latency()
            if kind and latency is not None:
                self.acked_at = created_ms / 1000 + latency

    @property
    def complete(self) -> bool:
        return self.end_lsn is not None and self.pending == 0


class DeliveryTracker:
    """Transactions in commit order; yields the highest position safe to confirm."""

    def __init__(self, on_complete: Callable[[TransactionDelivery], None] | None = None,
                 on_refused: Callable[[TransactionDelivery], None] | None = None) -> None:
        self._open: deque[TransactionDelivery] = deque()
        self._confirmable: Any = None
        self._on_complete = on_complete
        #: Given: a unit Kafka refused a record of is handed to it once every record of the
        #: unit has an answer, and confirmation goes on past it (the source re-reads it).
        self._on_refused = on_refused

    def begin(self, commit_ts_us: int = 0) -> TransactionDelivery:
        txn = TransactionDelivery(commit_ts_us)
        self._open.append(txn)
        return txn

    @staticmethod
    def sent(txn: TransactionDelivery) -> TransactionDelivery:
        """Count one more event of ``txn`` handed to the producer; returns the callback."""
        txn.pending += 1
        return txn

    @staticmethod
    def commit(txn: TransactionDelivery, end_lsn: Any) -> None:
        txn.end_lsn = end_lsn

    def abandon_open(self) -> None:
        """Forget the unit still open at the end (a source session ended inside a
        transaction: its records come again from the source after reconnecting)."""
        if self._open and self._open[-1].end_lsn is None:
            self._open.pop()

    @property
    def head(self) -> TransactionDelivery | None:
        """The oldest unit not yet confirmable: the one capture waits for."""
        return self._open[0] if self._open else None

    @property
    def in_flight(self) -> int:
        """Transactions not yet fully acknowledged (including an open one)."""
        return len(self._open)

    def confirmable(self) -> Any:
        """Advance over the acknowledged prefix; the position that may be confirmed, if any.

        Raises DeliveryFailed if Kafka refused an event of the prefix (unless ``on_refused``).
        Never passes over the last position of one kind (a snapshot's) to one of another
        (the stream's that follow it): each kind's last position is handed out once, as
        the source records it (a snapshot's completion) only when it is confirmed.
        """
        advanced = False
        while self._open:
            head = self._open[0]
            if (advanced and head.end_lsn is not None
                    and type(head.end_lsn) is not type(self._confirmable)):
                break  # the next call goes on
            if head.error is not None and self._on_refused is None:
                raise DeliveryFailed(head.error)
            if not head.complete:
                break
            self._open.popleft()
            if head.error is not None:
                assert self._on_refused is not None
                self._on_refused(head)
            elif self._on_complete is not None:
                self._on_complete(head)
            assert head.end_lsn is not None
            self._confirmable = head.end_lsn
            advanced = True
        return self._confirmable
