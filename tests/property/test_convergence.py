"""Duplicates and reordering do not change what the sinks end up holding.

Events go through ReorderBuffer -> Deduplicator -> a model of the search sink that applies a
write only if its version is higher than the stored one and keeps deletes as versioned
tombstones (Elasticsearch external versioning). The final state must equal that of applying
the history once, in order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.dedup import Deduplicator, DedupSettings, Verdict
from pipeline.events import ChangeEvent, SourceInfo
from pipeline.ordering import (
    Buffered,
    ChangePosition,
    LatePolicy,
    OrderingSettings,
    PartitionReorderer,
    Release,
)

LATENESS_MS = 200
KEYS = range(4)
FOREVER_MS = 10**15

Arrival = tuple[int, int, ChangeEvent]  # (wall time ms, tie-breaker, event)


def change(op: str, key: int, lsn: int, commit: int, ts_ms: int) -> ChangeEvent:
    source = SourceInfo(
        connector="postgresql", name="shop", db="shop", schema="public", table="items",
        ts_us=ts_ms * 1000, lsn=lsn, commit_lsn=commit or None,
    )
    row = {"id": key, "written_at": lsn}
    return ChangeEvent(
        op=op, key={"id": key}, before=row if op == "d" else None,
        after=None if op == "d" else row, source=source,
    )


@st.composite
def histories(draw: st.DrawFn) -> list[ChangeEvent]:
    """Committed transactions of creates, updates, deletes and primary-key changes, with
    LSNs growing, commit order growing and source time not going back."""
    events: list[ChangeEvent] = []
    present: set[int] = set()
    lsn, last_commit, ts = 1_000, 0, 1_000_000
    for _ in range(draw(st.integers(1, 15))):
        ts += draw(st.integers(0, LATENESS_MS))
        for _ in range(draw(st.integers(1, 3))):
            lsn += draw(st.integers(1, 40))
            key = draw(st.sampled_from(KEYS))
            if key not in present:
                events.append(change("c", key, lsn, last_commit, ts))
                present.add(key)
                continue
            op = draw(st.sampled_from(["u", "d", "move"]))
            free = [k for k in KEYS if k not in present]
            if op == "move" and free:  # a primary-key change: delete and create, one LSN
                events.append(change("d", key, lsn, last_commit, ts))
                events.append(change("c", free[0], lsn, last_commit, ts))
                present.symmetric_difference_update({key, free[0]})
            elif op == "d":
                events.append(change("d", key, lsn, last_commit, ts))
                present.discard(key)
            else:
                events.append(change("u", key, lsn, last_commit, ts))
        lsn += 1
        last_commit = lsn  # the commit record
    return events


def arrivals(
    data: st.DataObject, history: list[ChangeEvent], max_delay_ms: int, dup_delay_ms: int
) -> list[Arrival]:
    """Each event arrives after up to ``max_delay_ms`` beyond its source time; some arrive
    again (a replay) after up to ``dup_delay_ms``."""
    out: list[Arrival] = []
    for event in history:
        delay = data.draw(st.integers(0, max_delay_ms), label="delay")
        out.append((event.source.ts_ms + delay, data.draw(st.integers()), event))
    copies = data.draw(st.lists(st.sampled_from(history), max_size=len(history)), label="dups")
    for event in copies:
        delay = data.draw(st.integers(0, dup_delay_ms), label="dup delay")
        out.append((event.source.ts_ms + delay, data.draw(st.integers()), event))
    out.sort(key=lambda arrival: arrival[:2])
    return out


def apply(state: dict[int, tuple[int, dict[str, Any] | None]], event: ChangeEvent) -> None:
    """The search sink's rule: write only if the version is higher; deletes leave a
    versioned tombstone."""
    assert event.key is not None
    key = event.key["id"]
    stored = state.get(key)
    if stored is None or event.version > stored[0]:
        state[key] = (event.version, event.after)


@dataclass
class Pipeline:
    """Reorder -> dedup -> sink model, as the worker wires them; sinks confirm at once."""

    ordering: OrderingSettings
    dedup_settings: DedupSettings = field(default_factory=DedupSettings)
    sink: dict[int, tuple[int, dict[str, Any] | None]] = field(default_factory=dict)
    dead_lettered: list[ChangeEvent] = field(default_factory=list)
    released: dict[int, list[ChangeEvent]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.reorderer: PartitionReorderer[int, int] = PartitionReorderer(self.ordering)
        self.dedup = Deduplicator({}, self.dedup_settings)

    def feed(self, arrival: list[Arrival], idle_flush_every: int = 0) -> None:
        for n, (now_ms, _, event) in enumerate(arrival, 1):
            partition = partition_of(event)
            self.reorderer.add(partition, event, n, now_ms)
            self.process(partition, self.reorderer.release(partition))
            if idle_flush_every and n % idle_flush_every == 0:
                self.flush(now_ms + self.ordering.idle_flush_ms)
        self.flush(FOREVER_MS)

    def flush(self, now_ms: int) -> None:
        for partition, out in self.reorderer.flush_idle(now_ms).items():
            self.process(partition, out)

    def process(self, partition: int, out: Release[int]) -> None:
        self.released.setdefault(partition, []).extend(e.event for e in out.ready)
        batch: list[Buffered[int]] = out.ready + out.late
        confirmed = [e.event for e in batch if self.dedup.classify(e.event) is Verdict.NEW]
        for event in confirmed:
            apply(self.sink, event)
        for event in confirmed:  # only after the sink confirmed
            self.dedup.remember(event)
        for entry, _error in out.dead:
            if not self.dedup.is_duplicate(entry.event):
                self.dead_lettered.append(entry.event)


def partition_of(event: ChangeEvent) -> int:
    assert event.key is not None
    return int(event.key["id"]) % 2


def in_order(history: list[ChangeEvent]) -> dict[int, tuple[int, dict[str, Any] | None]]:
    state: dict[int, tuple[int, dict[str, Any] | None]] = {}
    for event in history:
        apply(state, event)
    return state


@settings(deadline=None)
@given(history=histories(), data=st.data())
def test_reordering_within_lateness_and_duplicates_converge_even_when_dead_lettering(
    history: list[ChangeEvent], data: st.DataObject
) -> None:
    arrival = arrivals(data, history, LATENESS_MS - 1, dup_delay_ms=20 * LATENESS_MS)
    pipeline = Pipeline(
        OrderingSettings(allowed_lateness_ms=LATENESS_MS, late_policy=LatePolicy.DEAD_LETTER),
        DedupSettings(positions_per_row=len(history)),
    )
    pipeline.feed(arrival)
    assert pipeline.sink == in_order(history)
    # nothing within the allowed lateness is late, and late replays are known duplicates
    assert pipeline.dead_lettered == []


@settings(deadline=None)
@given(
    history=histories(),
    data=st.data(),
    max_buffered=st.integers(1, 8),
    positions_per_row=st.integers(1, 4),
    idle_flush_every=st.integers(0, 5),
)
def test_any_reordering_converges_when_applying_if_newer(
    history: list[ChangeEvent],
    data: st.DataObject,
    max_buffered: int,
    positions_per_row: int,
    idle_flush_every: int,
) -> None:
    arrival = arrivals(data, history, 20 * LATENESS_MS, dup_delay_ms=20 * LATENESS_MS)
    pipeline = Pipeline(
        OrderingSettings(allowed_lateness_ms=LATENESS_MS, max_buffered=max_buffered),
        DedupSettings(positions_per_row=positions_per_row),
    )
    pipeline.feed(arrival, idle_flush_every)
    assert pipeline.sink == in_order(history)


@settings(deadline=None)
@given(
    history=histories(),
    data=st.data(),
    max_buffered=st.integers(1, 6),
    policy=st.sampled_from(LatePolicy),
)
def test_released_in_source_order_and_never_more_buffered_than_allowed(
    history: list[ChangeEvent], data: st.DataObject, max_buffered: int, policy: LatePolicy
) -> None:
    arrival = arrivals(data, history, 10 * LATENESS_MS, dup_delay_ms=10 * LATENESS_MS)
    reorderer: PartitionReorderer[int, int] = PartitionReorderer(
        OrderingSettings(
            allowed_lateness_ms=LATENESS_MS, max_buffered=max_buffered, late_policy=policy
        )
    )
    ready: dict[int, list[ChangePosition]] = {}
    came_out: list[int] = []
    for n, (now_ms, _, event) in enumerate(arrival):
        partition = partition_of(event)
        reorderer.add(partition, event, n, now_ms)
        assert len(reorderer.buffer(partition)) <= max_buffered
        outs = [(partition, reorderer.release(partition))]
        if data.draw(st.booleans(), label="timer fires"):
            outs += reorderer.flush_idle(now_ms + data.draw(st.integers(0, 5_000))).items()
        for p, out in outs:
            ready.setdefault(p, []).extend(ChangePosition.of(e.event) for e in out.ready)
            came_out += [e.item for e in out.ready + out.late] + [d.entry.item for d in out.dead]
    for p, out in reorderer.flush_idle(FOREVER_MS).items():
        ready.setdefault(p, []).extend(ChangePosition.of(e.event) for e in out.ready)
        came_out += [e.item for e in out.ready + out.late] + [d.entry.item for d in out.dead]
    for positions in ready.values():
        assert positions == sorted(positions)
    assert sorted(came_out) == list(range(len(arrival)))  # each event leaves exactly once
    counters = reorderer.counters()
    assert counters["released"] + counters["late"] == len(arrival)
    assert counters["buffered"] == 0
