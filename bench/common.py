"""What every benchmark part shares: the running stack, unique names per run, PostgreSQL
slot/publication set-up and clean-up, topics with broker-side timestamps, reading a topic
into throughput and latency figures, RSS sampling and the machine description."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import psycopg2
from confluent_kafka import TIMESTAMP_LOG_APPEND_TIME, Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from psycopg2 import sql

from pipeline import stack
from pipeline.config import KafkaSettings

ROOT = Path(__file__).resolve().parent.parent
PARTITIONS = 3
#: Broker-side append time on every benchmark topic: latency = when the broker appended the
#: record minus the source commit time, measured the same way for ours and Debezium's.
TOPIC_CONFIG = {"message.timestamp.type": "LogAppendTime", "max.message.bytes": str(16 << 20)}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class CaptureTarget:
    """A bench table with its publication, slot and raw topic, all named for one run."""

    table: str
    publication: str
    slot: str
    prefix: str
    topic: str


@dataclass
class Bench:
    """One benchmark run: stack connection settings, a unique id and a work folder."""

    quick: bool
    duration: float
    work: Path
    uid: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    #: The stack services this run needs (None: all of them).
    services: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        info = stack.up(list(self.services)) if self.services else (stack.load() or stack.up())
        self.env: dict[str, str] = stack.env_vars(info)
        #: The main process of each stack service (PostgreSQL: the postmaster).
        self.server_pids: dict[str, int] = {
            name: svc.pid for name, svc in stack.status().items() if svc.pid}
        self.dsn = self.env["CDC_POSTGRES__DSN"]
        self.bootstrap = self.env["CDC_KAFKA__BOOTSTRAP_SERVERS"]
        self.schema = f"bench_{self.uid}"
        self.slots: list[str] = []
        self.publications: list[str] = []
        self.topics: list[str] = []
        #: Elasticsearch indices to delete by name (wildcard deletes are refused by default)
        self.indices: list[str] = []
        self.work.mkdir(parents=True, exist_ok=True)

    @property
    def kafka(self) -> KafkaSettings:
        """The stack's Kafka, as the pipeline's helpers take it."""
        return KafkaSettings(bootstrap_servers=self.bootstrap)

    def name(self, kind: str) -> str:
        return f"b{self.uid}_{kind}"

    def pg_params(self) -> dict[str, str]:
        conn = psycopg2.connect(self.dsn)
        params = conn.get_dsn_parameters()
        conn.close()
        return {k: params[k] for k in ("host", "port", "user", "dbname")}

    # -- PostgreSQL --------------------------------------------------------------------------
    def sql(self, statement: Any, params: Any = None) -> list[Any]:
        conn = psycopg2.connect(self.dsn)
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute(statement, params)
                return cur.fetchall() if cur.description else []
        finally:
            conn.close()

    def publication(self, name: str, table_id: str) -> str:
        self.sql(sql.SQL("CREATE PUBLICATION {} FOR TABLE {}").format(
            sql.Identifier(name), sql.Identifier(*table_id.split(".", 1))))
        self.publications.append(name)
        return name

    def slot(self, name: str) -> str:
        self.slots.append(name)
        self.sql("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (name,))
        return name

    def drop_slot(self, name: str) -> None:
        for _ in range(50):  # a just-stopped client may hold it for a moment
            try:
                self.sql("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                         "WHERE slot_name = %s", (name,))
                return
            except psycopg2.Error:
                time.sleep(0.2)

    # -- Kafka -------------------------------------------------------------------------------
    def topic(self, name: str) -> str:
        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        fut = admin.create_topics([NewTopic(name, PARTITIONS, 1, config=TOPIC_CONFIG)])
        fut[name].result(30)
        self.topics.append(name)
        return name

    def capture_target(self, tag: str, table_name: str | None = None) -> CaptureTarget:
        """Create ``<schema>.<table_name or tag>`` and what our capture needs to stream it."""
        from bench.workload import create_table

        table = f"{self.schema}.{table_name or tag}"
        create_table(self.dsn, table)
        prefix = self.name(tag)
        return CaptureTarget(
            table=table,
            publication=self.publication(self.name(f"pub_{tag}"), table),
            slot=self.slot(self.name(f"slot_{tag}")),
            prefix=prefix,
            topic=self.topic(f"{prefix}.{table}"),
        )

    def cleanup(self) -> None:
        """Drop this run's slots (a leftover slot retains WAL), publications, schema, topics."""
        for slot in self.slots:
            with contextlib.suppress(Exception):
                self.drop_slot(slot)
        for pub in self.publications:
            with contextlib.suppress(Exception):
                self.sql(sql.SQL("DROP PUBLICATION IF EXISTS {}").format(sql.Identifier(pub)))
        with contextlib.suppress(Exception):
            self.sql(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(
                sql.Identifier(self.schema)))
        leftover = self.sql("SELECT slot_name FROM pg_replication_slots WHERE slot_name LIKE %s",
                            (f"b{self.uid}%",))
        if leftover:
            log(f"WARNING: slots left behind: {leftover}")
        if self.topics:
            with contextlib.suppress(Exception):
                admin = AdminClient({"bootstrap.servers": self.bootstrap})
                for fut in admin.delete_topics(self.topics).values():
                    with contextlib.suppress(Exception):
                        fut.result(30)
        with contextlib.suppress(Exception):
            import httpx
            url = self.env["CDC_ELASTICSEARCH__URL"]
            listed = httpx.get(f"{url}/_cat/indices/b{self.uid}*",
                               params={"h": "index", "format": "json"}, timeout=10).json()
            names = sorted({*self.indices, *(row["index"] for row in listed)})
            if names:  # by name: Elasticsearch refuses wildcard deletes by default
                httpx.delete(f"{url}/{','.join(names)}", params={"ignore_unavailable": "true"},
                             timeout=30)


