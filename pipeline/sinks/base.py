"""The sink interface, and the wrappers every sink is composed with (retry, metrics).

A sink writes a batch of change events and is idempotent by contract: writing the same
batch twice, or an older event after a newer one, leaves the same state. It returns the
events it rejects as bad data (they go to the dead-letter topic) and raises
``RetriableError`` when it cannot confirm the batch at all (the batch is then retried).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from pipeline.errors import BadDataError, RetriableError
from pipeline.events import ChangeEvent
from pipeline.metrics import Metrics

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Rejection:
    """An event of a batch (by index) that a sink refused as bad data, and why."""

    index: int
    error: BadDataError


class Sink(Protocol):
    name: str

    async def write(self, batch: Sequence[ChangeEvent]) -> list[Rejection]:
        """Apply the batch; return rejected events; raise RetriableError if not confirmed."""
        ...

    async def close(self) -> None: ...


class RetryingSink:
    """Retries a sink's transient failures with capped exponential backoff and jitter.

    The batch (and so the partition) waits: transient failures are never dead-lettered.
    """

    def __init__(self, inner: Sink, initial_s: float, max_s: float, metrics: Metrics) -> None:
        self.inner = inner
        self.name = inner.name
        self.initial_s = initial_s
        self.max_s = max_s
        self.metrics = metrics

    async def write(self, batch: Sequence[ChangeEvent]) -> list[Rejection]:
        delay = self.initial_s
        attempt = 0
        while True:
            try:
                return await self.inner.write(batch)
            except RetriableError as exc:
                attempt += 1
                self.metrics.inc("cdc_sink_retries_total", sink=self.name)
                log.warning(
                    "sink %s unavailable (attempt %d, retry in %.2fs): %s",
                    self.name, attempt, delay, exc,
                )
                await asyncio.sleep(delay * (0.5 + random.random() / 2))
                delay = min(delay * 2, self.max_s)

    async def close(self) -> None:
        await self.inner.close()


class MeasuredSink:
    """Counts what a sink wrote and rejected, and commit-to-sink latency per event."""

    def __init__(self, inner: Sink, metrics: Metrics) -> None:
        self.inner = inner
        self.name = inner.name
        self.metrics = metrics

    async def write(self, batch: Sequence[ChangeEvent]) -> list[Rejection]:
        started = time.perf_counter()
        rejected = await self.inner.write(batch)
        now_us = time.time() * 1e6
        self.metrics.observe_ms(
            "cdc_sink_batch_latency", (time.perf_counter() - started) * 1000, sink=self.name
        )
        bad = {r.index for r in rejected}
        for i, event in enumerate(batch):
            if i not in bad and event.source.snapshot == "false":
                self.metrics.observe_ms(
                    "cdc_commit_to_sink_latency",
                    max(0.0, (now_us - event.source.ts_us) / 1000),
                    sink=self.name,
                )
        self.metrics.inc("cdc_sink_events_total", len(batch) - len(bad), sink=self.name)
        if rejected:
            self.metrics.inc("cdc_sink_rejected_total", len(rejected), sink=self.name)
        return rejected

    async def close(self) -> None:
        await self.inner.close()
