"""``cdc status``: replication lag at the slot, consumer lag per topic, process metrics."""

from __future__ import annotations

import time
from typing import Any

from confluent_kafka import Consumer, KafkaException, TopicPartition

from pipeline.config import Settings
from pipeline.errors import RetriableError
from pipeline.kafka.client import client_config, list_topics, raise_if_refused
from pipeline.metrics import read_snapshots
from pipeline.positions import Lsn
from pipeline.sinks.registry import sink_names
from pipeline.sources.postgres.slot import RETAINED_WAL_SQL, connect
from pipeline.stack.process import pid_alive


def slot_lag(settings: Settings) -> dict[str, Any] | None:
    """How far the slot's confirmed position is behind the server's WAL, in bytes."""
    conn = connect(settings.postgres.dsn.get_secret_value())
    try:
        with conn.cursor() as cur:
            cur.execute(RETAINED_WAL_SQL, (settings.postgres.slot,))
            row = cur.fetchone()
    finally:
        conn.close()
    if row is None:
        return None
    return {"active": row[0], "confirmed_flush_lsn": row[1], "lag_bytes": int(row[2] or 0),
            "retained_wal_bytes": int(row[3] or 0), "wal_status": row[4]}


def consumer_lag(settings: Settings, group: str, timeout: float = 10.0) -> dict[str, int]:
    """Records not yet committed by a worker group, per raw topic."""
    # log_level 0: an unreachable broker is reported once, below, not logged per retry.
    consumer = Consumer(client_config(settings.kafka, {
        "group.id": group, "enable.auto.commit": False, "log_level": 0}))
    lag: dict[str, int] = {}
    try:
        metadata = list_topics(consumer, timeout)
        partitions = [
            TopicPartition(topic, p)
            for topic in settings.raw_topics() if topic in metadata.topics
            for p in metadata.topics[topic].partitions
        ]
        for tp in consumer.committed(partitions, timeout=timeout):
            _, high = consumer.get_watermark_offsets(tp, timeout=timeout)
            done = tp.offset if tp.offset >= 0 else 0
            lag[tp.topic] = lag.get(tp.topic, 0) + max(0, high - done)
    except KafkaException as exc:
        raise_if_refused(consumer, exc)
        raise RetriableError(f"Kafka did not answer: {exc}") from exc
    finally:
        consumer.close()
    return lag


def source_lines(settings: Settings) -> list[str]:
    """Where capture stands at its source (one branch per capture strategy)."""
    if settings.capture.source == "triggers":
        from pipeline.sources.triggers.ddl import TriggerLog
        from pipeline.sources.triggers.ddl import status as trigger_status

        return [trigger_status(settings).render(TriggerLog.of(settings.triggers))]
    if settings.capture.source == "polling":
        from pipeline.sources.polling.status import watermark_lines

        return watermark_lines(settings)
    slot = slot_lag(settings)
    if slot is None:
        return [f"slot {settings.postgres.slot}: missing (capture has not run yet)"]
    return [
        f"slot {settings.postgres.slot}: {'active' if slot['active'] else 'inactive'}, "
        f"confirmed {slot['confirmed_flush_lsn']}, behind by {slot['lag_bytes']} bytes, "
        f"retains {slot['retained_wal_bytes']} bytes of WAL (wal_status "
        f"{slot['wal_status']})"
    ]


def render_status(settings: Settings) -> str:
    lines = source_lines(settings)
    sinks = sink_names(settings)
    if not sinks:
        lines.append("no sinks configured: set elasticsearch.url, redis.url or a sinks entry "
                     "to see each worker's consumer lag")
    for sink in sinks:
        group = settings.group_id(sink)
        try:
            lag = consumer_lag(settings, group, timeout=5.0)
        except RetriableError as exc:
            lines.append(f"consumer lag: Kafka at {settings.kafka.bootstrap_servers} did not "
                         f"answer ({exc}); is it running (cdc stack status)?")
            break
        for topic, behind in sorted(lag.items()):
            lines.append(f"consumer lag {group} {topic}: {behind}")
        if not lag:
            lines.append(f"consumer lag {group}: no raw topics yet (capture has not run)")
    if settings.metrics.snapshot_dir is None:
        lines.append("process metrics: set metrics.snapshot_dir (every process writes its "
                     "figures there) to see throughput, errors and latency here")
    else:
        snapshots = read_snapshots(settings.metrics.snapshot_dir)
        if not snapshots:
            lines.append(f"process metrics: none in {settings.metrics.snapshot_dir} yet (no "
                         "capture or worker has run with it)")
        for name, snap in sorted(snapshots.items()):
            lines.extend(_process_lines(name, snap))
    return "\n".join(lines)


def _process_lines(name: str, snap: dict[str, Any]) -> list[str]:
    """One process's figures as its last metrics snapshot holds them; whether it still runs
    (a process killed -9 leaves its last snapshot behind)."""
    age = time.time() - snap.get("time", 0)
    pid = snap.get("pid")
    running = isinstance(pid, int) and pid_alive(pid)
    state = "" if running else "NOT RUNNING (the figures are its last), "
    lines = [f"{name} ({state}pid {pid}, updated {age:.0f}s ago)"]
    for metric, value in sorted(snap.get("counters", {}).items()):
        lines.append(f"  {metric} = {value:,.0f}")
    for metric, value in sorted(snap.get("gauges", {}).items()):
        shown = str(Lsn(int(value))) if metric.endswith("_lsn") else f"{value:,.6g}"
        lines.append(f"  {metric} = {shown}")
    for metric, q in sorted(snap.get("latency_ms", {}).items()):
        if not q.get("count"):
            lines.append(f"  {metric}: n=0")
            continue
        lines.append(f"  {metric}: n={q['count']:,} p50={q['p50']:.1f}ms p99={q['p99']:.1f}ms")
    return lines
