"""DeliveryTracker: the slot only confirms positions whose transactions Kafka fully acked."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.capture.delivery import DeliveryFailed, DeliveryTracker, TransactionDelivery
from pipeline.positions import Lsn, SnapshotPosition


def _txn(tracker: DeliveryTracker, events: int, end: int | None) -> list[TransactionDelivery]:
    """Begin a transaction, send ``events`` events, commit at ``end`` (None: still open).
    Returns one delivery callback per event."""
    txn = tracker.begin()
    callbacks = [tracker.sent(txn) for _ in range(events)]
    if end is not None:
        tracker.commit(txn, Lsn(end))
    return callbacks


def test_nothing_confirmable_at_start() -> None:
    assert DeliveryTracker().confirmable() is None


def test_confirms_after_all_events_acked() -> None:
    tracker = DeliveryTracker()
    acks = _txn(tracker, 3, end=100)
    acks[0](None)
    acks[1](None)
    assert tracker.confirmable() is None
    acks[2](None)
    assert tracker.confirmable() == Lsn(100)
    assert tracker.in_flight == 0


def test_out_of_order_acks_across_transactions() -> None:
    tracker = DeliveryTracker()
    t1 = _txn(tracker, 2, end=100)
    t2 = _txn(tracker, 1, end=200)
    t3 = _txn(tracker, 2, end=300)
    # later transactions acked first: nothing may be confirmed yet
    for cb in t3 + t2:
        cb(None)
    assert tracker.confirmable() is None
    t1[1](None)
    assert tracker.confirmable() is None
    t1[0](None)
    assert tracker.confirmable() == Lsn(300)  # the whole prefix is done


def test_confirmation_stops_at_first_incomplete_transaction() -> None:
    tracker = DeliveryTracker()
    t1 = _txn(tracker, 1, end=100)
    t2 = _txn(tracker, 2, end=200)
    t3 = _txn(tracker, 1, end=300)
    t1[0](None)
    t3[0](None)
    t2[0](None)
    assert tracker.confirmable() == Lsn(100)
    assert tracker.in_flight == 2
    t2[1](None)
    assert tracker.confirmable() == Lsn(300)


def test_open_transaction_blocks_even_when_its_events_are_acked() -> None:
    tracker = DeliveryTracker()
    t1 = _txn(tracker, 1, end=100)
    open_txn_acks = _txn(tracker, 1, end=None)
    t1[0](None)
    open_txn_acks[0](None)
    assert tracker.confirmable() == Lsn(100)
    assert tracker.in_flight == 1  # the open transaction


def test_committed_transaction_without_events_is_confirmable() -> None:
    tracker = DeliveryTracker()
    _txn(tracker, 0, end=50)
    assert tracker.confirmable() == Lsn(50)


def test_confirmable_is_remembered() -> None:
    tracker = DeliveryTracker()
    _txn(tracker, 1, end=100)[0](None)
    assert tracker.confirmable() == Lsn(100)
    _txn(tracker, 1, end=200)  # not acked
    assert tracker.confirmable() == Lsn(100)


def test_delivery_error_raises_and_blocks_confirmation() -> None:
    tracker = DeliveryTracker()
    t1 = _txn(tracker, 1, end=100)
    t2 = _txn(tracker, 2, end=200)
    t1[0](None)
    t2[0]("KafkaError{code=MSG_SIZE_TOO_LARGE}")
    t2[1](None)
    with pytest.raises(DeliveryFailed, match="MSG_SIZE_TOO_LARGE"):
        tracker.confirmable()
    # still refuses: the failed transaction can never be confirmed
    with pytest.raises(DeliveryFailed):
        tracker.confirmable()


def test_error_in_later_transaction_lets_earlier_ones_confirm_first() -> None:
    tracker = DeliveryTracker()
    t1 = _txn(tracker, 1, end=100)
    t2 = _txn(tracker, 1, end=200)
    t2[0]("boom")
    assert tracker.confirmable() is None  # t1 not acked yet: nothing to do, no error yet
    t1[0](None)
    with pytest.raises(DeliveryFailed):
        tracker.confirmable()


@st.composite
def interleavings(draw: st.DrawFn) -> tuple[list[int], list[int]]:
    """Event counts per transaction, and a random order of acks (each a transaction index)."""
    counts = draw(st.lists(st.integers(0, 5), min_size=1, max_size=8))
    acks = [t for t, n in enumerate(counts) for _ in range(n)]
    return counts, draw(st.permutations(acks))


@given(interleavings(), st.lists(st.integers(1, 1000), min_size=8, max_size=8))
def test_property_confirmable_never_passes_an_unacked_transaction(
    case: tuple[list[int], list[int]], gaps: list[int]
) -> None:
    counts, order = case
    ends: list[int] = []
    lsn = 0
    for gap in gaps[: len(counts)]:
        lsn += gap
        ends.append(lsn)
    tracker = DeliveryTracker()
    callbacks = [_txn(tracker, n, end) for n, end in zip(counts, ends, strict=True)]
    remaining = list(counts)
    used = [0] * len(counts)
    previous: Lsn | None = None

    def check() -> None:
        nonlocal previous
        got = tracker.confirmable()
        first_open = next((t for t, r in enumerate(remaining) if r), None)
        if first_open is not None:
            # never at or beyond the end of the earliest unfinished transaction
            assert got is None or got.value < ends[first_open]
            expected = ends[first_open - 1] if first_open > 0 else None
        else:
            expected = ends[-1]
        assert got == (None if expected is None else Lsn(expected))
        if previous is not None:
            assert got is not None and got >= previous  # monotone
        previous = got

    check()
    for t in order:
        callbacks[t][used[t]](None)
        used[t] += 1
        remaining[t] -= 1
        check()
    assert tracker.confirmable() == Lsn(ends[-1])
    assert tracker.in_flight == 0


def test_the_last_position_of_a_kind_is_handed_out_before_the_next_kinds() -> None:
    """An initial snapshot's last chunk (its completion) and the stream's first transaction
    acknowledged together: confirming only the stream's left the snapshot recorded as never
    complete, and a restart read the tables again."""
    tracker = DeliveryTracker()
    chunks = [tracker.begin() for _ in range(2)]
    for i, chunk in enumerate(chunks):
        tracker.sent(chunk)
        tracker.commit(chunk, SnapshotPosition(i, {"complete": i == 1}))
    stream = _txn(tracker, 1, end=100)
    for chunk in chunks:
        chunk(None)
    stream[0](None)
    last = tracker.confirmable()
    assert isinstance(last, SnapshotPosition) and last.progress == {"complete": True}
    assert tracker.confirmable() == Lsn(100)
    assert tracker.in_flight == 0
