"""The Faust app of one sink: a task reads the raw CDC topics in batches and writes them.

Each configured sink runs as its own app, with its own consumer group (``<app_id>-<sink>``),
so a slow or failing sink never stalls another. ``cdc worker`` starts one process per sink;
``cdc worker --sink search`` (or ``CDC_WORKER_SINK=search faust -A agents.app worker``) runs
one. Settings come from the file in ``CDC_CONFIG`` plus ``CDC_*`` environment overrides.
Scale a sink by starting more of its workers: the raw topics' partitions are shared among
them, and each row's changes stay on one partition.

The dedup seen-set is a Faust table, its entries in ``worker.store`` (``agents.seen_table``;
RocksDB on disk by default), whose changelog (``<group>-dedup-changelog``) the worker
writes itself (``pipeline.kafka.changelog``): each row's entry goes to the changelog partition
of the raw partition it came from, so whichever worker owns that partition after a restart or
rebalance recovers the entries it needs when Faust restores the table.

Records come from Faust's consumer a fetch at a time (``agents.faust_internals.BatchFetch``),
not one event at a time through an agent's stream: that per-event machinery cost more than
the processing (bench/RESULTS.md). The app is otherwise Faust's: its consumer, group,
rebalances, table recovery, acknowledgements and commits. Writing, retrying, flushing the
changelog and acknowledging are the skeleton both engines share (``pipeline.worker_loop``);
while the sink is down, the raw partitions are paused and the consumer keeps polling
(``pipeline.backpressure``, ``agents.faust_internals.PausedFetching``).

Faust's traps, and how this module avoids them:
- An exception escaping an agent or task acks the events it was handling (they would be
  skipped). So nothing escapes: bad data goes to the dead-letter topic inside the processor,
  and any other failure is retried with backoff while the records wait. Should anything
  escape anyway, the process exits at once without acking (redelivery, not loss).
- Records are acknowledged by us, per partition in offset order (``pipeline.acks``), only
  once they are written, dead-lettered or dropped: offsets are committed only after the sink
  confirmed. Records held by the reorder buffer hold back the acks of their partition.
- One task takes the batches; drains run beside it (``pipeline.worker_loop``): one in
  flight per partition for a sink that waits on the network (search), one of everything
  ready for a quick one (cache), as each sink declares (``drains_per_partition``). The
  next batch is read and decoded meanwhile, and the ack ledger commits a partition only up
  to its first unfinished record.
- Around a restart or rebalance Faust can skip a record (and ack it for us), or drop one
  behind its read offset; its next commit would then pass it. ``agents.guard`` lets only
  our own acks through and checks every partition's offsets are taken without a hole the
  log does not have, seeking back where one was skipped (``pipeline.continuity``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path
from typing import NoReturn

import faust

from agents import faust_internals
from agents.faust_internals import Fetched
from agents.guard import ContinuityGuard
from agents.seen_table import SeenSetTable
from pipeline import heap
from pipeline.backpressure import Backpressure
from pipeline.compose import build_processor, start_metrics, worker_data_dir
from pipeline.config import load_settings
from pipeline.errors import EXIT_PERMANENT, PermanentError
from pipeline.kafka.changelog import ChangelogStore, ChangelogWriter
from pipeline.kafka.client import faust_credentials, poll_limits
from pipeline.seenstore import open_seen_store
from pipeline.sinks.registry import select_sink
from pipeline.worker_loop import WorkerLoop

log = logging.getLogger(__name__)

settings = load_settings()
SINK = select_sink(settings, os.environ.get("CDC_WORKER_SINK"))
GROUP = settings.group_id(SINK)
metrics, exporter = start_metrics(settings, f"worker-{SINK}-{os.getpid()}")
DATADIR = str(worker_data_dir(GROUP))
os.makedirs(os.path.dirname(DATADIR), exist_ok=True)

app = faust.App(
    GROUP,
    broker=f"kafka://{settings.kafka.bootstrap_servers}",
    broker_credentials=faust_credentials(settings.kafka.client),
    store="memory://",  # the seen-set table brings its own (agents.seen_table)
    key_serializer="raw",
    value_serializer="raw",
    consumer_auto_offset_reset="earliest",
    broker_commit_interval=0.5,
    web_enabled=settings.worker.web_port is not None,
    web_port=settings.worker.web_port or 6066,
    web_bind="127.0.0.1",
    topic_allow_declare=False,
    Worker="agents.faust_worker:CdcWorker",  # Faust's log lines in the pipeline's format
    topic_disable_leader=True,
    topic_partitions=settings.kafka.partitions,
    producer_acks=-1,
    datadir=DATADIR,
    # a sink outage does not count against it: the worker pauses and keeps polling
    broker_max_poll_interval=settings.worker.max_poll_interval_ms / 1000,
    broker_session_timeout=poll_limits(settings.worker.max_poll_interval_ms)[
        "session.timeout.ms"] / 1000,
)

raw_topics = app.topic(*settings.raw_topics(), key_serializer="raw", value_serializer="raw")

# The entries live in worker.store (RocksDB on disk by default), as on the kafka engine.
seen = SeenSetTable(
    app, name="dedup", default=None, partitions=settings.kafka.partitions,
    beacon=app.tables.beacon,
    backing=open_seen_store(settings.worker.store, Path(DATADIR), settings.worker.store_chosen),
    schema=faust.Schema(key_type=str, value_type=str,
                        key_serializer="json", value_serializer="json"),
)
app.tables.add(seen)
# Faust restores the table from the changelog at start; the worker writes the changelog
# itself, in batches with the C producer (Faust's own write path, one aiokafka send per
# entry, cut throughput to 0.29 of dedup off). It reads and writes the table's backing
# store directly (the one Faust's restore fills), in batches.
store = ChangelogStore(
    ChangelogWriter(f"{GROUP}-dedup-changelog", settings.kafka), seen.backing
)
fetch = faust_internals.BatchFetch(settings.raw_topics())
fetch.install(app, raw_topics)
# While the sink is down the raw partitions are paused and the consumer keeps polling.
backpressure = Backpressure(metrics, SINK)
backpressure.attach(faust_internals.PausedFetching(app, fetch))
processor = build_processor(
    settings, SINK, metrics, dedup_store=store, partition_scope=store.scope,
    backpressure=backpressure,
)
guard = ContinuityGuard(
    app, GROUP, settings.raw_topics(), settings.kafka, metrics, seek=fetch.seek
)


def on_rebalance_start() -> None:
    """A rebalance starting drops the batches not yet taken, as Faust clears its agents'
    queues (called on the consumer's thread)."""
    metrics.inc("cdc_worker_rebalances_total", sink=SINK)
    guard.call_soon(fetch.clear)


faust_internals.on_rebalance_start(app, on_rebalance_start)
lock = asyncio.Lock()


async def ack(messages: list[Fetched]) -> None:
    """Acknowledge finished messages (the ledger's contiguous prefix per partition)."""
    guard.acknowledge(messages)


loop: WorkerLoop[Fetched] = WorkerLoop(
    processor, store, metrics, ack, sink=SINK,
    retry_initial_s=settings.worker.retry_initial_ms / 1000,
    retry_max_s=settings.worker.retry_max_ms / 1000, backpressure=backpressure,
)


def stop_for_good(exc: PermanentError) -> NoReturn:
    """Exit at once, acking nothing (redelivery, not loss), with the code a supervisor does
    not restart: the agent and the timers both drain, so both end here."""
    log.critical("worker for sink %s stops: %s", SINK, exc)
    logging.shutdown()
    os._exit(EXIT_PERMANENT)


def collect() -> None:
    """Take the drains that ended off the books; one that failed stops the worker."""
    try:
        loop.collect()
    except PermanentError as exc:  # refused credentials: restarting could not help
        stop_for_good(exc)
    except BaseException:  # noqa: BLE001 - see the module docstring: exit rather than ack
        log.critical("a drain failed outside its retries; exiting without acking",
                     exc_info=True)
        logging.shutdown()
        os._exit(70)


def start_drain() -> None:
    """Write what is ready and ack every finished prefix, in the background: one drain at
    a time, the next starting by itself when it ends (``pipeline.worker_loop``)."""
    collect()
    loop.start_drain()


async def wait_for_the_drain() -> None:
    try:
        await loop.wait_any()
    finally:
        collect()


def accept(messages: list[Fetched]) -> None:
    loop.accept([(message.record, message) for message in messages])


@app.task
async def consume() -> None:
    """Raw topics -> this worker's sink; dead letters to the dead-letter topic."""
    within = max(settings.worker.batch_wait_ms, 1) / 1000
    batch_size = settings.worker.batch_size
    heap.settle()  # the app, its consumer and tables are up: freeze them (pipeline.heap)
    try:
        async for messages in fetch.batches(batch_size, within):
            taken = time.perf_counter()
            await guard.assignment_known()
            async with lock:
                # Past a gap a message is held; settle() releases it or re-reads it.
                admitted = guard.admitted(messages)
                # Faust waits at a revocation for every message handed out; the held ones
                # must not stay referenced here (the guard lets go of them).
                del messages
                records = [(message.record, message) for message in admitted]
                del admitted
                # decoded here, while the previous batch's drain waits for the sink
                loop.accept(records)
                del records
                released = await guard.settle(idle=False)
                if released:
                    accept(released)
                del released
                start_drain()
            metrics.inc("cdc_worker_batches_total")
            # busy time per batch, without the wait for it (``cdc tune``'s service time)
            metrics.observe_ms("cdc_worker_batch_processing",
                               (time.perf_counter() - taken) * 1000)
            # Read ahead at most one batch beyond the drains in flight: memory stays bounded,
            # also while one partition's drain is slow and the others' keep ending.
            while loop.draining and loop.processor.pending >= batch_size:
                await wait_for_the_drain()
    except asyncio.CancelledError:
        raise
    except BaseException:  # noqa: BLE001 - see the module docstring: exit rather than ack
        log.critical("worker failed outside batch processing; exiting without acking",
                     exc_info=True)
        logging.shutdown()
        os._exit(70)


@app.timer(interval=max(settings.worker.ordering.idle_flush_ms, 100) / 2000)
async def flush_quiet_partitions() -> None:
    """A quiet partition's buffered events must not wait for the next event forever."""
    async with lock:
        loop.flush_idle()
        start_drain()  # also collects the drain that ended (and stops on a failed one)


@app.timer(interval=1.0)
async def settle_stalled_partitions() -> None:
    """A record the consumer skipped with nothing after it shows only as a stall."""
    async with lock:
        released = await guard.settle(idle=loop.waiting() == 0)
        if released:
            accept(released)
            start_drain()
    for topic, lag in guard.lag_by_topic().items():
        metrics.set("cdc_worker_consumer_lag_records", lag, topic=topic)


@app.timer(interval=settings.worker.dedup.evict_interval_s)
async def evict_old_dedup_entries() -> None:
    async with lock:
        await loop.evict()