def run_json(cmd: list[str], env: dict[str, str] | None = None, timeout: float = 3600) -> Any:
    """Run a helper process that prints one JSON line last; return it."""
    out = subprocess.run(cmd, env={**os.environ, **(env or {})}, capture_output=True, text=True,
                         timeout=timeout, cwd=ROOT)
    if out.returncode != 0:
        raise RuntimeError(f"{cmd[:4]} failed ({out.returncode}): {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def workload(bench: Bench, table: str, *extra: str) -> subprocess.Popen[str]:
    """Start the workload generator process (see bench/workload.py)."""
    return subprocess.Popen(
        [sys.executable, "-m", "bench.workload", "--dsn", bench.dsn, "--table", table, *extra],
        stdout=subprocess.PIPE, text=True, cwd=ROOT)


def workload_result(proc: subprocess.Popen[str]) -> dict[str, Any]:
    out, _ = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"workload failed ({proc.returncode})")
    return json.loads(out.strip().splitlines()[-1])  # type: ignore[no-any-return]


# -- reading a topic ------------------------------------------------------------------------
def topic_count(bootstrap: str, topic: str) -> int:
    """Records on a topic (sum of high watermarks)."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-wm"})
    try:
        meta = c.list_topics(topic, timeout=10).topics[topic]
        return sum(c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                   for p in meta.partitions)
    finally:
        c.close()


def wait_topic(bootstrap: str, topic: str, want: int, timeout: float,
               settle: float = 5.0) -> int:
    """Wait until the topic holds ``want`` records, or stops growing for ``settle`` s after
    ``timeout``. Returns the count."""
    deadline = time.monotonic() + timeout
    last, last_change = -1, time.monotonic()
    while True:
        n = topic_count(bootstrap, topic)
        if n >= want:
            return n
        if n != last:
            last, last_change = n, time.monotonic()
        if time.monotonic() > deadline and time.monotonic() - last_change > settle:
            return n
        time.sleep(0.5)


def topic_span(bootstrap: str, topic: str) -> tuple[int, int | None, int | None]:
    """(records, broker append time of the first record, of the last) without reading the
    records in between: the first and last record of each partition only."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-span-{uuid.uuid4().hex}",
                  "enable.auto.commit": False})
    try:
        meta = c.list_topics(topic, timeout=10).topics[topic]
        count, first, last = 0, None, None
        for p in meta.partitions:
            lo, hi = c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            count += hi - lo
            for offset in {lo, hi - 1} if hi > lo else ():
                c.assign([TopicPartition(topic, p, offset)])
                msg = c.consume(1, 10)
                if not msg or msg[0].error() is not None:
                    raise RuntimeError(f"could not read {topic}[{p}]@{offset}")
                ts_type, ts = msg[0].timestamp()
                if ts_type != TIMESTAMP_LOG_APPEND_TIME:
                    raise RuntimeError(f"{topic} records are not LogAppendTime")
                first = ts if first is None else min(first, ts)
                last = ts if last is None else max(last, ts)
        return count, first, last
    finally:
        c.close()


