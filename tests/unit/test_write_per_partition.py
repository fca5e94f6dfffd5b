"""One sink write in flight per raw partition: a batch over several partitions is written
as one concurrent write per partition, never two at once for one partition; rejections map
back to the batch; a truncate keeps the batch whole; a failure waits for the other writes."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from pipeline.deadletter import RawRecord
from pipeline.errors import SinkRejectedError
from pipeline.events import ChangeEvent, SourceInfo
from pipeline.processing import partition_groups, write_per_partition
from pipeline.sinks.base import Rejection


def item(partition: int, row: int, lsn: int, op: str = "u") -> tuple[RawRecord, ChangeEvent]:
    source = SourceInfo(connector="postgresql", name="shop", db="shop", schema="public",
                        table="items", ts_us=1, lsn=lsn)
    event = ChangeEvent(op=op, key=None if op == "t" else {"id": row}, before=None,
                        after=None if op == "t" else {"id": row}, source=source)
    return RawRecord("raw.public.items", partition, lsn, b"k", b"v"), event


class SlowSink:
    """Records each write and how many were in flight; rejects rows listed in ``bad``."""

    name = "slow"

    def __init__(self, bad: frozenset[int] = frozenset(), fail_on: int | None = None) -> None:
        self.bad, self.fail_on = bad, fail_on
        self.writes: list[list[int]] = []
        self.in_flight = self.most_in_flight = self.finished = 0

    async def write(self, batch: Sequence[ChangeEvent]) -> list[Rejection]:
        rows = [e.key["id"] if e.key else -1 for e in batch]
        self.writes.append(rows)
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        await asyncio.sleep(0.05 if self.fail_on in rows else 0.1)
        self.in_flight -= 1
        if self.fail_on in rows:
            raise RuntimeError("write failed")
        self.finished += 1
        return [Rejection(i, SinkRejectedError("bad row", sink=self.name))
                for i, row in enumerate(rows) if row in self.bad]

    async def close(self) -> None: ...


def test_one_write_per_partition_all_in_flight_together() -> None:
    batch = [item(0, 1, 10), item(1, 2, 11), item(0, 3, 12), item(2, 4, 13), item(1, 5, 14)]
    groups = partition_groups(batch)
    assert groups == [[0, 2], [1, 4], [3]]
    sink = SlowSink(bad=frozenset({5, 3}))
    events = [e for _, e in batch]
    rejected = asyncio.run(write_per_partition(sink, events, groups))
    assert sorted(sink.writes) == [[1, 3], [2, 5], [4]]  # partition order kept inside each
    assert sink.most_in_flight == 3
    assert sorted(r.index for r in rejected) == [2, 4]  # rows 3 and 5, by batch position


def test_a_truncate_keeps_the_batch_in_one_write() -> None:
    batch = [item(0, 1, 10), item(1, 0, 11, op="t"), item(1, 2, 12)]
    assert partition_groups(batch) == [[0, 1, 2]]


def test_a_failure_is_raised_after_every_write_finished() -> None:
    batch = [item(0, 1, 10), item(1, 2, 11), item(2, 3, 12)]
    sink = SlowSink(fail_on=1)  # partition 0's write fails first, the others are slower
    with pytest.raises(RuntimeError, match="write failed"):
        asyncio.run(write_per_partition(sink, [e for _, e in batch], partition_groups(batch)))
    assert sink.finished == 2 and sink.in_flight == 0
