"""The Faust glue of offset continuity, over a fake app and consumer."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import agents.guard as guard_module
from agents import faust_internals
from agents.guard import ContinuityGuard
from pipeline.config import KafkaSettings
from pipeline.continuity import Admission
from pipeline.metrics import Metrics


class _Signal:
    def __init__(self) -> None:
        self.receivers: list[Any] = []

    def connect(self, fn: Any) -> None:
        self.receivers.append(fn)

    async def send(self, arg: Any) -> None:
        for fn in self.receivers:
            await fn(None, arg)


@dataclass
class _Message:
    topic: str
    partition: int
    offset: int


@dataclass
class _Consumer:
    acked: list[int] = field(default_factory=list)
    seeks: list[tuple[Any, int]] = field(default_factory=list)
    ends: dict[Any, int] = field(default_factory=dict)

    def ack(self, message: _Message) -> bool:
        self.acked.append(message.offset)
        return True

    gaps: list[tuple[Any, int, int]] = field(default_factory=list)

    async def seek_wait(self, partitions: dict[Any, int]) -> None:
        self.seeks.extend((tuple(tp), offset) for tp, offset in partitions.items())

    async def _add_gap(self, tp: Any, offset_from: int, offset_to: int) -> None:
        self.gaps.append(((tp.topic, tp.partition), offset_from, offset_to))

    def highwater(self, tp: Any) -> int:
        return self.ends[tuple(tp)]


@dataclass
class _App:
    consumer: _Consumer = field(default_factory=_Consumer)
    on_partitions_assigned: _Signal = field(default_factory=_Signal)
    on_partitions_revoked: _Signal = field(default_factory=_Signal)
    rebalances: int = 0

    def on_rebalance_start(self) -> None:
        self.rebalances += 1


@dataclass(frozen=True)
class _TP:
    topic: str
    partition: int


@pytest.fixture
def app(monkeypatch: pytest.MonkeyPatch) -> _App:
    monkeypatch.setattr(guard_module, "committed_offsets",
                        lambda _bs, _g, tps, *_a: {tp: 10 for tp in tps})
    # a stand-in consumer: its class's ack, per record, is the one acknowledge() calls
    monkeypatch.setattr(faust_internals, "BATCH_ACK", False)
    return _App()


def _guard(app: _App) -> ContinuityGuard:
    g = ContinuityGuard(app, "g", ["raw"], KafkaSettings(), Metrics("test"), stall_s=0.01)
    asyncio.run(app.on_partitions_assigned.send({_TP("raw", 0), _TP("other", 0)}))
    return g


def _ev(offset: int, topic: str = "raw") -> _Message:
    return _Message(topic, 0, offset)


def test_the_agent_acknowledges_past_the_gate_where_fausts_own_acks_stop(app: _App) -> None:
    g = _guard(app)
    assert g.admit(_ev(10)) and g.admit(_ev(11))
    assert app.consumer.ack(_Message("raw", 0, 11)) is False  # Faust acking one it skipped
    g.acknowledge([_ev(10)])
    assert app.consumer.ack(_Message("other", 0, 3)) is True  # not a guarded topic
    assert app.consumer.acked == [10, 3]
    assert g.metrics.total("cdc_worker_acks_blocked_total") == 1


def test_records_wait_for_the_assignment_positions(app: _App) -> None:
    g = ContinuityGuard(app, "g", ["raw"], KafkaSettings(), Metrics("test"))
    assert not g.admit(_ev(10))  # delivered before the assignment is known: held

    async def later() -> None:
        waiting = asyncio.ensure_future(g.assignment_known())
        await asyncio.sleep(0)
        assert not waiting.done()
        await app.on_partitions_assigned.send({_TP("raw", 0)})
        await asyncio.wait_for(waiting, 1)

    asyncio.run(later())
    assert g.admit(_ev(10))


def test_a_skipped_record_seeks_back_to_it(app: _App, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(guard_module, "log_offsets",
                        lambda _bs, _tp, start, until, *_a: list(range(start, until + 1)))
    g = _guard(app)
    assert g.admit(_ev(10))
    assert not g.admit(_ev(12))  # 11 was skipped
    assert asyncio.run(g.settle(idle=False)) == []
    assert app.consumer.seeks == [(("raw", 0), 11)]
    assert g.metrics.total("cdc_worker_rereads_total") == 1


def test_a_hole_in_the_log_releases_the_held_record_without_a_seek(
        app: _App, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(guard_module, "log_offsets", lambda *_a: [12])  # 10, 11: markers
    g = _guard(app)
    held = _ev(12)
    assert not g.admit(held)
    assert asyncio.run(g.settle(idle=False)) == [held]
    assert app.consumer.seeks == []
    assert g.metrics.total("cdc_worker_log_gaps_total") == 1
    assert app.consumer.gaps == [(("raw", 0), 10, 11)]  # Faust may commit over these
    assert g.admit(_ev(13))


def test_faust_may_not_record_holes_of_its_own_on_guarded_topics(app: _App) -> None:
    _guard(app)
    asyncio.run(app.consumer._add_gap(_TP("raw", 0), 11, 20))  # as _drain_messages does
    asyncio.run(app.consumer._add_gap(_TP("other", 0), 3, 4))
    assert app.consumer.gaps == [(("other", 0), 3, 4)]


def test_an_idle_stall_short_of_the_end_is_reread(app: _App, monkeypatch: pytest.MonkeyPatch
                                                  ) -> None:
    monkeypatch.setattr(guard_module, "log_offsets",
                        lambda _bs, _tp, start, until, *_a: list(range(start, until + 1)))
    g = _guard(app)
    app.consumer.ends[("raw", 0)] = 11  # offset 10 was fetched; it never reached the agent
    asyncio.run(asyncio.sleep(0.02))
    asyncio.run(g.settle(idle=False))
    assert app.consumer.seeks == []  # busy: a stall is not judged
    asyncio.run(g.settle(idle=True))  # first seen behind
    asyncio.run(asyncio.sleep(0.02))
    asyncio.run(g.settle(idle=True))
    assert app.consumer.seeks == [(("raw", 0), 10)]


def test_held_records_are_let_go_of_when_a_rebalance_starts(app: _App) -> None:
    g = ContinuityGuard(app, "g", ["raw"], KafkaSettings(), Metrics("test"))

    async def run() -> None:
        await app.on_partitions_assigned.send({_TP("raw", 0)})
        assert not g.admit(_ev(12))  # held: Faust's rebalance would wait for it forever
        app.on_rebalance_start()  # as Faust's consumer thread calls it
        await asyncio.sleep(0)
        assert g.continuity.due(0.0, lambda _tp: None) == []

    asyncio.run(run())
    assert app.rebalances == 1


def test_a_batch_is_admitted_in_order_up_to_a_gap_and_what_is_held_is_counted(
        app: _App) -> None:
    g = _guard(app)
    batch = [_ev(10), _ev(11), _ev(13), _ev(14)]
    assert [m.offset for m in g.admitted(batch)] == [10, 11]  # 12 missing: 13, 14 held
    assert g.metrics.total("cdc_worker_held_total") == 2


_deliveries = st.lists(st.tuples(st.sampled_from([("raw", 0), ("raw", 1), ("raw", 2)]),
                                 st.integers(0, 14)), max_size=40)


@settings(max_examples=300, deadline=None)
@given(first=_deliveries, batch=_deliveries,
       starts=st.tuples(st.one_of(st.none(), st.integers(0, 6)), st.integers(0, 6)))
def test_admitting_a_batch_by_runs_decides_as_record_by_record(
        first: list[tuple[tuple[str, int], int]], batch: list[tuple[tuple[str, int], int]],
        starts: tuple[int | None, int]) -> None:
    """Any delivery (runs, gaps, repeats, a partition not assigned here, records held
    before): the guard admits the same records, and leaves the continuity state, that
    :meth:`OffsetContinuity.admit` record by record does."""
    def run(by_runs: bool) -> tuple[list[_Message], object]:
        app = _App()
        g = ContinuityGuard(app, "g", ["raw"], KafkaSettings(), Metrics("test"))
        for tp, start in ((("raw", 0), starts[0]), (("raw", 1), starts[1])):  # raw 2: not ours
            g.continuity.assigned(tp, start, now=0.0)
        g._assignment_known.set()
        out: list[_Message] = []
        for delivery in (first, batch):
            messages = [_Message(t, p, o) for (t, p), o in delivery]
            if by_runs:
                out += g.admitted(messages)
            else:
                out += [m for m in messages if g.continuity.admit(
                    (m.topic, m.partition), m.offset, m, 1.0) is not Admission.HELD]
        parts = {tp: (p.next, sorted(p.held), p.gap, p.reread_until, p.behind_since)
                 for tp, p in g.continuity._parts.items()}
        return out, parts

    assert run(by_runs=True) == run(by_runs=False)
