"""Offset continuity: the guard that catches records a consumer framework skipped."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.continuity import Admission, OffsetContinuity

TP = ("raw", 0)


def _assigned(next_offset: int | None = 5) -> OffsetContinuity[tuple[str, int]]:
    c: OffsetContinuity[tuple[str, int]] = OffsetContinuity(stall_s=5, reread_timeout_s=10)
    c.assigned(TP, next_offset, now=0.0)
    return c


def test_records_in_order_are_taken() -> None:
    c = _assigned(5)
    assert [c.admit(TP, o, 1.0) for o in (5, 6, 7)] == [Admission.TAKE] * 3
    assert c.expected(TP) == 8


def test_a_record_past_a_gap_is_held_and_the_partition_is_due_from_the_gap() -> None:
    c = _assigned(5)
    assert c.admit(TP, 5, 1.0) is Admission.TAKE
    assert c.admit(TP, 7, 1.0) is Admission.HELD  # 6 never came
    assert c.admit(TP, 8, 1.0) is Admission.HELD
    assert c.due(1.0, lambda _tp: None) == [(TP, 6)]
    assert c.held == 2


def test_the_first_record_after_assignment_may_be_the_one_missing() -> None:
    c = _assigned(5)
    assert c.admit(TP, 6, 1.0) is Admission.HELD
    assert c.due(1.0, lambda _tp: None) == [(TP, 5)]


def test_a_reread_in_flight_is_not_due_again_until_it_times_out() -> None:
    c = _assigned(5)
    c.admit(TP, 7, 1.0)
    c.rereading(TP, 1.0)
    c.admit(TP, 8, 2.0)  # stale, queued before the seek
    assert c.due(2.0, lambda _tp: None) == []
    assert c.due(11.5, lambda _tp: None) == [(TP, 5)]  # nothing came: ask again


def test_the_reread_brings_the_missing_record_and_the_rest_follow() -> None:
    c = _assigned(5)
    c.admit(TP, 7, 1.0)
    c.rereading(TP, 1.0)
    assert [c.admit(TP, o, 2.0) for o in (5, 6, 7)] == [Admission.TAKE] * 3
    assert c.due(2.0, lambda _tp: None) == []


def test_repeats_after_a_seek_are_reported_as_repeats() -> None:
    c = _assigned(5)
    for o in (5, 6, 7):
        c.admit(TP, o, 1.0)
    assert c.admit(TP, 6, 1.0) is Admission.REPEAT
    assert c.expected(TP) == 8


def test_a_gap_in_the_log_itself_is_skipped_once_kafka_confirms_it() -> None:
    c = _assigned(5)
    c.admit(TP, 9, 1.0)  # 5..8 compacted away
    assert c.skip_to(TP, 9)
    assert not c.skip_to(TP, 7)  # never backwards
    assert c.admit(TP, 9, 2.0) is Admission.TAKE


def test_a_stall_short_of_the_fetched_end_is_due_only_after_stall_s() -> None:
    c = _assigned(5)
    c.admit(TP, 5, 1.0)
    end = {TP: 7}.get  # offset 6 was fetched but never delivered, and nothing follows
    assert c.due(3.0, end) == []
    assert c.due(6.5, end) == [(TP, 6)]
    assert c.due(6.5, lambda _tp: 6) == []  # caught up: no stall


def test_records_of_a_partition_not_assigned_here_are_held() -> None:
    c = _assigned(5)
    c.revoked(TP)
    assert c.admit(TP, 5, 1.0) is Admission.HELD
    assert c.due(1.0, lambda _tp: 100) == []


def test_a_group_without_a_commit_starts_at_the_first_record() -> None:
    c = _assigned(None)
    assert c.admit(TP, 42, 1.0) is Admission.TAKE
    assert c.expected(TP) == 43


def test_reassignment_without_revocation_keeps_the_position() -> None:
    c = _assigned(5)
    c.admit(TP, 5, 1.0)
    c.assigned(TP, 3, 2.0)
    assert c.expected(TP) == 6


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="stall_s"):
        OffsetContinuity(stall_s=0)


@given(st.lists(st.booleans(), min_size=1, max_size=60))
def test_whatever_is_skipped_the_taken_offsets_are_contiguous(skips: list[bool]) -> None:
    """A consumer that skips records at random, and re-reads when the guard says so, still
    hands the agent every offset exactly once, in order."""
    total = len(skips)
    c = _assigned(0)
    taken: list[int] = []
    position, now = 0, 0.0
    skip = list(skips)
    for _ in range(10 * total + 10):
        if position < total:
            deliver = not (skip[position] if position < len(skip) else False)
            if position < len(skip):
                skip[position] = False  # a re-read delivers it
            if deliver and c.admit(TP, position, now) is Admission.TAKE:
                taken.append(position)
            position += 1
        now += 1.0
        for _tp, start in c.due(now, lambda _tp: total):
            c.rereading(_tp, now)
            position = start
        if len(taken) == total:
            break
    assert taken == list(range(total))
