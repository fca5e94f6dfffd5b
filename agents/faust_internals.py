"""Every use of Faust's internals, in one place, checked against the Faust version at import.

The worker relies on parts of faust-streaming that are not public API: it takes the raw
topics' records from the consumer a fetch at a time (:class:`BatchFetch`, as light
:class:`Fetched` tokens Faust tracks and acknowledges like its messages), gates the
consumer's acknowledgements and gap bookkeeping (``agents.guard``), hooks the start of a
rebalance, pauses partitions in aiokafka while a sink is down (:class:`PausedFetching`) and
keeps the dedup table's entries in a store of its own (``agents.seen_table`` overrides
``Table._new_store`` and the memory store's recovery hooks, on the bases named here).
Those parts change between releases without notice. So this module names each one,
checks at import that the installed Faust is a version the worker was tested with and that
every attribute it touches is still there, and refuses to start with a message naming what
changed (:class:`FaustIncompatible`) instead of losing records quietly at run time.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import inspect
import time
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

import faust
from aiokafka.consumer.fetcher import PartitionRecords
from faust.sensors.monitor import Monitor
from faust.stores.memory import Store as MemoryStore
from faust.transport.consumer import Consumer
from faust.types import TP

from pipeline.deadletter import RawRecord
from pipeline.errors import ConfigError

#: Faust releases this module was written and tested against (``major.minor``).
TESTED_VERSIONS = ("0.15",)

#: (where, attribute) pairs the worker reads, wraps or calls, beyond Faust's public API.
REQUIRED: tuple[tuple[type, str], ...] = (
    (Consumer, "_drain_messages"),
    (Consumer, "_wait_next_records"),
    (Consumer, "_to_message"),
    (Consumer, "flow_active"),
    (Consumer, "commit"),
    (Consumer, "consumer_stopped_errors"),
    (Consumer, "ack"),
    (Consumer, "_add_gap"),
    (Consumer, "seek_wait"),
    (Consumer, "highwater"),
    (faust.App, "on_rebalance_start"),
    (faust.App, "consumer_generation_id"),
    (faust.App, "transport"),
    (faust.App, "consumer"),
    (faust.Table, "_new_store"),
    (MemoryStore, "__post_init__"),
    (MemoryStore, "apply_changelog_batch"),
    (MemoryStore, "on_recovery_completed"),
    (MemoryStore, "on_stop"),
    (Monitor, "stream_inbound_time"),
    (Monitor, "tp_read_offsets"),
)
#: Attributes a consumer instance has once built (checked when the worker starts).
REQUIRED_ON_CONSUMER = ("_read_offset", "_buffered_partitions", "suspend_flow", "callback",
                        "_n_acked", "_commit_every", "_stopped", "_unacked_messages", "_thread")


class FaustIncompatible(ConfigError):
    """The installed Faust is not one the worker can run on safely."""

    def __init__(self, message: str) -> None:
        super().__init__("worker.engine", message)


def check(version: str = faust.__version__,
          required: Iterable[tuple[type, str]] = REQUIRED) -> None:
    """Raise :class:`FaustIncompatible` unless ``version`` is tested and every required
    attribute exists."""
    if not version.startswith(tuple(v + "." for v in TESTED_VERSIONS)):
        raise FaustIncompatible(
            f"faust-streaming {version} is installed; the faust worker engine relies on "
            f"internals of faust-streaming {', '.join(v + '.x' for v in TESTED_VERSIONS)} "
            f"only. Install a tested version (pip install 'faust-streaming~=0.15.3') or "
            f"set worker.engine: kafka")
    missing = [f"{owner.__module__}.{owner.__qualname__}.{name}"
               for owner, name in required if not hasattr(owner, name)]
    if missing:
        raise FaustIncompatible(
            f"faust-streaming {version} no longer has {', '.join(missing)}, which the faust "
            f"worker engine needs (agents/faust_internals.py); set worker.engine: kafka")


check()


class Fetched:
    """A raw-topic record as :class:`BatchFetch` hands it out, in place of Faust's
    ``ConsumerMessage``: building one of those cost 2.5 µs a record, a few percent of the
    worker's time per event, for fields nothing reads here. Faust acknowledges it
    (``Consumer.ack``) and tracks it as handed out (``Consumer._unacked_messages``, weakly:
    a revocation waits for it), through its fetch's :class:`FetchToken` when there is one:
    it has what those read of a message (``acked``, ``tp``, ``topic``, ``offset``, and
    ``refcount`` while a revocation waits), and the record itself, as the worker takes
    it."""

    __slots__ = ("record", "tp", "topic", "partition", "offset", "acked", "refcount",
                 "fetch", "__weakref__")

    def __init__(self, record: RawRecord, tp: Any, fetch: FetchToken | None = None) -> None:
        self.record = record
        self.tp = tp
        self.topic = record.topic
        self.partition = record.partition
        self.offset = record.offset
        self.acked = False
        self.refcount = 0  # never referenced by a stream: its first ack is its final one
        self.fetch = fetch


class FetchToken:
    """One fetch's records in Faust's set of messages handed out and not yet acknowledged
    (``Consumer._unacked_messages``): one weak entry per fetch, where one per record cost
    1 µs a record to add and discard. It is acknowledged, and leaves the set, once every
    record of it is (:func:`acknowledge` counts them down); dropped records (a rebalance)
    free it with the last of them, as they would have left the set one by one. Used with
    the batched acknowledgement only (:data:`BATCH_ACK`): Faust's own ``ack`` discards
    records, not fetches."""

    __slots__ = ("remaining", "refcount", "__weakref__")

    def __init__(self) -> None:
        self.remaining = 0  # records of the fetch not yet acknowledged
        self.refcount = 0  # what Faust's revocation wait reports of a message

    @property
    def acked(self) -> bool:
        """What Faust's ``_clean_unacked_messages`` reads: nothing left to wait for."""
        return self.remaining <= 0


