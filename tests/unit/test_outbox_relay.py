"""The relay's bookkeeping of one batch: what is marked SENT, counted as refused, FAILED, or
left PENDING to follow a refused event of its aggregate."""

from __future__ import annotations

from typing import Any

from pipeline.capture.source import Checkpoint
from pipeline.config import KafkaSettings, OutboxSettings, PostgresSettings
from pipeline.metrics import Metrics
from pipeline.positions import OutboxPosition
from pipeline.sources.outbox.claims import ClaimedEvent
from pipeline.sources.outbox.router import OutboxEvent, OutboxRouter
from pipeline.sources.outbox.source import OutboxRelay


class FakeTable:
    def __init__(self, claimed: list[ClaimedEvent]) -> None:
        self.claimed = claimed
        self.finished: list[tuple[Any, ...]] = []

    def claim(self) -> list[ClaimedEvent]:
        claimed, self.claimed = self.claimed, []
        return claimed

    def finish(self, sent: list[str], refused: list[tuple[ClaimedEvent, str]],
               invalid: list[tuple[str, str]]) -> int:
        self.finished.append((sent, [(c.event.id, r) for c, r in refused], invalid))
        return 0

    def release(self) -> None:
        pass


def _event(n: int, aggregate: str, atype: str = "order", payload: str = "{}") -> ClaimedEvent:
    return ClaimedEvent(OutboxEvent(f"e{n}", atype, aggregate, "T", payload), n, 0, 0)


def _relay(claimed: list[ClaimedEvent], **settings: Any) -> tuple[OutboxRelay, FakeTable]:
    outbox = OutboxSettings(**settings)
    relay = OutboxRelay(PostgresSettings(tables=("public.outbox",)), outbox, KafkaSettings(),
                        OutboxRouter(outbox, "dlt"), Metrics("t"))
    table = FakeTable(claimed)
    relay._table = table  # type: ignore[assignment]
    relay._topics = {"outbox.event.order"}  # no Kafka here
    return relay, table


def test_a_refused_event_keeps_its_aggregates_later_events_pending() -> None:
    relay, table = _relay([_event(1, "a"), _event(2, "b"), _event(3, "a"), _event(4, "b")])
    items = relay.read(100)
    checkpoints = [i.position for i in items if isinstance(i, Checkpoint)]
    assert checkpoints == [OutboxPosition(1, i) for i in range(4)]
    relay.refused(OutboxPosition(1, 0), "MSG_SIZE_TOO_LARGE")
    relay.confirm(OutboxPosition(1, 2))  # not the batch's end: nothing marked yet
    assert table.finished == []
    relay.confirm(OutboxPosition(1, 3))
    sent, refused, invalid = table.finished[0]
    assert sent == ["e2", "e4"]  # e3 follows e1 again later, in order
    assert refused == [("e1", "MSG_SIZE_TOO_LARGE")] and invalid == []


def test_an_invalid_event_fails_at_once_and_holds_back_its_aggregate() -> None:
    relay, table = _relay([_event(1, "a", payload="{no"), _event(2, "a"), _event(3, "b")])
    items = relay.read(100)
    assert [i[0] for i in items if isinstance(i, tuple)] == ["outbox.event.order"]  # e3 only
    relay.confirm(OutboxPosition(1, 0))
    sent, _refused, invalid = table.finished[0]
    assert sent == ["e3"]
    assert [i for i, _ in invalid] == ["e1"] and "not valid JSON" in invalid[0][1]


def test_without_holding_back_the_aggregate_goes_on_past_an_invalid_event() -> None:
    relay, table = _relay([_event(1, "a", payload="{no"), _event(2, "a")],
                          failed_holds_aggregate=False)
    relay.read(100)
    relay.confirm(OutboxPosition(1, 0))
    assert table.finished[0][0] == ["e2"]


def test_a_batch_of_only_bad_events_is_finished_without_waiting_for_kafka() -> None:
    relay, table = _relay([_event(1, "a", atype="bad type!")])
    assert relay.read(100) == []
    assert [i for i, _ in table.finished[0][2]] == ["e1"]
    assert relay._batch is None
