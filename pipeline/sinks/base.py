"""The sink interface, and the wrappers every sink is composed with (retry, metrics).

A sink writes a batch of change events and is idempotent by contract: writing the same
batch twice, or an older event after a newer one, leaves the same state. It returns the
events it rejects as bad data (they go to the dead-letter topic) and raises
``RetriableError`` when it cannot confirm the batch at all (the batch is then retried).
Whatever else it raises is taken as bad data somewhere in the batch (see ``RetryingSink``),
except ``PermanentError`` and ``ConfigError``: the environment refuses us, the data is fine.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from pipeline.backpressure import Backpressure
from pipeline.errors import (
    BadDataError,
    ConfigError,
    PermanentError,
    RetriableError,
    SinkRejectedError,
)
from pipeline.events import ChangeEvent
from pipeline.metrics import Metrics
from pipeline.retry import Backoff

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Rejection:
    """An event of a batch (by index) that a sink refused as bad data, and why."""

    index: int
    error: BadDataError


class Sink(Protocol):
    """A sink may also set ``takes_stale_reads = True``: it refuses stale writes itself (by
    version) and uses a snapshot read older than the row it holds (``op: r``) to fill
    columns it never had (the search index). Other sinks never see a read older than their
    row.

    And ``drains_per_partition = False``: its writes return so fast (Redis answers a
    pipeline in well under a millisecond) that a worker drains everything ready at once,
    rather than keeping one drain in flight per partition (``pipeline.worker_loop``), which
    pays only while a write waits on the network (Elasticsearch's ``_bulk``) and otherwise
    multiplies each drain's fixed cost (bench/RESULTS.md)."""

    name: str

    async def write(self, batch: Sequence[ChangeEvent]) -> list[Rejection]:
        """Apply the batch; return rejected events; raise RetriableError if not confirmed."""
        ...

    async def close(self) -> None: ...


#: What a sink may declare about itself (see :class:`Sink`), and each one's default.
TRAITS = {"takes_stale_reads": False, "drains_per_partition": True}


def copy_traits(wrapper: object, inner: object) -> None:
    """A wrapper declares what the sink it wraps declares."""
    for trait, default in TRAITS.items():
        setattr(wrapper, trait, getattr(inner, trait, default))


def drains_per_partition(sinks: Sequence[object]) -> bool:
    """Whether a worker writing to ``sinks`` keeps one drain in flight per partition (each
    sink's ``drains_per_partition``, see :class:`Sink`)."""
    return all(getattr(sink, "drains_per_partition", TRAITS["drains_per_partition"])
               for sink in sinks)


class RetryingSink:
    """Retries a sink's transient failures with capped exponential backoff and jitter, and
    isolates the events a sink cannot write, so neither stops the partition for good.

    - ``RetriableError`` (and ``OSError``/``TimeoutError`` a sink left untranslated): the
      batch (and so the partition) waits and is retried; transient failures are never
      dead-lettered.
    - ``PermanentError``, ``ConfigError``: raised on; an operator has to act.
    - Anything else (a ``BadDataError``, or an exception the sink did not expect): something
      in the batch cannot be written. The batch is split in halves, each written (and
      retried) on its own, until the events that still raise are alone; those are rejected
      with the exception as the reason and the rest is written. Sinks are idempotent, so
      writing part of a batch again is harmless.
    """

    def __init__(self, inner: Sink, initial_s: float, max_s: float, metrics: Metrics,
                 backpressure: Backpressure | None = None) -> None:
        self.inner = inner
        #: a worker's: its partitions stay paused while a write is retried
        self.backpressure = backpressure
        self.name = inner.name
        copy_traits(self, inner)
        self.initial_s = initial_s
        self.max_s = max_s
        self.metrics = metrics

    async def write(self, batch: Sequence[ChangeEvent]) -> list[Rejection]:
        backoff: Backoff | None = None
        attempt = 0
        while True:
            try:
                return await self.inner.write(batch)
            except (PermanentError, ConfigError):
                raise
            except (RetriableError, OSError, TimeoutError) as exc:
                attempt += 1
                self.metrics.inc("cdc_sink_retries_total", sink=self.name)
                backoff = backoff or Backoff(self.initial_s, max(self.initial_s, self.max_s),
                                             healthy_s=math.inf)
                delay = backoff.next_delay()
                log.warning(
                    "sink %s unavailable (attempt %d, retry in %.2fs): %s",
                    self.name, attempt, delay, exc,
                )
                if self.backpressure is None:
                    await asyncio.sleep(delay)
                else:
                    await self.backpressure.wait(delay)
            except Exception as exc:  # noqa: BLE001 - about the data: find the events
                return await self._isolate(batch, exc)

    async def _isolate(self, batch: Sequence[ChangeEvent], exc: Exception) -> list[Rejection]:
        """Write the halves of a batch that raised ``exc``; reject an event that raises alone."""
        if not batch:
            raise exc  # nothing to blame it on
        if len(batch) == 1:
            self.metrics.inc("cdc_sink_rejected_total", sink=self.name)
            if isinstance(exc, BadDataError):
                return [Rejection(0, exc)]
            log.warning("sink %s raised %s for one event; rejecting it as bad data",
                        self.name, type(exc).__name__, exc_info=exc)
            error = SinkRejectedError(f"{type(exc).__name__}: {exc}", sink=self.name)
            error.__cause__ = exc
            return [Rejection(0, error)]
        mid = len(batch) // 2
        first = await self.write(batch[:mid])
        second = await self.write(batch[mid:])
        return first + [Rejection(r.index + mid, r.error) for r in second]

    async def close(self) -> None:
        await self.inner.close()


class MeasuredSink:
    """Counts what a sink wrote and rejected, and commit-to-sink latency per event."""

    def __init__(self, inner: Sink, metrics: Metrics) -> None:
        self.inner = inner
        self.name = inner.name
        copy_traits(self, inner)
        self.metrics = metrics

    async def write(self, batch: Sequence[ChangeEvent]) -> list[Rejection]:
        started = time.perf_counter()
        rejected = await self.inner.write(batch)
        now_us = time.time() * 1e6
        self.metrics.observe_ms(
            "cdc_sink_batch_latency", (time.perf_counter() - started) * 1000, sink=self.name
        )
        bad = {r.index for r in rejected}
        self.metrics.observe_many_ms(
            "cdc_commit_to_sink_latency",
            (max(0.0, (now_us - event.source.ts_us) / 1000) for i, event in enumerate(batch)
             if i not in bad and event.source.snapshot == "false"),
            sink=self.name)
        self.metrics.inc("cdc_sink_events_total", len(batch) - len(bad), sink=self.name)
        if rejected:
            self.metrics.inc("cdc_sink_rejected_total", len(rejected), sink=self.name)
        return rejected

    async def close(self) -> None:
        await self.inner.close()