#: The bases ``agents.seen_table`` overrides (``Table._new_store``, the memory store's
#: recovery hooks), taken from here so they are checked above before any use.
FaustTable = faust.Table
FaustMemoryStore = MemoryStore


# -- acknowledgements and gaps --------------------------------------------------------------
def gate_acks(consumer: Any, allow: Callable[[Any], bool],
              allow_gap: Callable[[Any], bool]) -> None:
    """Wrap ``consumer.ack`` so only messages ``allow`` approves reach Faust's commit
    bookkeeping, and ``consumer._add_gap`` so Faust records a hole between two delivered
    offsets (and commits over it) only where ``allow_gap(tp)`` says the log has one."""
    original_ack: Callable[[Any], bool] = consumer.ack

    def ack(message: Any) -> bool:
        return original_ack(message) if allow(message) else False

    consumer.ack = ack
    add_gap = consumer._add_gap

    async def _add_gap(tp: Any, offset_from: int, offset_to: int) -> None:
        if allow_gap(tp):
            await add_gap(tp, offset_from, offset_to)

    consumer._add_gap = _add_gap


#: SHA-256 of ``Consumer.ack``'s source in faust-streaming 0.15.3, whose bookkeeping
#: :func:`acknowledge` repeats for a whole batch under one lock. Where the installed
#: Faust's differs, :func:`acknowledge` calls Faust's own per message instead.
ACK_SOURCE_SHA256 = "5fcf41cf45153475de3790dc56fec1b83335956dc8b3bf7ff6bbb2b57627f03f"


def _same_source(function: Any, sha256: str) -> bool:
    try:
        source = inspect.getsource(function)
    except (OSError, TypeError):  # no source installed: cannot tell
        return False
    return hashlib.sha256(source.encode()).hexdigest() == sha256


#: Whether :func:`acknowledge` may do ``Consumer.ack``'s bookkeeping itself, with the lock
#: and the wake-up ``Consumer.ack`` itself uses.
_ACK_NAMES = Consumer.ack.__globals__
BATCH_ACK = (_same_source(Consumer.ack, ACK_SOURCE_SHA256)
             and "ack_lock" in _ACK_NAMES and "notify" in _ACK_NAMES)