@dataclass
class TopicFigures:
    records: int  # all records, tombstones included
    changes: int  # records with a value (row changes)
    first_ms: int  # broker append time of the first/last change
    last_ms: int
    latencies_ms: list[float]  # append time - source commit time, per change

    @property
    def rows_per_s(self) -> float | None:
        span = (self.last_ms - self.first_ms) / 1000
        return self.changes / span if span > 0 else None

    def quantile(self, q: float) -> float | None:
        if not self.latencies_ms:
            return None
        return self.latencies_ms[min(len(self.latencies_ms) - 1, int(q * len(self.latencies_ms)))]


def envelope_commit_us(value: Any) -> int:
    """The source commit time of a change envelope, in µs (``ts_us``, else ``ts_ms``)."""
    src = value["source"]
    return int(src.get("ts_us") or src["ts_ms"] * 1000)


def read_topic(bootstrap: str, topic: str, commit_after_us: int = 0,
               commit_before_us: int | None = None,
               commit_us_of: Callable[[Any], int] = envelope_commit_us) -> TopicFigures:
    """Every record of a topic: throughput from broker append times (first to last change),
    latency = append time - the envelope's source commit time (``ts_us``, else ``ts_ms``;
    ``commit_us_of`` reads it from other values), for changes committed from
    ``commit_after_us`` (up to ``commit_before_us`` if given)."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-read-{uuid.uuid4().hex}",
                  "enable.auto.commit": False, "fetch.max.bytes": 64 << 20})
    try:
        meta = c.list_topics(topic, timeout=10).topics[topic]
        ends = {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                for p in meta.partitions}
        c.assign([TopicPartition(topic, p, 0) for p in meta.partitions if ends[p]])
        want = sum(ends.values())
        seen = changes = 0
        first, last = 1 << 62, 0
        lat: list[float] = []
        idle = 0
        while seen < want and idle < 100:
            msgs = c.consume(10000, 0.2)
            if not msgs:
                idle += 1
                continue
            for m in msgs:
                if m.error() is not None:
                    continue
                seen += 1
                value = m.value()
                if value is None:
                    continue
                ts_type, ts = m.timestamp()
                if ts_type != TIMESTAMP_LOG_APPEND_TIME:
                    raise RuntimeError(f"{topic} records are not LogAppendTime")
                commit_us = commit_us_of(orjson.loads(value))
                if commit_us < commit_after_us or (
                        commit_before_us is not None and commit_us >= commit_before_us):
                    continue
                changes += 1
                first = min(first, ts)
                last = max(last, ts)
                lat.append(ts - commit_us / 1000)
        lat.sort()
        return TopicFigures(seen, changes, first, last, lat)
    finally:
        c.close()


# -- memory ---------------------------------------------------------------------------------
def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of a process, in kB."""
    out: dict[str, int] = {}
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                out[line.split(":")[0]] = int(line.split()[1])
    return out


