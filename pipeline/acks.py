"""Which consumed records may be acknowledged: a contiguous prefix per partition.

A record held back (in the reorder buffer, or by a sink being retried) blocks the
acknowledgement of every later record of its partition, even those already written: Kafka
commits one offset per partition, and Faust's own gap handling commits over small gaps.
So the worker acknowledges exactly the records whose every predecessor is done.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, TypeVar

T = TypeVar("T")
TopicPartition = tuple[str, int]


class AckLedger(Generic[T]):
    """Tracks consumed records by partition and offset until they are done."""

    def __init__(self) -> None:
        self._pending: dict[TopicPartition, OrderedDict[int, list[object]]] = {}

    def track(self, tp: TopicPartition, offset: int, token: T) -> None:
        """Register a consumed record (in consumption order) with what acks it."""
        pending = self._pending.get(tp)
        if pending is None:  # (not setdefault: that would build a dict per record)
            pending = self._pending[tp] = OrderedDict()
        pending[offset] = [token, False]

    def done(self, tp: TopicPartition, offset: int) -> None:
        """The record is written, dead-lettered or dropped: nothing more will happen to it."""
        pending = self._pending.get(tp)
        entry = pending.get(offset) if pending is not None else None
        if entry is not None:
            entry[1] = True

    def ready(self) -> list[T]:
        """Tokens of records that may be acknowledged now, in offset order per partition."""
        out: list[T] = []
        for pending in self._pending.values():
            taken = len(out)
            for token, finished in pending.values():  # one walk, then pop what it took
                if not finished:
                    break
                out.append(token)  # type: ignore[arg-type]
            for _ in range(len(out) - taken):
                pending.popitem(last=False)
        return out

    def waiting(self) -> int:
        """Records consumed but not yet acknowledgeable."""
        return sum(len(p) for p in self._pending.values())