#: SHA-256 of aiokafka 0.14's ``PartitionRecords._consumer_record`` (the ConsumerRecord it
#: builds of each fetched record), which :meth:`BatchFetch.install` bypasses for the raw
#: topics where the installed aiokafka's is that one.
CONSUMER_RECORD_SHA256 = "e668541600b047ab928a9008b54c00951d9ae7e2a11b82e7b00f3a5d71b0cc0c"


#: Raw topics whose records aiokafka builds as :class:`RawRecord` s (see below).
_RAW_TOPICS: set[str] = set()
_AIOKAFKA_CONSUMER_RECORD = PartitionRecords._consumer_record
RAW_FROM_AIOKAFKA = _same_source(_AIOKAFKA_CONSUMER_RECORD, CONSUMER_RECORD_SHA256)


def _raw_consumer_record(self: Any, tp: Any, record: Any) -> Any:
    """``PartitionRecords._consumer_record`` for the raw topics: a RawRecord."""
    topic = tp.topic
    if topic not in _RAW_TOPICS or self._key_deserializer or self._value_deserializer:
        return _AIOKAFKA_CONSUMER_RECORD(self, tp, record)
    headers = record.headers
    return RawRecord(topic, tp.partition, record.offset, record.key, record.value,
                     record.timestamp or 0,
                     tuple((k, bytes(v or b"")) for k, v in headers) if headers else ())


def raw_records_from_aiokafka(topics: Iterable[str]) -> bool:
    """Have aiokafka's fetcher build :class:`RawRecord` s of ``topics``' records directly
    (keys and values as fetched: Faust's consumer sets no deserializer), instead of a
    ``ConsumerRecord`` that :class:`BatchFetch` would only copy into one: 0.7 µs a record.
    Other topics' records stay aiokafka's. False (nothing changed) where the installed
    aiokafka's method is not the one this replaces (:data:`RAW_FROM_AIOKAFKA`)."""
    if not RAW_FROM_AIOKAFKA:
        return False
    _RAW_TOPICS.update(topics)
    PartitionRecords._consumer_record = _raw_consumer_record
    return True


def acknowledge(consumer: Any, messages: Iterable[Any]) -> None:
    """Faust's own ``Consumer.ack`` bookkeeping for each message, past the
    :func:`gate_acks` wrapper: for records the worker itself finished (a record
    :class:`BatchFetch` handed out is never referenced by a stream, so its final ack is its
    first). With the Faust this was written for (:data:`BATCH_ACK`), the bookkeeping of
    ``Consumer.ack`` is done here for the whole batch under one hold of Faust's ``ack_lock``
    (one call and one lock round trip per record cost 1.2 µs); otherwise Faust's own method
    runs per record."""
    if not BATCH_ACK:
        ack = type(consumer).ack  # the class's, not the instance's wrapper
        for message in messages:
            ack(consumer, message)
        return
    enabled = consumer.app.topics.acks_enabled_for
    committed_of, index_of, acked_of = (consumer._committed_offset, consumer._acked_index,
                                        consumer._acked)
    discard = consumer._unacked_messages.discard
    counted = 0
    with _ACK_NAMES["ack_lock"]:
        try:
            for message in messages:
                if message.acked:
                    continue
                message.acked = True
                fetch = message.fetch
                if fetch is not None:
                    fetch.remaining -= 1
                    if not fetch.remaining:
                        discard(fetch)
                tp, offset = message.tp, message.offset
                if not enabled(message.topic):
                    continue
                committed = committed_of[tp]
                if committed is None or offset >= committed:
                    index = index_of[tp]
                    if offset not in index:
                        if fetch is None:
                            discard(message)
                        index.add(offset)
                        acked_of[tp].append(offset)
                        counted += 1
        finally:
            consumer._n_acked += counted
            _ACK_NAMES["notify"](consumer._waiting_for_ack)


async def record_gap(consumer: Any, tp: tuple[str, int], first: int, last: int) -> None:
    """Tell Faust offsets ``first..last`` of ``tp`` are not in the log (it may commit over)."""
    await consumer._add_gap(TP(*tp), first, last)


def highwater(consumer: Any, tp: tuple[str, int]) -> int | None:
    """The partition's fetched end, or None when unknown (not fetched, not assigned)."""
    try:
        end = consumer.highwater(TP(*tp))
    except Exception:  # noqa: BLE001 - not fetched yet, or not assigned any more
        return None
    return end if isinstance(end, int) and end >= 0 else None


