"""ReorderBuffer: events leave each partition in source order once the watermark passed them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from pipeline.errors import BadDataError
from pipeline.events import ChangeEvent, SourceInfo
from pipeline.ordering import (
    Buffered,
    LateEventError,
    LatePolicy,
    OrderingSettings,
    PartitionReorderer,
    ReorderBuffer,
)
from pipeline.positions import ChangePosition

LATENESS_MS = 100


def change(
    lsn: int, ts_ms: int, *, commit: int = 0, op: str = "u", row: int = 1, ts_us: int = 0
) -> ChangeEvent:
    source = SourceInfo(
        connector="postgresql", name="shop", db="shop", schema="public", table="orders",
        ts_us=ts_us or ts_ms * 1000, lsn=lsn, commit_lsn=commit or None,
    )
    after = None if op == "d" else {"id": row, "lsn": lsn}
    before = {"id": row} if op == "d" else None
    return ChangeEvent(op=op, key={"id": row}, before=before, after=after, source=source)


def buffer(**overrides: Any) -> ReorderBuffer[str]:
    settings = {"allowed_lateness_ms": LATENESS_MS, "idle_flush_ms": 1_000, **overrides}
    return ReorderBuffer(OrderingSettings(**settings))


def items(entries: Sequence[Buffered[str]]) -> list[str]:
    return [entry.item for entry in entries]


def test_holds_events_until_newer_source_time_passes_the_lateness() -> None:
    buf = buffer()
    buf.add(change(10, ts_ms=1_000), "a", now_ms=0)
    buf.add(change(20, ts_ms=1_050), "b", now_ms=0)
    assert not buf.release()
    assert len(buf) == 2
    buf.add(change(30, ts_ms=1_100), "c", now_ms=0)
    assert items(buf.release().ready) == ["a"]  # 1000 <= 1100 - 100
    buf.add(change(40, ts_ms=1_160), "d", now_ms=0)
    assert items(buf.release().ready) == ["b"]
    assert buf.released == 2 and len(buf) == 2


def test_reordered_events_leave_in_source_order() -> None:
    buf = buffer()
    for lsn, ts, name in [(30, 1_020, "c"), (10, 1_000, "a"), (20, 1_010, "b")]:
        buf.add(change(lsn, ts_ms=ts), name, now_ms=0)
    buf.add(change(90, ts_ms=2_000), "z", now_ms=0)
    assert items(buf.release().ready) == ["a", "b", "c"]
    assert buf.late == 0


def test_commit_order_comes_before_lsn() -> None:
    # a later transaction can hold a change with a lower LSN than an earlier one's last change
    buf = buffer()
    buf.add(change(500, ts_ms=1_000, commit=300), "later-tx", now_ms=0)
    buf.add(change(400, ts_ms=1_000, commit=200), "earlier-tx", now_ms=0)
    buf.add(change(900, ts_ms=5_000, commit=800), "far", now_ms=0)
    assert items(buf.release().ready) == ["earlier-tx", "later-tx"]


def test_primary_key_change_sharing_one_position_leaves_whole() -> None:
    buf = buffer()
    buf.add(change(50, ts_ms=1_000, op="d", row=1), "delete-old-key", now_ms=0)
    buf.add(change(90, ts_ms=5_000), "far", now_ms=0)
    assert items(buf.release().ready) == ["delete-old-key"]
    # the create of the new key shares the released position: not behind it, so not late
    buf.add(change(50, ts_ms=1_000, op="c", row=2), "create-new-key", now_ms=0)
    assert items(buf.release().ready) == ["create-new-key"]
    assert buf.late == 0


def test_late_event_applied_if_newer_passes_through() -> None:
    buf = buffer(late_policy=LatePolicy.APPLY_IF_NEWER)
    buf.add(change(20, ts_ms=1_000), "b", now_ms=0)
    buf.add(change(90, ts_ms=2_000), "z", now_ms=0)
    assert items(buf.release().ready) == ["b"]
    buf.add(change(10, ts_ms=990), "late", now_ms=0)
    out = buf.release()
    assert items(out.late) == ["late"]
    assert out.ready == [] and out.dead == []
    assert buf.late == 1


def test_late_event_dead_lettered_with_how_late() -> None:
    buf = buffer(late_policy=LatePolicy.DEAD_LETTER)
    buf.add(change(20, ts_ms=1_000), "b", now_ms=0)
    buf.add(change(90, ts_ms=2_000), "z", now_ms=0)
    buf.release()
    buf.add(change(10, ts_ms=990), "late", now_ms=0)
    out = buf.release()
    assert out.late == [] and len(out.dead) == 1
    entry, error = out.dead[0]
    assert entry.item == "late"
    assert isinstance(error, LateEventError) and isinstance(error, BadDataError)
    assert error.stage == "ordering"
    assert error.late_ms == 1_010  # newest source time seen 2000 ms, event at 990 ms
    assert "late by 1010 ms" in str(error) and "allowed lateness 100 ms" in str(error)
    assert "public.orders" in str(error)


def test_quiet_partition_is_flushed_after_idle_time() -> None:
    buf = buffer(idle_flush_ms=500)
    buf.add(change(20, ts_ms=1_010), "b", now_ms=10_000)
    buf.add(change(10, ts_ms=1_000), "a", now_ms=10_100)
    assert not buf.flush_idle(now_ms=10_599)
    out = buf.flush_idle(now_ms=10_600)
    assert items(out.ready) == ["a", "b"]
    assert len(buf) == 0 and buf.flushed == 2 and buf.released == 2
    # what arrives behind the flushed position afterwards is late
    buf.add(change(5, ts_ms=990), "behind", now_ms=10_700)
    assert items(buf.release().late) == ["behind"]


def test_full_buffer_releases_the_oldest_early() -> None:
    buf = buffer(max_buffered=3)
    for lsn in (40, 20, 30):
        buf.add(change(lsn, ts_ms=1_000 + lsn), str(lsn), now_ms=0)
    buf.add(change(10, ts_ms=1_010), "10", now_ms=0)
    assert len(buf) == 3 and buf.forced == 1
    buf.add(change(50, ts_ms=1_050), "50", now_ms=0)
    assert len(buf) == 3 and buf.forced == 2
    assert items(buf.release().ready) == ["10", "20"]  # nothing has reached the watermark
    buf.add(change(15, ts_ms=1_015), "15", now_ms=0)  # behind what was forced out
    assert items(buf.release().late) == ["15"]


def test_an_unknown_commit_is_not_zero() -> None:
    # Debezium (and our capture before it resumed the slot's last commit) writes
    # sequence [null, lsn] after a restart: such a change must not sort before the row's
    # earlier changes, or dedup drops it as stale.
    before_restart = ChangePosition(0x500, 0x600)
    after_restart = ChangePosition(None, 0x700)
    assert before_restart < after_restart and not after_restart < before_restart
    assert ChangePosition(None, 0x600) == before_restart  # a replay of the same change
    assert ChangePosition(0x600, 0x650) > before_restart > ChangePosition(0x400, 0x650)
    assert str(ChangePosition(0x16_0000_0000, 0x16_B374_D848)) == "16/0+16/B374D848"
    assert str(after_restart) == "?+0/700"
    for position in (before_restart, after_restart):
        assert ChangePosition.decode(position.encode()) == position


def test_reorder_releases_an_unknown_commit_after_the_rows_earlier_changes() -> None:
    buf: ReorderBuffer[str] = ReorderBuffer(OrderingSettings(allowed_lateness_ms=0))
    first = change(0x600, ts_ms=1_000, commit=0x500)
    restarted = ChangeEvent(
        op="u", key={"id": 1}, before=None, after={"id": 1, "v": 2},
        source=SourceInfo(connector="postgresql", name="s", db="d", schema="public",
                          table="t", ts_us=2_000_000, lsn=0x700, commit_lsn=None),
    )
    buf.add(restarted, "restarted", now_ms=0)
    buf.add(first, "first", now_ms=0)
    assert items(buf.release().ready) == ["first", "restarted"]


def test_partitions_are_independent() -> None:
    reorderer: PartitionReorderer[int, str] = PartitionReorderer(
        OrderingSettings(allowed_lateness_ms=LATENESS_MS, idle_flush_ms=500)
    )
    reorderer.add(0, change(10, ts_ms=1_000), "p0-a", now_ms=0)
    reorderer.add(1, change(99, ts_ms=9_000), "p1-far", now_ms=400)
    # a far newer event on partition 1 does not move partition 0's watermark
    assert not reorderer.release(0)
    flushed = reorderer.flush_idle(now_ms=600)
    assert list(flushed) == [0] and items(flushed[0].ready) == ["p0-a"]
    assert reorderer.counters() == {
        "released": 1, "forced": 0, "flushed": 1, "late": 0, "buffered": 1,
    }


def test_discarding_a_partition_keeps_totals_monotonic() -> None:
    reorderer: PartitionReorderer[str, str] = PartitionReorderer(
        OrderingSettings(allowed_lateness_ms=0)
    )
    reorderer.add("t-0", change(10, ts_ms=1_000), "a", now_ms=0)
    reorderer.add("t-0", change(20, ts_ms=2_000), "b", now_ms=0)
    assert items(reorderer.release("t-0").ready) == ["a", "b"]
    reorderer.add("t-0", change(30, ts_ms=3_000), "c", now_ms=0)
    reorderer.discard("t-0")
    assert reorderer.counters()["released"] == 2
    assert reorderer.counters()["buffered"] == 0


@pytest.mark.parametrize(
    "settings",
    [{"allowed_lateness_ms": -1}, {"idle_flush_ms": -5}, {"max_buffered": 0}],
)
def test_settings_refuse_nonsense(settings: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        OrderingSettings(**settings)


def test_a_snapshot_read_ranks_below_every_streamed_change() -> None:
    # A transaction open across the snapshot's consistent point commits after it, with
    # changes whose LSNs are lower than the point: they must still win over the snapshot.
    read = ChangePosition(None, 0x9000, snapshot=True)
    streamed_before_point = ChangePosition(0x100, 0x200)
    assert read < streamed_before_point and read < ChangePosition(None, 0x10)
    assert read != ChangePosition(None, 0x9000)  # the same LSN streamed is another change
    assert ChangePosition.decode(read.encode()) == read and read.encode().startswith("r")
    assert ChangePosition(None, 0x8000, snapshot=True) < read
