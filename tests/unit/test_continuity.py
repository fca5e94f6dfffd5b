"""Offset continuity: the guard that catches records a consumer framework skipped."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.continuity import Admission, OffsetContinuity

TP = ("raw", 0)
Continuity = OffsetContinuity[tuple[str, int], str]


def _assigned(next_offset: int | None = 5, max_held: int = 10_000) -> Continuity:
    c: Continuity = OffsetContinuity(stall_s=5, reread_timeout_s=10, max_held=max_held)
    c.assigned(TP, next_offset, now=0.0)
    return c


def _admit(c: Continuity, *offsets: int, now: float = 1.0) -> list[Admission]:
    return [c.admit(TP, o, f"r{o}", now) for o in offsets]


def test_records_in_order_are_taken() -> None:
    c = _assigned(5)
    assert _admit(c, 5, 6, 7) == [Admission.TAKE] * 3
    assert c.expected(TP) == 8


def test_a_record_past_a_gap_is_held_and_due_up_to_the_last_held() -> None:
    c = _assigned(5)
    assert _admit(c, 5, 7, 8) == [Admission.TAKE, Admission.HELD, Admission.HELD]
    assert c.due(1.0, lambda _tp: None) == [(TP, 6, 8)]


def test_a_record_the_framework_skipped_is_reread_and_what_came_before_it_released() -> None:
    c = _assigned(5)
    _admit(c, 5, 7, 8)  # 6 never came
    settled = c.settle(TP, 6, 8, [6, 7, 8], now=2.0)
    assert settled.release == []
    assert settled.seek_to == 6
    assert c.expected(TP) == 6
    assert c.due(3.0, lambda _tp: None) == []  # re-read in flight
    assert _admit(c, 6, 7, 8) == [Admission.TAKE] * 3


def test_a_hole_in_the_log_itself_releases_the_held_records_without_a_seek() -> None:
    c = _assigned(5)
    _admit(c, 5, 7, 9)  # 6 and 8: transaction markers
    settled = c.settle(TP, 6, 9, [7, 9], now=2.0)
    assert settled.release == ["r7", "r9"]
    assert settled.seek_to is None
    assert c.expected(TP) == 10
    assert _admit(c, 10) == [Admission.TAKE]


def test_held_records_before_the_first_skipped_one_are_released() -> None:
    c = _assigned(5)
    _admit(c, 7, 9)  # 5, 6 compacted away; 8 skipped by the framework
    settled = c.settle(TP, 5, 9, [7, 8, 9], now=2.0)
    assert settled.release == ["r7"]
    assert settled.seek_to == 8
    assert c.expected(TP) == 8


def test_records_held_beyond_the_bound_come_again_by_the_reread() -> None:
    c = _assigned(5, max_held=1)
    _admit(c, 7, 8)  # 8 not kept
    settled = c.settle(TP, 5, 7, [7, 8], now=2.0)
    assert settled.release == ["r7"]
    assert c.expected(TP) == 8
    assert c.due(2.0, lambda _tp: None) == []  # nothing held: no gap left to settle
    assert _admit(c, 8) == [Admission.TAKE]


def test_a_reread_that_brings_nothing_is_settled_again_after_the_timeout() -> None:
    c = _assigned(5)
    _admit(c, 7)
    c.settle(TP, 5, 7, [5, 7], now=1.0)
    _admit(c, 7, now=2.0)  # stale, queued before the seek
    assert c.due(2.0, lambda _tp: None) == []
    assert c.due(11.5, lambda _tp: None) == [(TP, 5, 7)]


def test_repeats_after_a_seek_are_reported_as_repeats() -> None:
    c = _assigned(5)
    _admit(c, 5, 6, 7)
    assert _admit(c, 6) == [Admission.REPEAT]
    assert c.expected(TP) == 8


def test_a_stall_short_of_the_fetched_end_is_due_only_after_stall_s() -> None:
    c = _assigned(5)
    _admit(c, 5)
    end = {TP: 7}.get  # 6 was fetched but never delivered, and nothing follows
    assert c.due(3.0, end) == []  # first seen behind
    assert c.due(6.5, end) == []  # behind for 3.5 s only
    assert c.due(8.5, end) == [(TP, 6, 6)]
    assert c.settle(TP, 6, 6, [6], now=8.5).seek_to == 6


def test_a_burst_taken_in_time_is_no_stall() -> None:
    c = _assigned(5)
    _admit(c, 5)
    end = {TP: 9}.get
    assert c.due(10.0, end) == []  # fetched, not delivered yet
    _admit(c, 6, 7, 8, now=10.2)
    assert c.due(16.0, end) == []  # caught up
    assert c.due(30.0, {TP: 10}.get) == []  # behind again: the clock starts anew


def test_a_stall_over_a_trailing_marker_moves_past_it() -> None:
    c = _assigned(5)
    _admit(c, 5)
    settled = c.settle(TP, 6, 6, [], now=7.0)  # offset 6: a commit marker
    assert (settled.release, settled.seek_to) == ([], None)
    assert c.expected(TP) == 7


def test_settling_a_partition_that_moved_on_does_nothing() -> None:
    c = _assigned(5)
    _admit(c, 7)
    c.revoked(TP)
    assert c.settle(TP, 5, 7, [5, 6, 7], now=2.0).seek_to is None


def test_records_of_a_partition_not_assigned_here_are_held_and_never_due() -> None:
    c = _assigned(5)
    c.revoked(TP)
    assert _admit(c, 5) == [Admission.HELD]
    assert c.due(1.0, lambda _tp: 100) == []


def test_a_group_without_a_commit_starts_at_the_first_record() -> None:
    c = _assigned(None)
    assert _admit(c, 42) == [Admission.TAKE]


def test_reassignment_without_revocation_keeps_the_position() -> None:
    c = _assigned(5)
    _admit(c, 5)
    c.assigned(TP, 3, 2.0)
    assert c.expected(TP) == 6


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="stall_s"):
        OffsetContinuity(stall_s=0)


@given(st.lists(st.sampled_from(["record", "marker", "skipped"]), min_size=1, max_size=60))
def test_every_record_of_the_log_is_taken_once_in_order(log: list[str]) -> None:
    """A log with holes (markers) and a consumer that skips records at random: with the
    guard settling against the log, the agent processes every record once, in order."""
    in_log = [o for o, kind in enumerate(log) if kind != "marker"]
    skip = {o for o, kind in enumerate(log) if kind == "skipped"}
    end = len(log)
    c = _assigned(0)
    processed: list[int] = []
    position, now = 0, 0.0
    for _ in range(20 * end + 20):
        now += 1.0
        if position < end:
            offset, position = position, position + 1
            delivered = offset in in_log and offset not in skip
            if delivered and c.admit(TP, offset, f"r{offset}", now) is Admission.TAKE:
                processed.append(offset)
            skip.discard(offset)  # a re-read delivers it
        for tp, start, until in c.due(now, lambda _tp: end):
            settled = c.settle(tp, start, until,
                               [o for o in in_log if start <= o <= until], now)
            processed.extend(int(r[1:]) for r in settled.release)
            if settled.seek_to is not None:
                position = settled.seek_to
        if c.expected(TP) == end and position >= end:
            break
    assert processed == in_log