async def seek(consumer: Any, tp: tuple[str, int], offset: int) -> None:
    """Re-read ``tp`` from ``offset`` (on the consumer's own thread; it also resets Faust's
    read offset)."""
    await consumer.seek_wait({TP(*tp): offset})


# -- rebalances -----------------------------------------------------------------------------
def on_rebalance_start(app: Any, hook: Callable[[], None]) -> None:
    """Run ``hook`` first whenever a rebalance starts. Faust calls this from its consumer
    thread, as early as it can; ``hook`` must be thread-safe."""
    started = app.on_rebalance_start

    def on_rebalance_start() -> None:
        hook()
        started()

    app.on_rebalance_start = on_rebalance_start


# -- pausing while a sink is down ------------------------------------------------------------
class PausedFetching:
    """The Faust engine's :class:`~pipeline.backpressure.PausableConsumer`.

    Faust's own ``pause_partitions`` only takes partitions out of the set its fetcher asks
    for; with every raw partition out, the fetcher stops calling aiokafka's ``getmany`` at
    all, and aiokafka leaves the group once ``max_poll_interval_ms`` passed without one. So
    the partitions are paused in aiokafka itself (on the consumer's thread): Faust keeps
    asking for them, aiokafka keeps its place in the group and returns nothing for them (it
    drops what it had prefetched and fetches again from its position on resume). Batches
    already fetched are moved out of the bounded queue meanwhile (:meth:`BatchFetch.spill`),
    so Faust's fetcher is never left blocked on a full queue, not polling.
    """

    def __init__(self, app: Any, fetch: BatchFetch) -> None:
        self.app = app
        self.fetch = fetch

    async def pause(self) -> int:
        return await self._call(_pause_raw, self.fetch.topics, True)

    async def keep_polling(self, seconds: float) -> None:
        self.fetch.spill()
        await asyncio.sleep(seconds)
        self.fetch.spill()

    async def resume(self) -> None:
        await self._call(_pause_raw, self.fetch.topics, False)

    async def _call(self, fun: Callable[..., Any], *args: Any) -> int:
        thread = self.app.consumer._thread
        result: int = await thread.call_thread(fun, thread._ensure_consumer(), *args)
        return result


async def _pause_raw(consumer: Any, topics: frozenset[str], paused: bool) -> int:
    """Pause (or resume) the assigned partitions of ``topics`` in aiokafka; how many."""
    partitions = [tp for tp in consumer.assignment() if tp.topic in topics]
    (consumer.pause if paused else consumer.resume)(*partitions)
    return len(partitions)


