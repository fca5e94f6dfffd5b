"""Running the pipeline's processes and checking what reached the sinks.

Shared by ``cdc demo``, the integration tests and the benchmarks: start ``cdc capture`` and
``cdc worker`` as real processes, and compare PostgreSQL with Elasticsearch.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import httpx
import psycopg2

from pipeline.config import KafkaSettings
from pipeline.events import Row


class PipelineProcess:
    """``cdc <command>`` in its own process group, output to a log file."""

    def __init__(self, command: str, env: Mapping[str, str], log: Path) -> None:
        self.command = command
        self.log = log
        log.parent.mkdir(parents=True, exist_ok=True)
        self._out = log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", *command.split()],
            env={**os.environ, **env},
            stdout=self._out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: the crash a test wants, no clean shutdown."""
        if self.alive():
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout: float = 20.0) -> None:
        if self.alive():
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._out.close()

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def wait_until(check: Callable[[], bool], timeout: float, interval: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(interval)
    return check()


def slot_active(dsn: str, slot: str) -> bool:
    """True once a capture process is streaming from the slot (changes from here on are
    captured; without an initial snapshot, earlier ones are not)."""
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT active FROM pg_replication_slots WHERE slot_name = %s", (slot,))
            row = cur.fetchone()
            return bool(row and row[0])
    finally:
        conn.close()


def group_stable(kafka: KafkaSettings, group: str) -> bool:
    """True once a consumer group has members with partitions assigned (workers ready)."""
    from confluent_kafka import ConsumerGroupState, KafkaException
    from confluent_kafka.admin import AdminClient

    from pipeline.kafka.client import client_config

    admin = AdminClient(client_config(kafka))
    try:
        description = admin.describe_consumer_groups([group])[group].result(timeout=5)
    except KafkaException:
        return False
    return description.state == ConsumerGroupState.STABLE and any(
        m.assignment and m.assignment.topic_partitions for m in description.members
    )


def table_rows(dsn: str, query: str) -> dict[str, Row]:
    """Rows by document id from a query returning (id text, row jsonb)."""
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute(query)
            return {str(doc_id): row for doc_id, row in cur.fetchall()}
    finally:
        conn.close()


def index_documents(es_url: str, index: str) -> dict[str, Row]:
    """Every document of an index by id (refreshes first); empty if the index is missing."""
    with httpx.Client(base_url=es_url, timeout=30) as client:
        refreshed = client.post(f"/{index}/_refresh")
        if refreshed.status_code == 404:
            return {}
        docs: dict[str, Row] = {}
        body: dict[str, Any] = {"size": 1000, "sort": ["_doc"], "query": {"match_all": {}}}
        response = client.post(f"/{index}/_search?scroll=1m", json=body).json()
        while response.get("hits", {}).get("hits"):
            for hit in response["hits"]["hits"]:
                docs[hit["_id"]] = hit["_source"]
            response = client.post(
                "/_search/scroll", json={"scroll": "1m", "scroll_id": response["_scroll_id"]}
            ).json()
        return docs


def project(docs: Mapping[str, Row], columns: tuple[str, ...]) -> dict[str, Row]:
    return {k: {c: v.get(c) for c in columns} for k, v in docs.items()}
