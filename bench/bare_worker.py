"""One sink's worker without faust: a bare confluent-kafka consume loop.

``python -m bench.bare_worker --sink search --records N`` (settings from CDC_* variables, as
``cdc worker --sink``) consumes the raw topics in batches of ``worker.batch_size`` (waiting
at most ``worker.batch_wait_ms``) and runs what the faust agent runs per batch: the
``BatchProcessor`` of ``pipeline.compose.build_processor`` (decode, reorder, dedup, the real
sink, dead letters) with ``accept`` + ``drain``; a quiet poll flushes the reorder buffer as
the agent's timer does. The dedup seen-set is a plain dict here (faust keeps it in a table
with a changelog topic: that cost is part of what this comparison shows). Offsets are
committed asynchronously after each batch. Stops after N finished records.
Prints one JSON line: records, change events, seconds from the first record
to the last, events/s, CPU seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from typing import Any

from confluent_kafka import Consumer

from bench.common import cpu_seconds
from pipeline import heap
from pipeline.compose import build_processor
from pipeline.config import load_settings
from pipeline.deadletter import RawRecord
from pipeline.metrics import Metrics


async def run(sink: str, total: int, timeout: float) -> dict[str, object]:
    settings = load_settings()
    metrics = Metrics("bare-worker")
    processor = build_processor(settings, sink, metrics, dedup_store={})
    w = settings.worker
    consumer = Consumer({
        "bootstrap.servers": settings.kafka.bootstrap_servers,
        "group.id": settings.group_id(sink) + "-bare",
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        "fetch.max.bytes": 64 << 20,
    })
    consumer.subscribe(list(settings.raw_topics()))
    heap.settle()  # as both engines do once set up
    seen = events = 0
    first = None
    cpu0 = 0.0
    deadline = time.monotonic() + timeout
    wait = max(w.batch_wait_ms, 1) / 1000
    while seen < total and time.monotonic() < deadline:
        msgs = consumer.consume(w.batch_size, wait)
        if not msgs:
            processor.flush_idle()
            seen += len(await processor.drain())
            continue
        if first is None:
            first = time.monotonic()
            cpu0 = cpu_seconds(os.getpid())
        records = []
        for m in msgs:
            if m.error() is not None:
                continue
            ts = m.timestamp()[1]
            raw_headers: Any = m.headers() or ()
            headers = tuple((str(k), v if isinstance(v, bytes) else str(v or "").encode())
                            for k, v in raw_headers)
            records.append(RawRecord(str(m.topic()), int(m.partition() or 0),
                                     int(m.offset() or 0), m.key(), m.value(),
                                     ts if ts > 0 else 0, headers))
        processor.accept(records)
        seen += len(await processor.drain())
        consumer.commit(asynchronous=True)
        events += sum(1 for r in records if r.value is not None)
    end = time.monotonic()
    cpu = cpu_seconds(os.getpid()) - cpu0
    consumer.close()
    for s in processor.sinks:
        await s.close()
    secs = end - (first or end)
    return {"records": seen, "events": events, "seconds": round(secs, 2),
            "events_per_s": round(events / secs, 1) if secs else None,
            "records_per_s": round(seen / secs, 1) if secs else None,
            "cpu_s": round(cpu, 1), "batch_size": w.batch_size, "sink": sink}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.bare_worker")
    p.add_argument("--sink", required=True)
    p.add_argument("--records", type=int, required=True)
    p.add_argument("--timeout", type=float, default=1800)
    a = p.parse_args(argv)
    result = asyncio.run(run(a.sink, a.records, a.timeout))
    print(json.dumps(result), flush=True)
    return 0 if result["records"] >= a.records else 1  # type: ignore[operator]


if __name__ == "__main__":
    sys.exit(main())
