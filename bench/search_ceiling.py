"""The Elasticsearch bulk ceiling of this machine, and the search worker against it.

``python -m bench search`` pre-fills a raw topic (as the worker part does), then in the same
run measures:

* the **ceiling**: ``python -m bench.search_ceiling --topic T ...`` reads every record of the
  topic, decodes it and builds, before the clock starts, exactly the ``_bulk`` bodies the
  search sink would send (batches of ``--batch`` events per partition, one write per
  document, external versions); then times sending them to a fresh index, with one request
  in flight and with one per partition (no pipeline, no Kafka, no decoding while timed);
* the **search worker** (``cdc worker --sink search``) draining the same topic, on the kafka
  and faust engines;

and prints both, and the ratio of worker to ceiling (events per second of the topic: the
ceiling's documents are the same reduced writes). Each phase also says where the machine's
CPU went: Elasticsearch's own process CPU (``_nodes/stats``), the worker's, and the rest of
the machine (``/proc/stat``: the bench's sender, Kafka, and whatever else runs on the box),
so a shortfall can be put on Elasticsearch, on us, or on the box.

``--search-profile`` adds one unmeasured drain of the kafka engine under ``py-spy --idle``:
the share of samples the worker spends waiting (on Elasticsearch's answer, or for records)
against the share in our own code.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
from confluent_kafka import Consumer, TopicPartition

from bench.common import Bench, log, machine_busy_s, run_json
from bench.worker import SinkWorker, _counter, faust_drain, prefill, worker_env
from pipeline.events import ChangeEvent, decode
from pipeline.harness import wait_until
from pipeline.sinks.search import document_id
from pipeline.sinks.search_batch import DocumentWrites, bulk_actions
from pipeline.sinks.search_mapping import INDEX_MAPPINGS

#: A sample of the event loop's thread whose leaf is in one of these waits on a socket: with
#: the consumer polled between batches, that is the worker waiting for Elasticsearch (and
#: for the changelog's acknowledgement, awaited the same way).
SOCKET_WAIT = ("Selector.select (selectors.py", "Selector.poll (selectors.py")
#: The kafka engine's loop line that calls the consumer (a C call: it shows as the leaf).
CONSUMER_CALL = "KafkaSinkWorker.run (pipeline/kafka/sink_worker.py"
#: Frames around every sample (the command, the loop): not worth listing.
OUTER_FRAMES = ("pipeline/cli.py", "pipeline/compose.py", CONSUMER_CALL)


def es_cpu_s(url: str) -> float:
    """CPU seconds Elasticsearch's node process has used so far."""
    response = httpx.get(f"{url}/_nodes/_local/stats/process",
                         params={"filter_path": "nodes.*.process.cpu.total_in_millis"})
    response.raise_for_status()
    (node,) = response.json()["nodes"].values()
    return float(node["process"]["cpu"]["total_in_millis"]) / 1000


class CpuShares:
    """Elasticsearch's CPU and the whole machine's over one phase of the bench."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.es0, self.box0, self.t0 = es_cpu_s(url), machine_busy_s(), time.monotonic()

    def result(self, worker_cpu_s: float | None = None) -> dict[str, Any]:
        es = es_cpu_s(self.url) - self.es0
        box = machine_busy_s() - self.box0
        wall = time.monotonic() - self.t0
        out = {"wall_s": round(wall, 2), "elasticsearch_cpu_s": round(es, 1),
               "machine_busy_cpu_s": round(box, 1),
               "elasticsearch_cores": round(es / wall, 2) if wall else None,
               "machine_busy_cores": round(box / wall, 2) if wall else None}
        if worker_cpu_s is not None:
            out["worker_cpu_s"] = worker_cpu_s
            out["rest_cpu_s"] = round(box - es - worker_cpu_s, 1)
        return out


def read_events(bootstrap: str, topic: str, records: int) -> dict[int, list[ChangeEvent]]:
    """Every change event of ``topic``, by partition, in offset order."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-search-ceiling",
                         "enable.auto.commit": False})
    meta = consumer.list_topics(topic, timeout=10).topics[topic]
    consumer.assign([TopicPartition(topic, p, 0) for p in meta.partitions])
    by_partition: dict[int, list[ChangeEvent]] = {p: [] for p in meta.partitions}
    seen = 0
    idle_since = time.monotonic()
    while seen < records and time.monotonic() - idle_since < 10:
        for msg in consumer.consume(1000, 1.0):
            if msg.error() is not None:
                continue
            seen += 1
            idle_since = time.monotonic()
            value = msg.value()
            if value is not None:
                event = decode(msg.key(), value)
                if event is not None and event.key is not None:
                    by_partition[msg.partition() or 0].append(event)
    consumer.close()
    return by_partition


