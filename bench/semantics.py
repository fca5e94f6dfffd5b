"""Worker throughput with evolution, dedup and ordering on versus off; dedup memory.

    python -m bench.semantics [--events 100000] [--rows-for-memory 1000000]
                              [--engine faust|kafka|both] [--store memory://|rocksdb://]

1. Throughput: a raw topic is filled with N change events (distinct rows, JSON), then a real
   ``cdc worker --sink cache`` process (each ``worker.engine``; Redis UNLINK: a cheap sink,
   so the figure shows the processing cost rather than Elasticsearch's) drains it from the
   start, once
   with evolution (an additive v1 -> v2 step on every event), ordering and dedup (Faust
   table with its changelog) on, once with all three off. Events/s = N / drain time,
   measured from the consumer group's committed offsets.
2. Memory: the dedup seen-set (``pipeline.dedup``) over a plain dict, as the worker's
   ``memory://`` table holds it, for M distinct rows: bytes per entry and per million.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import tempfile
import time
import uuid
from pathlib import Path

import orjson
from confluent_kafka import Producer

from pipeline import stack
from pipeline.capture.publisher import ensure_topics
from pipeline.config import load_settings
from pipeline.dedup import Deduplicator
from pipeline.events import ChangeEvent, SourceInfo, encode_key, encode_value
from pipeline.harness import PipelineProcess, group_stable, wait_until
from pipeline.status import consumer_lag

TABLE = "bench.items"


def _event(i: int) -> ChangeEvent:
    row = {"id": i, "name": f"item {i}", "qty": i % 100, "price": f"{i % 1000}.99"}
    source = SourceInfo("postgresql", "bench", "bench", "bench", "items",
                        ts_us=int(time.time() * 1e6), tx_id=i, lsn=1_000_000 + i * 64,
                        commit_lsn=1_000_000 + i * 64 - 32)
    return ChangeEvent("c", {"id": i}, None, row, source, int(time.time() * 1000))


def _schemas(root: Path) -> Path:
    folder = root / "schemas" / TABLE
    folder.mkdir(parents=True)
    v1 = [{"name": "id", "type": "int"}, {"name": "name", "type": "string"},
          {"name": "qty", "type": "int"}, {"name": "price", "type": "string"}]
    v2 = [*v1, {"name": "currency", "type": "string", "default": "USD"}]
    for n, fields in ((1, v1), (2, v2)):
        (folder / f"v{n}.avsc").write_text(json.dumps(
            {"type": "record", "name": "Value", "namespace": TABLE, "fields": fields}))
    (root / "schemas" / "ids.yaml").write_text(f"{TABLE}:\n  1: 8001\n  2: 8002\n")
    envelope = Path(__file__).resolve().parents[1] / "schemas" / "envelope.avsc"
    (root / "schemas" / "envelope.avsc").write_text(envelope.read_text())
    return root / "schemas"


def _drain(env: dict[str, str], events: int, work: Path, label: str) -> float:
    settings = load_settings(None, env)
    group = settings.group_id("cache")
    proc = PipelineProcess("worker", env, work / f"worker-{label}.log")
    try:
        assert wait_until(lambda: group_stable(settings.kafka, group), 90), proc.tail()
        started = time.monotonic()
        done = wait_until(lambda: sum(consumer_lag(settings, group).values()) == 0,
                          600, 0.1)
        elapsed = time.monotonic() - started
        assert done, proc.tail()
    finally:
        proc.stop()
    return events / elapsed


def throughput(events: int, engine: str = "faust", store: str = "memory://") -> dict[str, float]:
    info = stack.load() or stack.up()
    run = uuid.uuid4().hex[:8]
    work = Path(tempfile.mkdtemp(prefix="bench-semantics-"))
    topic_prefix = f"bsem{run}"
    base = {
        **stack.env_vars(info),
        "CDC_POSTGRES__TABLES": f"[{TABLE}]",
        "CDC_KAFKA__TOPIC_PREFIX": topic_prefix,
        "CDC_WORKER__DEAD_LETTER_TOPIC": f"{topic_prefix}.dlq",
        "CDC_WORKER__BATCH_SIZE": "2000",
        "CDC_WORKER_DATADIR": str(work / "data"),
        "CDC_LOG_LEVEL": "WARNING",
        "CDC_WORKER__ENGINE": engine,
        "CDC_WORKER__STORE": store,
        "CDC_ELASTICSEARCH__URL": "",  # cache sink only
    }
    base.pop("CDC_ELASTICSEARCH__URL")
    base["CDC_REDIS__KEYS"] = json.dumps({TABLE: ["item:{id}"]})
    settings = load_settings(None, base)
    topic = settings.kafka.raw_topic(TABLE)
    ensure_topics(settings.kafka, [topic])
    producer = Producer({"bootstrap.servers": settings.kafka.bootstrap_servers,
                         "linger.ms": 20, "compression.type": "lz4",
                         "partitioner": "murmur2_random"})
    for i in range(events):
        event = _event(i)
        while True:
            try:
                producer.produce(topic, encode_value(event), encode_key(event))
                break
            except BufferError:
                producer.poll(0.1)
    assert producer.flush(60) == 0
    schemas = _schemas(work)
    on = {**base, "CDC_WORKER__APP_ID": f"on{run}",
          "CDC_EVOLUTION__SCHEMAS_DIR": str(schemas)}
    off = {**base, "CDC_WORKER__APP_ID": f"off{run}",
           "CDC_WORKER__ORDERING__ENABLED": "false", "CDC_WORKER__DEDUP__ENABLED": "false"}
    return {"off": _drain(off, events, work, "off"), "on": _drain(on, events, work, "on")}


def memory(rows: int) -> dict[str, float]:
    """Bytes the dedup seen-set holds per row, over a dict (the memory:// table's shape)."""
    gc.collect()
    store: dict[str, str] = {}
    dedup = Deduplicator(store)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for i in range(rows):
        dedup.remember(_event(i))
    gc.collect()
    grown_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    key_bytes = sum(len(k) for k in store) / len(store)
    value_bytes = sum(len(v) for v in store.values()) / len(store)
    per_entry = grown_kb * 1024 / rows
    return {"rows": rows, "bytes_per_entry_rss": per_entry,
            "mb_per_million": per_entry * 1_000_000 / 2**20,
            "key_bytes": key_bytes, "value_bytes": value_bytes}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.semantics")
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--rows-for-memory", type=int, default=1_000_000)
    parser.add_argument("--engine", choices=["faust", "kafka", "both"], default="both",
                        help="worker.engine to measure (default: both, one after the other)")
    parser.add_argument("--store", choices=["memory://", "rocksdb://"], default="memory://",
                        help="worker.store for the kafka engine (Faust: always memory://)")
    args = parser.parse_args()
    mem = memory(args.rows_for_memory)
    print(f"dedup seen-set: {mem['rows']:,} rows -> {mem['bytes_per_entry_rss']:.0f} B/entry "
          f"RSS ({mem['mb_per_million']:.0f} MB per million distinct rows); "
          f"key {mem['key_bytes']:.0f} B + value {mem['value_bytes']:.0f} B of text")
    engines = ["faust", "kafka"] if args.engine == "both" else [args.engine]
    out = {}
    for engine in engines:
        store = args.store if engine == "kafka" else "memory://"
        rates = out[engine] = throughput(args.events, engine, store)
        print(f"worker.engine={engine}, worker.store={store} (cache sink), "
              f"{args.events:,} events: "
              f"off {rates['off']:,.0f} ev/s, on (evolution+ordering+dedup) "
              f"{rates['on']:,.0f} ev/s, on/off {rates['on'] / rates['off']:.2f}")
    print(orjson.dumps({"memory": mem, "throughput": out, "pid": os.getpid()}).decode())


if __name__ == "__main__":
    main()
