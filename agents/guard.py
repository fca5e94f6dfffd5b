"""Guards around Faust's consumer: gated acknowledgements and offset continuity.

faust-streaming can skip a record around a rebalance or restart (and acknowledge it for the
agent), or drop one behind its read offset; its next commit then moves past a record no sink
saw. :class:`ContinuityGuard` puts :mod:`pipeline.continuity` between Faust and the agent:

- the agent's acknowledgements go straight to Faust's bookkeeping (:meth:`acknowledge`);
  Faust's own acknowledgements of raw-topic records (of records the agent never finished)
  stop at a gate;
- on assignment it learns where the group left off, sorts every delivered record
  (take / repeat / hold) and, when a gap or a stall shows, asks Kafka where the next record
  really is and seeks Faust back to the missing offset (:meth:`reread`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

from agents import faust_internals
from pipeline.config import KafkaSettings
from pipeline.continuity import Admission, OffsetContinuity
from pipeline.errors import RetriableError
from pipeline.kafka.offsets import committed_offsets, log_offsets
from pipeline.metrics import Metrics
from pipeline.retry import Backoff

log = logging.getLogger(__name__)

Partition = tuple[str, int]


class ContinuityGuard:
    def __init__(self, app: Any, group: str, topics: Iterable[str], kafka: KafkaSettings,
                 metrics: Metrics, stall_s: float = 2.0,
                 seek: Callable[[Any, Partition, int], Awaitable[None]] = faust_internals.seek,
                 ) -> None:
        self.app = app
        self._seek = seek
        self.group = group
        self.topics = frozenset(topics)
        self.kafka = kafka
        self.metrics = metrics
        self.continuity: OffsetContinuity[Partition, Any] = OffsetContinuity(stall_s=stall_s)
        self._gated: Any = None
        self._confirmed_gaps: set[Partition] = set()
        # Set once the current assignment's positions are known; records delivered before
        # then wait for it (Faust resumes streams before its assignment signal finishes).
        self._assignment_known = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        app.on_partitions_assigned.connect(self._on_assigned)
        app.on_partitions_revoked.connect(self._on_revoked)
        # Faust waits, at the start of a rebalance, until every record it handed out is
        # acknowledged; held records never would be. So they are let go of first (the new
        # assignment re-reads from the committed offsets).
        faust_internals.on_rebalance_start(app, self._drop_held_soon)

    def _drop_held_soon(self) -> None:
        self.call_soon(self.continuity.drop_held)

    def call_soon(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the worker's event loop (safe from Faust's consumer thread)."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(fn)

    # -- acknowledgements -----------------------------------------------------------------
    def _gate(self) -> None:
        """Gate the consumer once: Faust's own acks of records the agent never finished stop
        here, and so do the holes it notices between two delivered offsets (after a skip or
        one of our seeks that is a record no sink saw): only holes settle() confirmed to be
        the log's own may be recorded."""
        consumer = self.app.consumer
        if self._gated is consumer:
            return
        topics, metrics = self.topics, self.metrics
        confirmed = self._confirmed_gaps

        def allow(message: Any) -> bool:
            if message.topic not in topics:
                return True
            metrics.inc("cdc_worker_acks_blocked_total")
            return False

        def allow_gap(tp: Any) -> bool:
            return tp.topic not in topics or (tp.topic, tp.partition) in confirmed

        faust_internals.gate_acks(consumer, allow, allow_gap)
        self._gated = consumer

    async def _record_log_gaps(self, tp: Partition, start: int, until: int,
                               in_log: list[int]) -> None:
        """Tell Faust about holes the log itself has in ``[start, until]``, so its commit
        can move over them."""
        present = set(in_log)
        missing = [o for o in range(start, until + 1) if o not in present]
        if not missing:
            return
        ranges: list[tuple[int, int]] = []
        for offset in missing:
            if ranges and ranges[-1][1] == offset - 1:
                ranges[-1] = (ranges[-1][0], offset)
            else:
                ranges.append((offset, offset))
        self._confirmed_gaps.add(tp)
        try:
            for first, last in ranges:
                await faust_internals.record_gap(self.app.consumer, tp, first, last)
        finally:
            self._confirmed_gaps.discard(tp)

    def acknowledge(self, messages: Iterable[Any]) -> None:
        """The agent finished ``messages``: Faust may commit past them."""
        self._gate()
        faust_internals.acknowledge(self.app.consumer, messages)

    # -- admission ------------------------------------------------------------------------
    def admit(self, message: Any) -> bool:
        """True to process the message now; False when it is held back (past a gap: it is
        released by :meth:`settle`, or comes again after a re-read)."""
        return bool(self.admitted([message]))

    def admitted(self, messages: Sequence[Any]) -> list[Any]:
        """The messages :meth:`admit` lets through, in order: one clock read for a batch,
        and one admission for each run of consecutive offsets of a partition that starts
        where the partition is expected (a fetch's records come so)."""
        self._gate()
        continuity, now = self.continuity, time.monotonic()
        admit, admit_run = continuity.admit, continuity.admit_run
        out: list[Any] = []
        i, count = 0, len(messages)
        while i < count:
            first = messages[i]
            topic, partition, offset = first.topic, first.partition, first.offset
            end = i + 1
            while end < count:
                message = messages[end]
                offset += 1
                if (message.offset != offset or message.partition != partition
                        or message.topic != topic):
                    break
                end += 1
            run = messages[i:end]
            if admit_run((topic, partition), first.offset, run[-1].offset, now):
                out += run
            else:
                for message in run:
                    if admit((topic, partition), message.offset, message,
                             now) is not Admission.HELD:
                        out.append(message)
            i = end
        if len(out) < len(messages):
            self.metrics.inc("cdc_worker_held_total", len(messages) - len(out))
        return out

    async def assignment_known(self) -> None:
        """Wait until the positions of the current assignment are known."""
        await self._assignment_known.wait()

    async def _on_assigned(self, sender: Any, assigned: Any, **_: Any) -> None:
        self._loop = asyncio.get_running_loop()
        self._gate()  # before anything of the new assignment is delivered
        mine = [(tp.topic, tp.partition) for tp in assigned if tp.topic in self.topics]
        positions: dict[Partition, int | None] = {}
        backoff = Backoff(1.0, 8.0)
        for attempt in range(6):
            try:
                positions = dict(await asyncio.to_thread(
                    committed_offsets, self.kafka, self.group, mine, 10.0, True))
                break
            except RetriableError as exc:
                log.warning("where the group left off is unknown (attempt %d): %s",
                            attempt + 1, exc)
                await asyncio.sleep(backoff.next_delay())
        else:  # guessing from the first record delivered could skip one: restart instead
            raise RetriableError("where the group left off stayed unknown; restarting")
        now = time.monotonic()
        for tp in mine:
            self.continuity.assigned(tp, positions.get(tp), now)
        self._assignment_known.set()

    async def _on_revoked(self, sender: Any, revoked: Any, **_: Any) -> None:
        self._assignment_known.clear()
        for tp in revoked:
            self.continuity.revoked((tp.topic, tp.partition))

    # -- settling gaps --------------------------------------------------------------------
    def _highwater(self, tp: Partition) -> int | None:
        return faust_internals.highwater(self.app.consumer, tp)

    def lag_by_topic(self) -> dict[str, int]:
        """Records in the log (as last fetched) not yet taken, per topic."""
        lag: dict[str, int] = {}
        for tp in list(self.continuity.partitions()):
            end, taken = self._highwater(tp), self.continuity.expected(tp)
            if end is not None and taken is not None:
                lag[tp[0]] = lag.get(tp[0], 0) + max(0, end - taken)
        return lag

    async def settle(self, idle: bool) -> list[Any]:
        """Settle every partition with a gap (or, when the agent is ``idle``, a stall)
        against the log; returns the held messages to process now, in offset order per
        partition, and seeks Faust back where it skipped a record."""
        ends = self._highwater if idle else (lambda _tp: None)
        release: list[Any] = []
        for tp, start, until in self.continuity.due(time.monotonic(), ends):
            try:
                held_in_log = await asyncio.to_thread(
                    log_offsets, self.kafka, tp, start, until)
            except RetriableError as exc:  # asked again on the next call
                log.warning("%s[%d]: cannot check offsets %d..%d yet: %s",
                            *tp, start, until, exc)
                continue
            settled = self.continuity.settle(tp, start, until, held_in_log, time.monotonic())
            release.extend(settled.release)
            last_settled = until if settled.seek_to is None else settled.seek_to - 1
            if last_settled >= start:
                await self._record_log_gaps(tp, start, last_settled, held_in_log)
            if settled.seek_to is None:
                if until + 1 - start > len(held_in_log):
                    self.metrics.inc("cdc_worker_log_gaps_total")
                continue
            log.warning("%s[%d]: offset %d was not delivered by the consumer; re-reading "
                        "from it", *tp, settled.seek_to)
            self.metrics.inc("cdc_worker_rereads_total")
            await self._seek(self.app.consumer, tp, settled.seek_to)
        return release