def build_bodies(by_partition: dict[int, list[ChangeEvent]], index: str,
                 batch: int) -> list[list[tuple[bytes, int, int]]]:
    """Per partition, the ``_bulk`` bodies of its batches: (body, documents, events)."""
    out = []
    for events in by_partition.values():
        bodies = []
        for start in range(0, len(events), batch):
            chunk = events[start:start + batch]
            writes = DocumentWrites()
            for i, event in enumerate(chunk):
                assert event.key is not None
                writes.add(i, event, (index, document_id(event.key)))
            actions = bulk_actions(writes.latest, set())
            body = b"\n".join(line for _, lines in actions for line in lines) + b"\n"
            bodies.append((body, len(actions), len(chunk)))
        out.append(bodies)
    return out


async def send_all(url: str, streams: list[list[tuple[bytes, int, int]]]) -> float:
    """Send each stream's bodies one after another, the streams at once; seconds taken."""
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        async def one(bodies: list[tuple[bytes, int, int]]) -> None:
            for body, _, _ in bodies:
                r = await client.post("/_bulk?filter_path=errors,items.*.error", content=body,
                                      headers={"Content-Type": "application/x-ndjson"})
                r.raise_for_status()
                if orjson.loads(r.content).get("errors"):
                    raise RuntimeError(f"bulk errors: {r.text[:300]}")

        t0 = time.monotonic()
        await asyncio.gather(*(one(bodies) for bodies in streams))
        return time.monotonic() - t0


def ceiling(url: str, bootstrap: str, topic: str, records: int, index: str,
            batch: int) -> dict[str, Any]:
    by_partition = read_events(bootstrap, topic, records)
    events = sum(len(v) for v in by_partition.values())
    out: dict[str, Any] = {"events": events, "batch": batch, "partitions": len(by_partition)}
    for label, in_flight in (("one_in_flight", 1), ("one_per_partition", len(by_partition))):
        name = f"{index}-{label.replace('_', '-')}"
        httpx.delete(f"{url}/{name}")
        httpx.put(f"{url}/{name}", json={"mappings": INDEX_MAPPINGS}).raise_for_status()
        streams = build_bodies(by_partition, name, batch)
        docs = sum(n for bodies in streams for _, n, _ in bodies)
        if in_flight == 1:  # the partitions' batches interleaved, as a worker reads them
            merged = [b for group in _interleave(streams) for b in group]
            streams = [merged]
        cpu = CpuShares(url)
        seconds = asyncio.run(send_all(url, streams))
        shares = cpu.result()
        httpx.delete(f"{url}/{name}")
        out[label] = {"documents": docs, "seconds": round(seconds, 2),
                      "docs_per_s": round(docs / seconds, 1),
                      "events_per_s": round(events / seconds, 1),
                      "cpu": shares,
                      "elasticsearch_cpu_us_per_doc": round(
                          shares["elasticsearch_cpu_s"] * 1e6 / docs, 1)}
    return out


def _interleave(streams: list[list[Any]]) -> list[list[Any]]:
    rounds = max((len(s) for s in streams), default=0)
    return [[s[i] for s in streams if i < len(s)] for i in range(rounds)]


def waiting_share(raw: Path) -> dict[str, Any]:
    """Of the event loop thread's py-spy samples (taken with --idle --threads): the share
    waiting on a socket (Elasticsearch's answer), in the Kafka consumer, and working in our
    code or the libraries it calls (with the functions of ours that take most)."""
    threads: dict[str, list[tuple[list[str], int]]] = {}
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = [f.strip() for f in stack.split(";")]
        thread = next((f for f in frames if f.startswith("thread ")), "")
        frames = [f for f in frames if not f.startswith(("process ", "thread "))]
        if frames:
            threads.setdefault(thread, []).append((frames, int(count)))
    if not threads:
        return {"samples": 0}
    loop = max(threads.values(), key=lambda samples: sum(
        n for frames, n in samples if any("_run_once" in f for f in frames)))
    total = sum(n for _, n in loop)
    def waits(leaf: str) -> bool:
        return any(w in leaf for w in SOCKET_WAIT)

    socket = sum(n for frames, n in loop if waits(frames[-1]))
    consumer = sum(n for frames, n in loop if CONSUMER_CALL in frames[-1])
    ours: dict[str, int] = {}
    for frames, n in loop:
        if waits(frames[-1]) or CONSUMER_CALL in frames[-1]:
            continue
        for f in {f.rsplit(":", 1)[0] for f in frames if "pipeline/" in f
                  and not any(outer in f for outer in OUTER_FRAMES)}:
            ours[f] = ours.get(f, 0) + n

    def pct(n: int) -> float:
        return round(100 * n / total, 1)

    return {"samples": total, "waiting_on_socket_pct": pct(socket),
            "in_kafka_consumer_pct": pct(consumer),
            "working_pct": pct(total - socket - consumer),
            "top_ours_inclusive_pct": [(f, pct(n)) for f, n in
                                       sorted(ours.items(), key=lambda kv: -kv[1])[:14]]}


