"""Waiting out a sink outage without leaving the consumer group.

A worker whose sink is down must hold its records (nothing is acknowledged past an unwritten
one) and retry. Sleeping inside the consume loop would also stop the consumer's polls, and a
consumer that does not poll within ``max.poll.interval.ms`` is thrown out of its group: its
partitions move to another worker, which hits the same outage, and the group rebalances over
and over while nothing is written. So, as Kafka Connect does with a failing sink task, the
worker pauses its partitions and keeps polling: it stays in the group, fetches nothing new
(memory stays bounded), and resumes the partitions once the sink confirmed a write.

Each engine adapts its consumer (:class:`PausableConsumer`); the retry loops that wait for a
sink (``RetryingSink``, ``WorkerLoop``) wait through :class:`Backpressure`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from pipeline.metrics import Metrics

log = logging.getLogger(__name__)


class PausableConsumer(Protocol):
    async def pause(self) -> int:
        """Stop fetching every assigned partition; return how many were paused."""
        ...

    async def keep_polling(self, seconds: float) -> None:
        """Poll (fetching nothing for paused partitions) for ``seconds``, so the consumer
        stays in its group. Pausing is :class:`Backpressure`'s alone (it pauses partitions
        assigned meanwhile between calls): a consumer pausing by itself could pause again
        after another drain's success resumed it, and nothing would resume it then."""
        ...

    async def resume(self) -> None:
        """Fetch every assigned partition again, from where the worker stopped taking."""
        ...


class Backpressure:
    """Pauses the worker's partitions while a sink write is being retried.

    Several drains of one sink may wait and succeed at once (one in flight per partition).
    Every pause and resume happens under one lock, together with the state it changes, so a
    drain's success that resumes the partitions is never undone by a retry still polling
    with the partitions paused: that retry pauses again only while the state says paused.
    """

    def __init__(self, metrics: Metrics, sink: str = "", step_s: float = 0.2) -> None:
        self.metrics = metrics
        self.sink = sink
        self.step_s = step_s
        self.consumer: PausableConsumer | None = None
        self.paused = False
        self._lock = asyncio.Lock()

    def attach(self, consumer: PausableConsumer) -> None:
        """The engine's consumer (until then, waiting is a plain sleep)."""
        self.consumer = consumer

    async def wait(self, seconds: float) -> None:
        """Wait ``seconds`` before the next attempt, the partitions paused meanwhile."""
        consumer = self.consumer
        if consumer is None:
            await asyncio.sleep(seconds)
            return
        async with self._lock:
            if not self.paused:
                count = await consumer.pause()
                self.paused = True
                self.metrics.set("cdc_worker_paused_partitions", count, sink=self.sink)
                log.warning("sink %s unavailable: paused %d partition(s), still polling so "
                            "the worker keeps its place in the consumer group", self.sink,
                            count)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while (left := deadline - loop.time()) > 0:
            await consumer.keep_polling(min(left, self.step_s))
            async with self._lock:
                if self.paused:  # partitions assigned meanwhile; not after a resume
                    await consumer.pause()

    async def release(self) -> None:
        """The sink confirmed a write: fetch again."""
        async with self._lock:
            if not self.paused or self.consumer is None:
                return
            await self.consumer.resume()
            self.paused = False
        self.metrics.set("cdc_worker_paused_partitions", 0, sink=self.sink)
        log.info("sink %s confirmed a write: partitions resumed", self.sink)
