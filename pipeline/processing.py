"""The worker's processing step, independent of Faust: decode, fan out, dead-letter.

``BatchProcessor.process`` returns only when every sink confirmed its part of the batch and
every dead letter was acknowledged; the caller then lets the offsets be committed. A record
that cannot be decoded, or that a sink rejects as bad data, goes to the dead-letter topic and
the batch goes on; a transient failure is retried inside the sink wrapper while the batch
(and so the partition) waits.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from pipeline.deadletter import DeadLetterTopic, RawRecord
from pipeline.errors import BadDataError
from pipeline.events import ChangeEvent, decode
from pipeline.metrics import Metrics
from pipeline.sinks.base import Sink

log = logging.getLogger(__name__)


class BatchProcessor:
    def __init__(self, sinks: Sequence[Sink], dead_letters: DeadLetterTopic, metrics: Metrics):
        self.sinks = list(sinks)
        self.dead_letters = dead_letters
        self.metrics = metrics

    async def process(self, records: Sequence[RawRecord]) -> None:
        letters: list[tuple[RawRecord, str, BaseException]] = []
        events: list[ChangeEvent] = []
        origins: list[RawRecord] = []
        for record in records:
            try:
                event = decode(record.key, record.value)
            except BadDataError as exc:
                letters.append((record, exc.stage, exc))
                continue
            if event is None:
                self.metrics.inc("cdc_worker_tombstones_total")
                continue
            events.append(event)
            origins.append(record)
        self.metrics.inc("cdc_worker_records_total", len(records))
        if events:
            results = await asyncio.gather(*(sink.write(events) for sink in self.sinks))
            for sink, rejected in zip(self.sinks, results, strict=True):
                for rejection in rejected:
                    letters.append((origins[rejection.index], f"sink:{sink.name}", rejection.error))
        if letters:
            for record, stage, error in letters:
                log.warning(
                    "dead-lettering %s[%d]@%d at %s: %s",
                    record.topic, record.partition, record.offset, stage, error,
                )
                self.metrics.inc("cdc_dead_letters_total", stage=stage)
            await self.dead_letters.send(letters)
