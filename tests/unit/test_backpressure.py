"""A worker waits out a sink outage with its partitions paused, still polling."""

from __future__ import annotations

import asyncio

from pipeline.backpressure import Backpressure
from pipeline.errors import SinkUnavailableError
from pipeline.metrics import Metrics
from pipeline.sinks.base import RetryingSink
from tests.unit.test_sink_wrappers import ScriptedSink, _event


class RecordingConsumer:
    def __init__(self) -> None:
        self.calls: list[tuple[str, float]] = []

    async def pause(self) -> int:
        self.calls.append(("pause", 0))
        return 3

    async def keep_polling(self, seconds: float) -> None:
        self.calls.append(("poll", seconds))

    async def resume(self) -> None:
        self.calls.append(("resume", 0))


def test_an_outage_pauses_once_polls_through_every_retry_and_resumes_after() -> None:
    metrics = Metrics("t")
    consumer = RecordingConsumer()
    backpressure = Backpressure(metrics, "search")
    backpressure.attach(consumer)
    inner = ScriptedSink([SinkUnavailableError("down")] * 3)
    sink = RetryingSink(inner, initial_s=0.01, max_s=0.01, metrics=metrics,
                        backpressure=backpressure)

    async def write_then_release() -> None:
        assert await sink.write([_event(1)]) == []
        assert metrics.gauges[("cdc_worker_paused_partitions", (("sink", "search"),))] == 3
        await backpressure.release()  # what the worker loop does once the drain is done

    asyncio.run(write_then_release())
    kinds = [kind for kind, _ in consumer.calls]
    assert kinds == ["pause", "poll", "poll", "poll", "resume"]
    assert all(0.005 <= s <= 0.01 for kind, s in consumer.calls if kind == "poll")
    assert metrics.gauges[("cdc_worker_paused_partitions", (("sink", "search"),))] == 0
    assert not backpressure.paused


def test_release_without_an_outage_touches_nothing() -> None:
    consumer = RecordingConsumer()
    backpressure = Backpressure(Metrics("t"))
    backpressure.attach(consumer)
    asyncio.run(backpressure.release())
    assert consumer.calls == []


def test_without_a_consumer_a_retry_just_sleeps() -> None:
    backpressure = Backpressure(Metrics("t"))
    asyncio.run(backpressure.wait(0.001))
    assert not backpressure.paused