def profile(pid: int, seconds: float, out: Path) -> dict[str, Any]:
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        return {"skipped": "py-spy is not installed (.venv/bin/pip install py-spy)"}
    subprocess.run([spy, "record", "--pid", str(pid), "--subprocesses",
                    "--duration", str(int(seconds)), "--rate", "200", "--idle", "--threads",
                    "--format", "raw", "--output", str(out)],
                   check=True, capture_output=True)
    return {**waiting_share(out), "stacks": str(out)}


def run(bench: Bench, args: Any) -> dict[str, Any]:
    """The ceiling and the search worker (kafka and faust engines) over one pre-filled topic."""
    table, topic, events, records = prefill(bench, args.worker_events, args, tag="sc")
    url = bench.env["CDC_ELASTICSEARCH__URL"]
    log(f"search: Elasticsearch bulk ceiling over the {events} events' documents")
    batch = getattr(args, "search_batch", 500)
    out: dict[str, Any] = {"events": events, "topic_records": records, "batch_size": batch}
    out["ceiling"] = run_json([sys.executable, "-m", "bench.search_ceiling", "--url", url,
                               "--bootstrap", bench.bootstrap, "--topic", topic,
                               "--records", str(records), "--index", bench.name("ceiling"),
                               "--batch", str(batch)])
    best = max(out["ceiling"][k]["events_per_s"] for k in ("one_in_flight",
                                                           "one_per_partition"))
    log(f"  ceiling: {best} events/s ({out['ceiling']})")
    for engine in ("kafka", "faust"):
        log(f"search: cdc worker --sink search, engine {engine}, draining")
        cpu = CpuShares(url)
        drained = faust_drain(bench, "search", table, topic, events, records,
                              {"CDC_WORKER__ENGINE": engine}, f"s{engine[0]}")
        # the whole drain, the worker's start and stop included
        drained["cpu"] = cpu.result(drained["cpu_s"])
        drained["elasticsearch_cpu_us_per_event"] = round(
            drained["cpu"]["elasticsearch_cpu_s"] * 1e6 / events, 1)
        drained["worker_cpu_us_per_event"] = round(drained["cpu_s"] * 1e6 / events, 1)
        rate = drained["events_per_s"]
        drained["ratio_to_ceiling"] = round(rate / best, 2) if rate and best else None
        log(f"  {engine}: {rate} events/s, {drained['ratio_to_ceiling']} of the ceiling")
        out[f"worker_{engine}"] = drained
    if getattr(args, "search_profile", False):
        out["profile_kafka_engine"] = profile_worker(bench, table, topic)
        log(f"  profile: {out['profile_kafka_engine']}")
    return out


def profile_worker(bench: Bench, table: str, topic: str, seconds: float = 10) -> Any:
    """One more (unmeasured) kafka-engine drain, sampled by py-spy once it has started."""
    work = bench.work / "wk-sp-search"
    env = {**worker_env(bench, table, topic, "sps", work), "CDC_WORKER__ENGINE": "kafka"}
    proc = SinkWorker("search", env, work)
    try:
        wait_until(lambda: _counter(proc.snapshot(), "cdc_worker_records_total") > 0, 120, 0.1)
        return profile(proc.pid, seconds, work / "search-worker.stacks.txt")
    finally:
        proc.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.search_ceiling", description=__doc__)
    p.add_argument("--url", default="http://127.0.0.1:9200")
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--topic", required=True)
    p.add_argument("--records", type=int, required=True)
    p.add_argument("--index", required=True)
    p.add_argument("--batch", type=int, default=500)
    a = p.parse_args(argv)
    print(json.dumps(ceiling(a.url, a.bootstrap, a.topic, a.records, a.index, a.batch)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
