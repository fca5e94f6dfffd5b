"""One isolated MariaDB binlog pipeline per test: its own database, replica id, topics,
consumer group and index, on the stack's real MariaDB, Kafka and Elasticsearch."""

from __future__ import annotations

import contextlib
import random
import uuid
from pathlib import Path
from typing import Any

import httpx
import orjson
from confluent_kafka.admin import AdminClient

from pipeline import stack
from pipeline.config import Settings, load_settings
from pipeline.harness import PipelineProcess, index_documents, wait_until
from pipeline.kafka.client import client_config
from pipeline.metrics import Metrics
from pipeline.stack import mariadb
from tests.integration.scenario import read_topic

ITEMS_DDL = ("CREATE TABLE {db}.items (id INT PRIMARY KEY, name VARCHAR(100), "
             "qty INT, price DECIMAL(12,2)) CHARACTER SET utf8mb4")


class MariadbScenario:
    def __init__(self, info: Any, work: Path) -> None:
        self.uid = uuid.uuid4().hex[:8]
        self.db = f"m{self.uid}"
        self.table_id = f"{self.db}.items"
        self.work = work
        self.port = info.mariadb_port
        self.env = {
            **stack.env_vars(info),
            "CDC_CAPTURE__SOURCE": "mysql",
            "CDC_MYSQL__TABLES": f"[{self.table_id}]",
            "CDC_MYSQL__SERVER_ID": str(random.randint(10_000, 2**31)),
            "CDC_MYSQL__SERVER_NAME": f"maria{self.uid}",
            "CDC_KAFKA__TOPIC_PREFIX": f"it{self.uid}",
            "CDC_KAFKA__PARTITIONS": "3",
            "CDC_WORKER__ENGINE": "kafka",
            "CDC_WORKER__APP_ID": f"worker-{self.uid}",
            "CDC_WORKER__DEAD_LETTER_TOPIC": f"it{self.uid}.dead-letter",
            "CDC_WORKER__BATCH_WAIT_MS": "10",
            "CDC_WORKER__RETRY_MAX_MS": "1000",
            "CDC_ELASTICSEARCH__INDEX_PREFIX": f"it{self.uid}.",
            "CDC_METRICS__SNAPSHOT_DIR": str(work / "metrics"),
            "CDC_WORKER_DATADIR": str(work / "worker-data"),
        }
        self.settings: Settings = load_settings(None, self.env)
        assert self.settings.elasticsearch is not None
        self.es_url = self.settings.elasticsearch.url
        self.index = self.settings.elasticsearch.index_for(self.table_id)
        self.topic = self.settings.kafka.raw_topic(self.table_id)
        self.processes: dict[str, PipelineProcess] = {}
        self.execute(f"CREATE DATABASE {self.db} CHARACTER SET utf8mb4")

    def connect(self) -> Any:
        return mariadb.connect(self.port)

    def execute(self, statement: str, *params: Any) -> None:
        conn = self.connect()
        try:
            with conn.cursor() as cur:
                cur.execute(statement.replace("{db}", self.db), params or None)
        finally:
            conn.close()

    def query(self, statement: str, *params: Any) -> list[tuple[Any, ...]]:
        conn = self.connect()
        try:
            with conn.cursor() as cur:
                cur.execute(statement.replace("{db}", self.db), params or None)
                return list(cur.fetchall())
        finally:
            conn.close()

    def start(self, name: str) -> PipelineProcess:
        """``capture`` (waits until it reads the binlog) or ``worker`` (the search sink)."""
        command = "worker --sink search" if name == "worker" else name
        proc = PipelineProcess(command, self.env, self.work / f"{name}.log")
        self.processes[name] = proc
        if name == "capture":
            assert wait_until(lambda: "reading the binlog from" in proc.tail(200)
                              or not proc.alive(), 60), proc.tail()
            assert proc.alive(), proc.tail()
        return proc

    def expected(self) -> dict[str, Any]:
        rows = self.query("SELECT id, name, qty, price FROM {db}.items")
        return {str(i): {"id": i, "name": n, "qty": q, "price": None if p is None else str(p)}
                for i, n, q, p in rows}

    def indexed(self) -> dict[str, Any]:
        docs = index_documents(self.es_url, self.index)
        return {k: {c: v.get(c) for c in ("id", "name", "qty", "price")}
                for k, v in docs.items()}

    def purge_binlogs(self) -> None:
        """Start a new binlog file and purge every earlier one (what a capture that was
        down too long finds: its position is gone)."""
        self.execute("FLUSH BINARY LOGS")
        (current,) = [r[0] for r in self.query("SHOW MASTER STATUS")]

        def purged() -> bool:
            # The server keeps a file a replica still reads: a stopped capture's dump
            # thread ends when it notices the disconnect.
            self.execute(f"PURGE BINARY LOGS TO '{current}'")
            return [r[0] for r in self.query("SHOW BINARY LOGS")] == [current]

        assert wait_until(purged, 30, 1)

    def converged(self, timeout: float = 90) -> bool:
        return wait_until(lambda: self.indexed() == self.expected(), timeout, 0.5)

    def records(self) -> list[tuple[Any, Any, int]]:
        """(key, value, partition) of every record of the table's topic, JSON-decoded."""
        msgs = read_topic(self.settings.kafka, self.topic)
        return [(orjson.loads(m.key()) if m.key() else None,
                 orjson.loads(m.value()) if m.value() else None, m.partition())
                for m in msgs]

    def changes(self) -> list[dict[str, Any]]:
        """Every change record (no tombstones), in binlog order (a key change's delete
        and create share a position: the delete first)."""
        values = [v for _, v, _ in self.records() if v is not None]
        return sorted(values, key=lambda v: (v["source"]["lsn"], v["op"] != "d"))

    def close(self) -> None:
        for proc in self.processes.values():
            proc.stop()
        with contextlib.suppress(Exception):
            self.execute("DROP DATABASE IF EXISTS {db}")
        with contextlib.suppress(Exception):
            listed = httpx.get(f"{self.es_url}/_cat/indices/*{self.uid}*",
                               params={"h": "index", "format": "json"}, timeout=10).json()
            names = [row["index"] for row in listed]
            if names:
                httpx.delete(f"{self.es_url}/{','.join(names)}", timeout=30)
        with contextlib.suppress(Exception):
            admin = AdminClient(client_config(self.settings.kafka))
            topics = [t for t in admin.list_topics(timeout=10).topics if self.uid in t]
            if topics:
                for future in admin.delete_topics(topics).values():
                    future.result(30)
        with contextlib.suppress(Exception):
            from pipeline.capture.offsets import OffsetStore
            s = self.settings.mysql
            for source in ("mysql", "mysql-snapshot"):
                OffsetStore(self.settings.kafka, {"source": source, "server": s.name,
                                                  "server_id": str(s.server_id)}).forget()
        with contextlib.suppress(Exception):
            from pipeline.sources.mysql.source import MysqlBinlogSource
            MysqlBinlogSource(self.settings.mysql, self.settings.kafka,
                              Metrics()).history.forget()
