"""Deduplicator: a change the sinks already applied is dropped, even after a restart."""

from __future__ import annotations

import math

import pytest

from pipeline.dedup import Deduplicator, DedupSettings, Verdict, row_key
from pipeline.errors import BadDataError
from pipeline.events import ChangeEvent, SourceInfo

HOUR_MS = 3_600_000


def change(
    lsn: int,
    *,
    row: int | None = 1,
    op: str = "u",
    commit: int = 0,
    ts_ms: int = 1_000,
    table: str = "orders",
    source: str = "shop",
) -> ChangeEvent:
    info = SourceInfo(
        connector="postgresql", name=source, db="shop", schema="public", table=table,
        ts_us=ts_ms * 1000, lsn=lsn, commit_lsn=commit or None,
    )
    key = None if row is None else {"id": row}
    after = None if op in ("d", "t") else {"id": row}
    before = {"id": row} if op == "d" else None
    return ChangeEvent(op=op, key=key, before=before, after=after, source=info)


def test_new_change_is_not_a_duplicate_until_remembered() -> None:
    dedup = Deduplicator({})
    event = change(100)
    assert dedup.classify(event) is Verdict.NEW
    assert dedup.classify(event) is Verdict.NEW  # not confirmed by the sinks yet
    dedup.remember(event)
    assert dedup.is_duplicate(change(100))
    assert dedup.dropped == 1 and dedup.stale == 0


def test_duplicate_survives_a_restart_through_the_store() -> None:
    store: dict[str, str | bytes] = {}
    Deduplicator(store).remember(change(100))
    restarted = Deduplicator(store)
    assert restarted.is_duplicate(change(100))
    assert restarted.dropped == 1


def test_store_values_may_come_back_as_bytes() -> None:
    store: dict[str, str | bytes] = {}
    Deduplicator(store).remember(change(100))
    raw = {key: str(value).encode() for key, value in store.items()}
    assert Deduplicator(raw).is_duplicate(change(100))


def test_older_replay_of_an_applied_change_is_a_duplicate_not_stale() -> None:
    dedup = Deduplicator({})
    for lsn in (100, 200, 300):
        dedup.remember(change(lsn))
    assert dedup.classify(change(200)) is Verdict.DUPLICATE


def test_never_applied_older_change_is_stale_not_duplicate() -> None:
    dedup = Deduplicator({})
    dedup.remember(change(100))
    dedup.remember(change(300))
    assert dedup.classify(change(200)) is Verdict.STALE
    assert dedup.stale == 1 and dedup.dropped == 0
    assert dedup.classify(change(400)) is Verdict.NEW


def test_only_the_newest_positions_per_row_are_kept() -> None:
    store: dict[str, str | bytes] = {}
    dedup = Deduplicator(store, DedupSettings(positions_per_row=2))
    for lsn in (100, 200, 300):
        dedup.remember(change(lsn))
    assert dedup.classify(change(300)) is Verdict.DUPLICATE
    assert dedup.classify(change(200)) is Verdict.DUPLICATE
    # older than what is kept: cannot be told from a late change, so it is not called duplicate
    assert dedup.classify(change(100)) is Verdict.STALE
    assert len(store) == 1


def test_identity_includes_source_table_and_key() -> None:
    dedup = Deduplicator({})
    dedup.remember(change(100, row=1))
    assert dedup.classify(change(100, row=2)) is Verdict.NEW
    assert dedup.classify(change(100, table="customers")) is Verdict.NEW
    assert dedup.classify(change(100, source="other")) is Verdict.NEW


def test_primary_key_change_shares_a_position_across_two_rows() -> None:
    dedup = Deduplicator({})
    dedup.remember(change(100, row=1, op="d"))
    assert dedup.classify(change(100, row=2, op="c")) is Verdict.NEW


def test_commit_order_decides_between_transactions() -> None:
    dedup = Deduplicator({})
    dedup.remember(change(500, commit=300))
    assert dedup.classify(change(400, commit=400)) is Verdict.NEW
    assert dedup.classify(change(600, commit=200)) is Verdict.STALE


def test_changes_behind_a_truncate_are_stale() -> None:
    dedup = Deduplicator({})
    dedup.remember(change(500, row=None, op="t"))
    assert dedup.classify(change(400, row=7)) is Verdict.STALE
    assert dedup.classify(change(600, row=7)) is Verdict.NEW
    assert dedup.is_duplicate(change(500, row=None, op="t"))
    assert dedup.classify(change(400, row=7, table="customers")) is Verdict.NEW


def test_key_is_compact_and_column_order_free() -> None:
    event = change(1)
    assert row_key(event) == 'shop|public.orders|{"id":1}'
    a = ChangeEvent("u", {"a": 1, "b": 2}, None, {}, event.source)
    b = ChangeEvent("u", {"b": 2, "a": 1}, None, {}, event.source)
    assert row_key(a) == row_key(b)