class RssSampler:
    """Samples VmRSS/VmHWM of some processes every ``interval`` s in a thread, and for the
    processes named in ``threads`` the CPU time of each of their threads (the last sample
    before the process ended: :meth:`thread_cpu`)."""

    def __init__(self, pids: dict[str, int], interval: float = 1.0,
                 threads: tuple[str, ...] = ()) -> None:
        self.pids = pids
        self.interval = interval
        self.samples: dict[str, list[tuple[float, int, int]]] = {k: [] for k in pids}
        self.threads = threads
        self._thread_cpu: dict[str, dict[str, float]] = {k: {} for k in threads}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self.t0 = time.monotonic()

    def start(self) -> RssSampler:
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def sample(self) -> None:
        for name, pid in self.pids.items():
            st = proc_status(pid)
            if st:
                self.samples[name].append(
                    (time.monotonic() - self.t0, st.get("VmRSS", 0), st.get("VmHWM", 0)))
            if name in self._thread_cpu:
                seen = threads_cpu(pid)
                if seen:
                    self._thread_cpu[name] = seen

    def thread_cpu(self, name: str) -> dict[str, float]:
        """CPU seconds of ``name``'s threads by role, as last sampled."""
        return {k: round(v, 2) for k, v in self._thread_cpu.get(name, {}).items()}

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sample()

    def summary(self, name: str) -> dict[str, Any]:
        s = self.samples[name]
        if not s:
            return {}
        n = len(s)
        quarter = s[n // 4][1]
        return {
            "samples": n,
            "rss_mb_at_25pct": round(quarter / 1024, 1),
            "rss_mb_at_end": round(s[-1][1] / 1024, 1),
            "rss_mb_max": round(max(x[1] for x in s) / 1024, 1),
            "hwm_mb": round(s[-1][2] / 1024, 1),
            "growth_25pct_to_end_mb": round((s[-1][1] - quarter) / 1024, 1),
            "series_mb": [round(x[1] / 1024, 1) for x in s[:: max(1, n // 12)]],
        }


# -- the machine ----------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_kb = 0
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_kb = int(line.split()[1])
    load = os.getloadavg()
    versions: dict[str, str] = {"python": platform.python_version()}
    for mod in ("confluent_kafka", "psycopg2", "faust", "aiokafka", "orjson"):
        with contextlib.suppress(Exception):
            versions[mod] = str(__import__(mod).__version__).split()[0]
    with contextlib.suppress(Exception):
        versions["postgresql"] = _server_version()
    from pipeline import native
    versions["capture hot path"] = "compiled (mypyc)" if native.compiled() else "plain Python"
    return {
        "nproc": os.cpu_count(),
        "memory_gb": round(mem_kb / 1024 / 1024, 1),
        "cpu": cpu,
        "kernel": platform.release(),
        "loadavg_at_start": [round(x, 2) for x in load],
        "versions": versions,
    }


def _server_version() -> str:
    info = stack.load()
    if info is None:
        return "?"
    conn = psycopg2.connect(stack.env_vars(info)["CDC_POSTGRES__DSN"])
    try:
        return str(conn.server_version)
    finally:
        conn.close()


def _stat_fields(pid: int | str) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (its threads included)."""
    fields = _stat_fields(pid)
    if fields is None:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def threads_cpu(pid: int) -> dict[str, float]:
    """CPU seconds of a process's threads so far, summed by role: ``main`` (the thread the
    process started with), librdkafka's by their names (``rdk:broker1`` ...), and every
    other thread by its name (Python's own threads keep the process's name)."""
    out: dict[str, float] = {}
    hz = os.sysconf("SC_CLK_TCK")
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            fields = _stat_fields(f"{pid}/task/{tid}")
            try:
                comm = Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
            except OSError:
                continue
            if fields is not None:
                role = "main" if tid == str(pid) else comm
                out[role] = out.get(role, 0.0) + (int(fields[11]) + int(fields[12])) / hz
    return out


def tree_cpu_seconds(pid: int) -> float:
    """CPU time of a process and of its children, live or ended (a PostgreSQL server: the
    postmaster, its backends, and the backends that exited, which it reaped)."""
    fields = _stat_fields(pid)
    if fields is None:
        return 0.0
    ticks = sum(int(f) for f in fields[11:15])  # utime, stime, cutime, cstime
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            child = _stat_fields(entry)
            if child is not None and child[1] == str(pid):  # ppid
                ticks += int(child[11]) + int(child[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def machine_busy_s() -> float:
    """CPU seconds the whole machine has been busy (every core, not idle or iowait)."""
    fields = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


class ServerCpu:
    """The CPU the stack's Kafka broker and PostgreSQL server used over one run: their share
    of the machine beside the reader being measured."""

    def __init__(self, bench: Bench) -> None:
        self.pids = bench.server_pids
        self.t0 = time.monotonic()
        self.start = self._now()

    def _now(self) -> dict[str, float]:
        return {"kafka": cpu_seconds(self.pids["kafka"]),
                "postgres": tree_cpu_seconds(self.pids["postgres"]),
                "machine": machine_busy_s()}

    def result(self, rows: int) -> dict[str, Any]:
        """CPU-ms per 1k rows of the broker and of PostgreSQL, and the machine's busy cores."""
        now, wall = self._now(), time.monotonic() - self.t0
        used = {k: now[k] - self.start[k] for k in now}
        return {"kafka_cpu_ms_per_1k_rows": round(1e6 * used["kafka"] / max(rows, 1), 1),
                "postgres_cpu_ms_per_1k_rows": round(1e6 * used["postgres"] / max(rows, 1), 1),
                "machine_busy_cores": round(used["machine"] / wall, 2) if wall else None}


def median_round(runs: list[dict[str, Any]], rate: str) -> dict[str, Any]:
    """The round with the median ``rate`` stands for the reader (with two rounds, the slower:
    no averaged figure that no run produced); every round's rate is kept, as
    ``rounds_<rate>``."""
    rates = [r.get(rate) or 0.0 for r in runs]
    mid = sorted(range(len(runs)), key=lambda i: rates[i])[(len(runs) - 1) // 2]
    return {**runs[mid], f"rounds_{rate}": rates}
