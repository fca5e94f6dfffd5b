"""One isolated pipeline per test: its own schema, slot, topics, consumer group and indices."""

from __future__ import annotations

import contextlib
import json
import uuid
from pathlib import Path
from typing import Any

import httpx
import orjson
import psycopg2
import redis
from confluent_kafka import Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient
from psycopg2 import sql

from pipeline import stack
from pipeline.config import KafkaSettings, Settings, load_settings
from pipeline.harness import (
    PipelineProcess,
    index_documents,
    project,
    slot_active,
    table_rows,
    wait_until,
)
from pipeline.kafka.client import client_config
from pipeline.metrics import read_snapshots
from pipeline.sources.postgres.slot import ReplicationSlot

COLUMNS = ("id", "name", "qty", "price")


class Scenario:
    def __init__(self, info: Any, work: Path) -> None:
        self.uid = uuid.uuid4().hex[:8]
        self.schema = f"t{self.uid}"
        self.table_id = f"{self.schema}.items"
        self.work = work
        self.env = {
            # a schema registry left running by another test must not switch Avro decoding
            **{k: v for k, v in stack.env_vars(info).items()
               if k != "CDC_KAFKA__SCHEMA_REGISTRY_URL"},
            "CDC_POSTGRES__TABLES": f"[{self.table_id}]",
            "CDC_POSTGRES__SLOT": f"slot_{self.uid}",
            "CDC_POSTGRES__PUBLICATION": f"pub_{self.uid}",
            "CDC_KAFKA__TOPIC_PREFIX": f"it{self.uid}",
            "CDC_KAFKA__PARTITIONS": "3",
            "CDC_WORKER__APP_ID": f"worker-{self.uid}",
            "CDC_WORKER__DEAD_LETTER_TOPIC": f"it{self.uid}.dead-letter",
            "CDC_WORKER__BATCH_WAIT_MS": "10",
            "CDC_WORKER__RETRY_MAX_MS": "1000",
            "CDC_ELASTICSEARCH__INDEX_PREFIX": f"it{self.uid}.",
            "CDC_REDIS__KEYS": json.dumps({self.table_id: ["item:{id}", "item-name:{name}"]}),
            "CDC_METRICS__SNAPSHOT_DIR": str(work / "metrics"),
            "CDC_WORKER_DATADIR": str(work / "worker-data"),
        }
        self.settings: Settings = load_settings(None, self.env)
        self.dsn = self.settings.postgres.dsn.get_secret_value()
        assert self.settings.elasticsearch is not None and self.settings.redis is not None
        self.es_url = self.settings.elasticsearch.url
        self.index = self.settings.elasticsearch.index_for(self.table_id)
        self.topic = self.settings.kafka.raw_topic(self.table_id)
        self.redis = redis.Redis.from_url(self.settings.redis.url.get_secret_value())
        self.processes: dict[str, PipelineProcess] = {}
        conn = self.connect()
        with conn, conn.cursor() as cur:
            cur.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(self.schema)))
            cur.execute(sql.SQL(
                "CREATE TABLE {}.items (id int PRIMARY KEY, name text, qty int, "
                "price numeric(12,2), note text)").format(sql.Identifier(self.schema)))
        conn.close()

    def connect(self) -> Any:
        return psycopg2.connect(self.dsn)

    def execute(self, statement: str, *params: Any) -> None:
        conn = self.connect()
        with conn, conn.cursor() as cur:
            cur.execute(statement.replace("items", f"{self.schema}.items"), params or None)
        conn.close()

    def start(self, name: str) -> PipelineProcess:
        proc = PipelineProcess(name, self.env, self.work / f"{name}.log")
        self.processes[name] = proc
        if name == "capture":
            slot = self.settings.postgres.slot
            assert wait_until(lambda: slot_active(self.dsn, slot), 60), proc.tail()
        return proc

    def expected(self) -> dict[str, Any]:
        return table_rows(
            self.dsn,
            f"SELECT id::text, jsonb_build_object('id', id, 'name', name, 'qty', qty, "
            f"'price', price::text) FROM {self.schema}.items",
        )

    def indexed(self) -> dict[str, Any]:
        return project(index_documents(self.es_url, self.index), COLUMNS)

    def converged(self, timeout: float = 60) -> bool:
        return wait_until(lambda: self.indexed() == self.expected(), timeout, 0.3)

    def drift(self, limit: int = 10) -> str:
        """How the index differs from the table (for an assertion's message)."""
        indexed, expected = self.indexed(), self.expected()
        missing = sorted(expected.keys() - indexed.keys())
        extra = sorted(indexed.keys() - expected.keys())
        differ = sorted(k for k in expected.keys() & indexed.keys() if expected[k] != indexed[k])
        lines = [f"index drifted: {len(missing)} missing {missing[:limit]}, "
                 f"{len(extra)} extra {extra[:limit]}, {len(differ)} differ"]
        lines += [f"  {k}: table {expected[k]} index {indexed[k]}" for k in differ[:limit]]
        return "\n".join(lines) + "\n"

    def counter(self, name: str, process: str = "") -> float:
        """A counter summed over every process (or those whose name starts with ``process``,
        e.g. ``worker-search``) and every label set."""
        return sum(
            v for proc, snap in read_snapshots(self.work / "metrics").items()
            if proc.startswith(process)
            for k, v in snap.get("counters", {}).items() if k == name or k.startswith(name + "{")
        )

    def gauges(self, name: str, process: str = "") -> list[float]:
        """Every value of a gauge, over the processes whose name starts with ``process``
        and every label set."""
        return [
            v for proc, snap in read_snapshots(self.work / "metrics").items()
            if proc.startswith(process)
            for k, v in snap.get("gauges", {}).items() if k == name or k.startswith(name + "{")
        ]

    def read_topic(self, topic: str, timeout: float = 10) -> list[Any]:
        """Every record of a topic, from the beginning."""
        return read_topic(self.settings.kafka, topic, timeout)

    def values(self, topic: str, want: int, timeout: float = 60) -> list[dict[str, Any]]:
        """The non-null values of ``topic`` once it holds at least ``want`` of them (what it
        holds after ``timeout`` otherwise)."""
        found: list[dict[str, Any]] = []

        def enough() -> bool:
            nonlocal found
            found = [orjson.loads(m.value()) for m in self.read_topic(topic)
                     if m.value() is not None]
            return len(found) >= want

        wait_until(enough, timeout, 0.5)
        return found

    def read_topic_names(self) -> list[str]:
        admin = AdminClient(client_config(self.settings.kafka))
        return list(admin.list_topics(timeout=10).topics)

    def close(self) -> None:
        for proc in self.processes.values():
            proc.stop()
        # Best-effort cleanup, so that a stack kept running across many test runs does not
        # fill up with their indices, topics and schemas.
        with contextlib.suppress(Exception):
            ReplicationSlot(self.settings.postgres).drop()
        with contextlib.suppress(Exception):
            listed = httpx.get(f"{self.es_url}/_cat/indices/*{self.uid}*",
                               params={"h": "index", "format": "json"}, timeout=10).json()
            names = [row["index"] for row in listed]
            if names:  # by name: Elasticsearch refuses wildcard deletes
                httpx.delete(f"{self.es_url}/{','.join(names)}", timeout=30)
        with contextlib.suppress(Exception):
            admin = AdminClient(client_config(self.settings.kafka))
            topics = [t for t in admin.list_topics(timeout=10).topics if self.uid in t]
            if topics:
                for future in admin.delete_topics(topics).values():
                    future.result(30)
        with contextlib.suppress(Exception):
            conn = self.connect()
            with conn, conn.cursor() as cur:
                cur.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(
                    sql.Identifier(self.schema)))
                cur.execute(sql.SQL("DROP PUBLICATION IF EXISTS {}").format(
                    sql.Identifier(self.settings.postgres.publication)))
            conn.close()
        self.redis.close()


def read_topic(kafka: KafkaSettings, topic: str, timeout: float = 10) -> list[Any]:
    """Every record of a topic, from the beginning."""
    consumer = Consumer(client_config(kafka, {
        "group.id": f"reader-{uuid.uuid4().hex[:6]}", "enable.auto.commit": False}))
    try:
        meta = consumer.list_topics(topic, timeout=timeout).topics.get(topic)
        if meta is None or meta.error is not None:
            return []
        parts = [TopicPartition(topic, p, 0) for p in meta.partitions]
        try:
            ends = {p.partition: consumer.get_watermark_offsets(p, timeout=timeout)[1]
                    for p in parts}
        except KafkaException:  # a topic just created: no leader yet
            return []
        consumer.assign(parts)
        records: list[Any] = []
        want = sum(ends.values())
        deadline_polls = 0
        while len(records) < want and deadline_polls < 50:
            msg = consumer.poll(0.2)
            if msg is None:
                deadline_polls += 1
                continue
            if msg.error() is None:
                records.append(msg)
        return records
    finally:
        consumer.close()