def test_remember_is_idempotent() -> None:
    store: dict[str, str | bytes] = {}
    dedup = Deduplicator(store)
    dedup.remember(change(100))
    before = dict(store)
    dedup.remember(change(100))
    assert store == before


def test_evict_drops_rows_older_than_the_window_in_bounded_steps() -> None:
    store: dict[str, str | bytes] = {}
    dedup = Deduplicator(store, DedupSettings(window_ms=24 * HOUR_MS, evict_batch=2))
    for row in range(5):
        dedup.remember(change(100, row=row, ts_ms=0))
    dedup.remember(change(200, row=9, ts_ms=20 * HOUR_MS))
    now = 25 * HOUR_MS
    assert dedup.evict(now) == 2
    assert len(store) == 4
    assert dedup.evict(now) + dedup.evict(now) == 3
    assert dedup.evicted == 5
    assert list(store) == [row_key(change(200, row=9))]
    assert dedup.classify(change(100, row=0)) is Verdict.NEW  # forgotten
    assert dedup.classify(change(200, row=9)) is Verdict.DUPLICATE  # still in the window


def test_evict_keeps_pace_with_a_store_larger_than_its_batches() -> None:
    """Rows arriving faster than ``evict_batch`` per call must not outrun eviction: the
    calls examine as many rows as it takes to walk the store once per quarter window."""
    store: dict[str, str | bytes] = {}
    dedup = Deduplicator(store, DedupSettings(window_ms=4 * HOUR_MS, evict_batch=10))
    for row in range(1000):
        dedup.remember(change(100, row=row, ts_ms=0))
    assert dedup.evict(5 * HOUR_MS) == 10  # a first call: one batch
    # half a quarter window later: half the store
    assert dedup.evict(5 * HOUR_MS + HOUR_MS // 2) == 495
    assert dedup.evict(5 * HOUR_MS + HOUR_MS // 2 + 1) == 10  # moments later: one batch
    assert dedup.evict(7 * HOUR_MS) == 485  # a quarter window later: the rest
    assert not store


def test_a_pass_in_slices_examines_what_one_call_would_and_stops_at_the_walk_s_end() -> None:
    def filled() -> tuple[dict[str, str | bytes], Deduplicator]:
        store: dict[str, str | bytes] = {}
        dedup = Deduplicator(store, DedupSettings(window_ms=4 * HOUR_MS, evict_batch=10))
        for row in range(1000):
            dedup.remember(change(100, row=row, ts_ms=0 if row % 2 else 5 * HOUR_MS))
        return store, dedup

    whole_store, whole = filled()
    sliced_store, sliced = filled()
    # one batch of 10; ~500 rows half a quarter window later; then a budget past the walk
    for now in (5 * HOUR_MS, 5 * HOUR_MS + HOUR_MS // 2, 8 * HOUR_MS):
        in_walk = len(sliced._sweep) or len(sliced_store)
        slices = list(sliced.evict_in_slices(now, 64))
        assert sum(slices) == whole.evict(now) > 0
        assert sliced_store == whole_store
        assert all(dropped <= 64 for dropped in slices)
    # the last pass's budget (the whole store) was more than the walk had left: it ended
    # with the walk's last key, not by starting the walk again
    assert len(slices) == math.ceil(in_walk / 64)
    assert len(sliced_store) == 500 and sliced.evicted == 500


def test_evict_keeps_a_row_refreshed_by_a_newer_change() -> None:
    store: dict[str, str | bytes] = {}
    dedup = Deduplicator(store, DedupSettings(window_ms=HOUR_MS))
    dedup.remember(change(100, ts_ms=0))
    dedup.remember(change(200, ts_ms=2 * HOUR_MS))
    assert dedup.evict(2 * HOUR_MS + 1) == 0
    assert dedup.is_duplicate(change(100))


def test_evict_tolerates_rows_deleted_since_the_walk_began() -> None:
    store: dict[str, str | bytes] = {}
    dedup = Deduplicator(store, DedupSettings(window_ms=HOUR_MS, evict_batch=1))
    dedup.remember(change(100, row=1, ts_ms=0))
    dedup.remember(change(100, row=2, ts_ms=0))
    assert dedup.evict(2 * HOUR_MS) == 1
    store.clear()
    assert dedup.evict(2 * HOUR_MS) == 0


@pytest.mark.parametrize(
    "settings", [{"window_ms": 0}, {"positions_per_row": 0}, {"evict_batch": 0}]
)
def test_settings_refuse_nonsense(settings: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        DedupSettings(**settings)


def test_stale_error_says_what_the_row_already_holds() -> None:
    dedup = Deduplicator({})
    dedup.remember(change(0x300, ts_ms=5_000))
    error = dedup.stale_error(change(0x200, ts_ms=4_000))
    assert isinstance(error, BadDataError) and error.stage == "ordering"
    assert error.late_ms == 1_000
    assert "?+0/200" in str(error) and "older than position ?+0/300" in str(error)


def test_a_change_after_a_capture_restart_is_new_not_stale() -> None:
    # Item 0 of the stream-fidelity issue: after a restart the first transaction carries
    # sequence [null, lsn]. Ordering by (commit or 0, lsn) made it older than everything the
    # row had seen, and dedup dropped it: the index kept the old price.
    dedup = Deduplicator({})
    dedup.remember(change(0x600, commit=0x500))
    assert dedup.classify(change(0x700)) is Verdict.NEW  # commit unknown, LSN newer
    assert dedup.classify(change(0x600)) is Verdict.DUPLICATE  # the same change replayed
    assert dedup.classify(change(0x580)) is Verdict.STALE
    dedup.remember(change(0x700))
    assert dedup.classify(change(0x800, commit=0x750)) is Verdict.NEW
    assert dedup.classify(change(0x700, commit=0x650)) is Verdict.DUPLICATE


class CountingStore(dict):  # type: ignore[type-arg]
    """A dict that counts its reads."""

    reads = 0

    def get(self, key, default=None):  # type: ignore[no-untyped-def, override]
        self.reads += 1
        return super().get(key, default)


def test_one_batch_reads_each_row_and_each_truncate_once() -> None:
    store = CountingStore()
    Deduplicator(store).remember(change(100, row=1))
    store.reads = 0
    dedup = Deduplicator(store)
    reads: dict = {}  # type: ignore[type-arg]
    first, second, other = change(200, row=1), change(300, row=1), change(210, row=2)
    verdicts = [dedup.classify(e, reads=reads) for e in (first, other, second)]
    assert verdicts == [Verdict.NEW] * 3
    for event in (first, other, second):
        dedup.remember(event, reads=reads)
    # rows 1 and 2 and the table's truncate entry: three reads for six calls
    assert store.reads == 3
    # both of row 1's changes are kept: the second remember saw the first one's entry
    fresh = Deduplicator(store)
    assert fresh.classify(change(200, row=1)) is Verdict.DUPLICATE
    assert fresh.classify(change(300, row=1)) is Verdict.DUPLICATE
    assert fresh.classify(change(100, row=1)) is Verdict.DUPLICATE
    assert fresh.classify(change(210, row=2)) is Verdict.DUPLICATE


class BatchStore(dict):  # type: ignore[type-arg]
    """A store with the batch methods of the disk stores, counting their calls."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, object]] = []

    def get_many(self, keys):  # type: ignore[no-untyped-def]
        self.calls.append(("get_many", list(keys)))
        return [dict.get(self, key) for key in keys]

    def get(self, key, default=None):  # type: ignore[no-untyped-def, override]
        self.calls.append(("get", key))
        return super().get(key, default)

    def update(self, other=(), /, **kwargs):  # type: ignore[no-untyped-def, override]
        self.calls.append(("update", dict(other, **kwargs)))
        super().update(other, **kwargs)

    def __setitem__(self, key, value):  # type: ignore[no-untyped-def]
        self.calls.append(("set", key))
        super().__setitem__(key, value)


def test_a_batch_reads_its_rows_in_one_call_and_writes_each_row_once() -> None:
    store = BatchStore()
    Deduplicator(store).remember(change(100, row=1))
    store.calls.clear()
    dedup = Deduplicator(store)
    reads: dict = {}  # type: ignore[type-arg]
    events = [change(200, row=1), change(210, row=2), change(300, row=1)]
    keyed = [(e, row_key(e)) for e in events]
    dedup.prefetch(keyed, reads)
    row1, row2 = row_key(events[0]), row_key(events[1])
    truncate = "shop|public.orders|null"
    assert store.calls == [("get_many", [row1, truncate, row2])]
    assert [dedup.classify(e, k, reads) for e, k in keyed] == [Verdict.NEW] * 3
    dedup.remember_many(keyed, reads)
    # no read beyond the prefetch; one update holding each row's final entry
    assert [name for name, _ in store.calls] == ["get_many", "update"]
    written = store.calls[1][1]
    assert isinstance(written, dict) and sorted(written) == sorted([row1, row2])
    fresh = Deduplicator(dict(store))
    for lsn, row in ((100, 1), (200, 1), (300, 1), (210, 2)):
        assert fresh.classify(change(lsn, row=row)) is Verdict.DUPLICATE
    # a second prefetch of the same rows reads nothing: the memo has them
    dedup.prefetch(keyed, reads)
    assert len(store.calls) == 2


def test_remember_many_skips_what_the_row_holds_and_writes_nothing_then() -> None:
    store = BatchStore()
    dedup = Deduplicator(store)
    dedup.remember(change(100, row=1))
    store.calls.clear()
    dedup.remember_many([(change(100, row=1), row_key(change(100, row=1)))])
    assert [name for name, _ in store.calls] == ["get"]  # read, found, nothing written
