"""A worker waits out a sink outage with its partitions paused, still polling."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

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
        await asyncio.sleep(seconds)

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
    # paused once, polled through each retry, paused again after each poll (partitions
    # assigned meanwhile), resumed once
    assert kinds == ["pause", "poll", "pause", "poll", "pause", "poll", "pause", "resume"]
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


class _Aiokafka:
    """aiokafka's pause state, as PausedFetching drives it on the consumer thread."""

    def __init__(self) -> None:
        self.paused: set[str] = set()

    def assignment(self) -> list[Any]:
        return [SimpleNamespace(topic="raw", partition=p) for p in range(3)]

    def pause(self, *tps: Any) -> None:
        self.paused |= {f"{tp.topic}-{tp.partition}" for tp in tps}

    def resume(self, *tps: Any) -> None:
        self.paused -= {f"{tp.topic}-{tp.partition}" for tp in tps}


class _ConsumerThread:
    def __init__(self, consumer: _Aiokafka) -> None:
        self.consumer = consumer

    def _ensure_consumer(self) -> _Aiokafka:
        return self.consumer

    async def call_thread(self, fun: Any, *args: Any) -> Any:
        await asyncio.sleep(0.001)  # another thread: other tasks run meanwhile
        return await fun(*args)


def test_a_drain_succeeding_while_another_retries_leaves_nothing_paused() -> None:
    """Two drains of one sink: A failed and waits (partitions paused), B succeeded and
    resumed them. A's wait paused them again after each poll, regardless of B's resume,
    then A succeeded: release() saw nothing paused and returned. aiokafka stayed paused
    and the worker indexed nothing more, with no error and a paused-partitions gauge of 0."""
    from agents.faust_internals import PausedFetching

    aiokafka = _Aiokafka()
    app = SimpleNamespace(consumer=SimpleNamespace(_thread=_ConsumerThread(aiokafka)))
    fetch = SimpleNamespace(topics=frozenset({"raw"}), spill=lambda: None)
    backpressure = Backpressure(Metrics("t"), "search", step_s=0.01)
    backpressure.attach(PausedFetching(app, fetch))  # type: ignore[arg-type]

    async def drains() -> None:
        async def a() -> None:
            await backpressure.wait(0.1)  # A's sink write failed: wait, then retry
            await backpressure.release()  # the retry succeeded

        async def b() -> None:
            await asyncio.sleep(0.03)
            await backpressure.release()  # B's write succeeded meanwhile

        await asyncio.gather(a(), b())

    asyncio.run(drains())
    assert aiokafka.paused == set() and not backpressure.paused