# -- batches from the consumer ---------------------------------------------------------------
class BatchFetch:
    """The raw topics' records straight from Faust's consumer, a fetch at a time.

    Faust hands a fetched record to the agents one at a time: two tasks and an
    ``asyncio.wait`` per record in its fetcher, a lock and a queue put per record in its
    conductor, then the stream's per-event iteration (the profile in bench/RESULTS.md). That
    machinery cost more than the processing itself. :meth:`install` gives the app a consumer
    whose fetcher loop passes every raw-topic record of a fetch on as one list of Faust
    messages, and every other record (table changelogs during recovery) down Faust's own
    path. The rest is Faust's as before: the consumer, its thread, group membership,
    rebalances, read offsets, acknowledgements and commits.

    What Faust does per record is kept per fetch: records of partitions it paused or of an
    older generation, and those behind its read offset, are left out as Faust leaves them out
    (``agents.guard`` notices the hole and re-reads); each handed-out record is tracked as
    unacknowledged (a revocation waits for it); and a rebalance starting drops what waits
    here (:meth:`clear`), as Faust clears its agents' queues, so it need not wait for them.
    Faust's monitor learns per batch and partition what it uses to tell a stalled stream
    (read offsets, when a partition's records were last taken); its per-message counters
    (``messages_received_total`` and the like, seen only on Faust's web page) stay at zero:
    the worker's own metrics count records.
    """

    def __init__(self, topics: Iterable[str], max_queued: int = 4) -> None:
        self.topics = frozenset(topics)
        self.max_queued = max_queued
        self._queue: asyncio.Queue[list[Any]] | None = None
        self._pending: list[Any] = []
        self._taking = False  # batches() is waiting on the queue
        self._monitor: Any = None
        self._seeks = 0  # seeks asked so far
        self._sought: dict[Any, int] = {}  # partition -> the number of its latest seek

    def install(self, app: Any, topic: Any) -> None:
        """Subscribe the app to ``topic`` (the raw topics) and give it the batching consumer;
        before the app built its consumer (at import of the app module)."""
        if getattr(app, "_consumer", None) is not None:
            raise FaustIncompatible("the Faust consumer was built before BatchFetch.install")
        fetch = self
        self._monitor = app.monitor
        base = app.transport.Consumer

        class BatchingConsumer(base):  # type: ignore[misc,valid-type]
            async def _drain_messages(self, fetcher: Any) -> None:
                await fetch._drain(self, fetcher)

        app.transport.Consumer = BatchingConsumer
        raw_records_from_aiokafka(self.topics)
        aiter(topic)  # iterating a topic is what subscribes an app to it (Topic.__aiter__)

    def _queue_here(self) -> asyncio.Queue[list[Any]]:
        if self._queue is None:
            self._queue = asyncio.Queue(self.max_queued)
        return self._queue

    def clear(self) -> None:
        """Drop every record waiting to be taken (a rebalance starts: the new assignment
        reads again from the committed offsets)."""
        self._pending = []
        if self._queue is not None:
            while not self._queue.empty():
                self._queue.get_nowait()

    def spill(self) -> None:
        """Move the fetched batches waiting in the bounded queue to the front buffer (in
        order), so the fetcher can go on polling while the worker cannot take them. Not
        while :meth:`batches` is waiting on the queue: it is taking from it then (so the
        fetcher is not blocked), and records moved meanwhile would be overwritten or
        reordered by what it takes."""
        if self._queue is not None and not self._taking:
            while not self._queue.empty():
                self._pending.extend(self._queue.get_nowait())

    async def seek(self, consumer: Any, tp: tuple[str, int], offset: int) -> None:
        """Re-read ``tp`` from ``offset``. A fetch that began before the seek still holds the
        partition's later records; sorted after it they would move Faust's read offset past
        the records the seek is for, and those would then be dropped as already read. So
        such a fetch's records of ``tp`` are left out (the re-read brings them again)."""
        self._seeks += 1
        self._sought[TP(*tp)] = self._seeks
        await seek(consumer, tp, offset)

    async def batches(self, max_records: int, within_s: float) -> AsyncIterator[list[Any]]:
        """Lists of at most ``max_records`` messages: what is there, waiting up to
        ``within_s`` after the first for more (Faust's ``take`` semantics)."""
        queue = self._queue_here()
        loop = asyncio.get_running_loop()
        while True:
            self._taking = True  # spill() must not move records behind our back now
            try:
                if not self._pending:
                    self._pending = await queue.get()
                deadline = loop.time() + within_s
                while len(self._pending) < max_records:
                    more = await _get_within(queue, deadline - loop.time())
                    if more is None:
                        break
                    self._pending.extend(more)
            finally:
                self._taking = False
            batch, self._pending = self._pending[:max_records], self._pending[max_records:]
            if self._monitor is not None:  # the stream of these partitions is not idle
                now = time.monotonic()
                inbound = self._monitor.stream_inbound_time
                for tp in {message.tp for message in batch}:
                    inbound[tp] = now
            yield batch

    async def _drain(self, consumer: Any, fetcher: Any) -> None:
        """Replaces ``Consumer._drain_messages``, the fetcher's loop (faust 0.15)."""
        missing = [name for name in REQUIRED_ON_CONSUMER if not hasattr(consumer, name)]
        if missing:
            raise FaustIncompatible(
                f"faust-streaming {faust.__version__}'s consumer has no {', '.join(missing)}")
        app = consumer.app
        queue = self._queue_here()
        stopped, fetcher_stopped = consumer._stopped.is_set, fetcher._stopped.is_set
        try:
            while not (stopped() or fetcher_stopped()):
                seeks = self._seeks
                records, active = await consumer._wait_next_records(1.0)
                await asyncio.sleep(0)
                if not records or consumer.should_stop or not consumer.flow_active:
                    continue  # a rebalance: the next assignment reads from the committed offsets
                generation = app.consumer_generation_id
                batch = await self._sort(consumer, records, active, seeks)
                if app.consumer_generation_id != generation:
                    continue  # a rebalance began meanwhile: as Faust, hand nothing over
                if consumer._commit_every is not None and \
                        consumer._n_acked >= consumer._commit_every:
                    consumer._n_acked = 0
                    await consumer.commit()
                if batch:
                    await _put_unless(queue, batch, consumer.suspend_flow)
        except consumer.consumer_stopped_errors:
            if not app.should_stop:
                raise
        except asyncio.CancelledError:
            if not app.should_stop:
                raise

    async def _sort(self, consumer: Any, records: Any, active: Any,
                    seeks: int = 0) -> list[Any]:
        """One fetch (begun after ``seeks`` seeks): the raw topics' records as Faust
        messages, in offset order per partition; every other record goes down Faust's own
        path, one at a time."""
        app = consumer.app
        read_offset, buffered = consumer._read_offset, consumer._buffered_partitions
        to_message, unacked = consumer._to_message, consumer._unacked_messages.add
        monitor = app.monitor
        batch: list[Any] = []
        token = FetchToken() if BATCH_ACK else None  # else Faust tracks each record
        for tp, fetched in records.items():
            if active is not None and tp not in active and tp not in buffered:
                continue  # paused meanwhile: Faust leaves these out too
            if self._sought.get(tp, 0) > seeks:
                continue  # fetched before a seek of this partition (see seek())
            if monitor is not None:
                monitor.track_tp_end_offset(tp, consumer.highwater(tp))
            ours = tp.topic in self.topics
            last = read_offset[tp]
            for record in fetched:
                offset = record.offset
                if last is not None and offset < last:
                    continue  # behind the read offset: Faust drops these
                if ours:
                    if type(record) is not RawRecord:  # see raw_records_from_aiokafka
                        headers = record.headers
                        record = RawRecord(  # positional: once per record
                            tp.topic, tp.partition, offset, record.key, record.value,
                            record.timestamp or 0,
                            tuple((k, bytes(v or b"")) for k, v in headers) if headers
                            else ())
                    message = Fetched(record, tp, token)
                    if token is None:
                        unacked(message)
                    batch.append(message)
                else:
                    message = to_message(tp, record)
                    if last and offset - last > 1 and app.topics.acks_enabled_for(tp.topic):
                        await consumer._add_gap(tp, last + 1, offset)
                    await consumer.wait_first(consumer.callback(message),
                                              consumer.suspend_flow.wait())
                read_offset[tp] = last = offset
            if ours and last is not None and monitor is not None:
                monitor.tp_read_offsets[tp] = last
        if token is not None and batch:
            token.remaining = len(batch)
            unacked(token)  # a revocation waits for the fetch until all of it is acked
        return batch


async def _get_within(queue: asyncio.Queue[list[Any]], timeout: float) -> list[Any] | None:
    """The next item if one comes within ``timeout`` seconds (none is lost on timeout)."""
    if not queue.empty():
        return queue.get_nowait()
    if timeout <= 0:
        return None
    getter = asyncio.ensure_future(queue.get())
    done, _ = await asyncio.wait({getter}, timeout=timeout)
    if getter not in done:
        getter.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            return await getter  # it may have completed as it was cancelled
        return None
    return getter.result()


async def _put_unless(queue: asyncio.Queue[list[Any]], item: list[Any],
                      unless: Any) -> None:
    """Put ``item``, waiting for room, unless the event ``unless`` is set first (then drop
    it)."""
    if not queue.full():
        queue.put_nowait(item)
        return
    put = asyncio.ensure_future(queue.put(item))
    stop = asyncio.ensure_future(unless.wait())
    try:
        await asyncio.wait({put, stop}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (put, stop):
            if not task.done():
                task.cancel()
