"""The peer: Debezium's PostgreSQL connector on Kafka Connect standalone.

Nothing of Debezium or Kafka Connect is kept in this repository: both are resolved from
Maven Central at run time with the stack's cached helpers (``pipeline.stack.install``) into
``<cache>/connect-<kafka>`` (Connect runtime jars) and ``<cache>/debezium-<ver>`` (the
connector's plugin archive, unpacked once under ``plugin.path``).
"""

from __future__ import annotations

import shutil
import subprocess
import tarfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from pipeline.stack import install as inst
from pipeline.stack.ports import free_port

#: The Kafka Connect version Debezium was built against: property ``version.kafka`` of
#: ``io.debezium:debezium-parent:3.6.1.Final`` (evaluated with Maven: 4.3.0).
KAFKA_VERSION = "4.3.0"
DEBEZIUM_VERSION = "3.6.1.Final"
#: Kafka 4.x logs through log4j 2. Its POMs still pin slf4j-api 1.7.36 (slf4j 2 is put off to
#: Kafka 5, KIP-1064), so the binding is log4j-slf4j-impl: log4j-slf4j2-impl is a slf4j 2
#: provider that slf4j 1.7 never finds, and Connect would log nothing.
LOG4J_VERSION = "2.25.4"
CONNECT_DEPENDENCIES = (
    f"org.apache.kafka:connect-runtime:{KAFKA_VERSION}",
    f"org.apache.kafka:connect-json:{KAFKA_VERSION}",
    f"org.apache.logging.log4j:log4j-core:{LOG4J_VERSION}",
    f"org.apache.logging.log4j:log4j-slf4j-impl:{LOG4J_VERSION}",
)
JAVA = "/usr/lib/jvm/java-17-openjdk-amd64/bin/java"
HEAP = "-Xmx1g"

#: The producer settings a fair user would choose: the same as ours
#: (pipeline/capture/publisher.py PRODUCER_DEFAULTS), in Java client names.
PRODUCER = {
    "acks": "all",
    "enable.idempotence": "true",
    "linger.ms": "5",
    "batch.size": "1000000",
    "compression.type": "lz4",
    "max.in.flight.requests.per.connection": "5",
    "max.request.size": str(16 * 1024 * 1024),
    "buffer.memory": str(64 * 1024 * 1024),
}


CONNECTOR_TUNING = {
    "poll.interval.ms": "5",
    "max.batch.size": "10240",
    "max.queue.size": "40960",
}


def install(connector: str = "postgres", version: str = DEBEZIUM_VERSION) -> tuple[Path, Path]:
    """Connect's jars and the unpacked ``debezium-connector-<connector>`` plugin; returns
    (lib dir, plugin.path)."""
    cache = inst.cache_dir()
    lib = inst.maven_libs(cache / f"connect-{KAFKA_VERSION}", CONNECT_DEPENDENCIES)
    folder = f"debezium-{version}" if connector == "postgres" else f"debezium-{connector}-{version}"
    plugins = cache / folder / "plugins"
    if not (plugins / inst.MARKER).exists():
        archive = inst.maven_artifact(
            f"io.debezium:debezium-connector-{connector}:{version}:tar.gz:plugin",
            cache / "downloads",
        )
        with inst.file_lock(plugins.parent / ".plugins.lock"):
            if not (plugins / inst.MARKER).exists():
                tmp = plugins.with_name("plugins.partial")
                shutil.rmtree(tmp, ignore_errors=True)
                tmp.mkdir(parents=True)
                with tarfile.open(archive) as tar:
                    tar.extractall(tmp, filter="data")
                shutil.rmtree(plugins, ignore_errors=True)
                tmp.rename(plugins)
                (plugins / inst.MARKER).write_text(archive.name + "\n")
    return lib, plugins


class DebeziumConnect:
    """One Connect standalone JVM running one Debezium connector; files under ``work``."""

    def __init__(
        self,
        work: Path,
        name: str,
        bootstrap: str,
        pg: dict[str, str],
        table_id: str,
        slot: str,
        publication: str,
        topic_prefix: str,
        snapshot_mode: str = "no_data",
        extra: dict[str, str] | None = None,
        plugin: tuple[str, str] = ("postgres", DEBEZIUM_VERSION),
        connector: dict[str, str] | None = None,
    ) -> None:
        """``connector``: the whole connector configuration instead of the PostgreSQL one
        (``plugin``: the connector and Debezium version to install for it)."""
        lib, plugins = install(*plugin)
        self.work = work
        work.mkdir(parents=True, exist_ok=True)
        self.rest_port = free_port()
        worker = {
            "bootstrap.servers": bootstrap,
            "key.converter": "org.apache.kafka.connect.json.JsonConverter",
            "value.converter": "org.apache.kafka.connect.json.JsonConverter",
            "key.converter.schemas.enable": "false",
            "value.converter.schemas.enable": "false",
            "offset.storage.file.filename": str(work / "offsets.dat"),
            "offset.flush.interval.ms": "1000",
            "plugin.path": str(plugins),
            "listeners": f"http://127.0.0.1:{self.rest_port}",
            **{f"producer.{k}": v for k, v in PRODUCER.items()},
        }
        connector = {
            "name": name,
            "connector.class": "io.debezium.connector.postgresql.PostgresConnector",
            "tasks.max": "1",
            "plugin.name": "pgoutput",
            "database.hostname": pg["host"],
            "database.port": pg["port"],
            "database.user": pg["user"],
            "database.password": pg.get("password", ""),
            "database.dbname": pg["dbname"],
            "slot.name": slot,
            "publication.name": publication,
            "publication.autocreate.mode": "filtered",
            "table.include.list": table_id,
            "topic.prefix": topic_prefix,
            "snapshot.mode": snapshot_mode,
            # Same value representations as ours (see README "Envelope").
            "decimal.handling.mode": "string",
            # What a fair user tunes: the default poll.interval.ms=500 holds events up to
            # half a second waiting for a fuller batch (measured: p50 ~500 ms at 2,000 rows/s);
            # bigger batches and queue as Debezium's docs suggest for throughput.
            **CONNECTOR_TUNING,
            **(extra or {}),
        } if connector is None else {"name": name, **connector}
        self.worker_file = work / "worker.properties"
        self.connector_file = work / "connector.properties"
        self.worker_file.write_text("".join(f"{k}={v}\n" for k, v in worker.items()))
        self.connector_file.write_text("".join(f"{k}={v}\n" for k, v in connector.items()))
        log4j = work / "log4j2.properties"
        log4j.write_text(
            "rootLogger.level=INFO\n"
            "rootLogger.appenderRef.file.ref=file\n"
            "appender.file.type=File\n"
            "appender.file.name=file\n"
            f"appender.file.fileName={work / 'connect.log'}\n"
            "appender.file.layout.type=PatternLayout\n"
            "appender.file.layout.pattern=[%d] %p %m (%c)%n\n"
        )
        self.settings = {"worker": worker, "connector": connector, "heap": HEAP}
        self._out = (work / "connect.out").open("ab")
        self.proc = subprocess.Popen(
            [
                JAVA, HEAP, "-XX:+UseG1GC", f"-Dlog4j2.configurationFile={log4j}",
                "-cp", f"{lib}/*",
                "org.apache.kafka.connect.cli.ConnectStandalone",
                str(self.worker_file), str(self.connector_file),
            ],
            stdout=self._out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.name = name

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def task_state(self) -> str | None:
        url = f"http://127.0.0.1:{self.rest_port}/connectors/{self.name}/status"
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 (loopback)
                import json

                status: dict[str, Any] = json.loads(resp.read())
        except OSError:
            return None
        tasks = status.get("tasks") or []
        return str(tasks[0].get("state")) if tasks else None

    def stop(self, timeout: float = 30.0) -> None:
        if self.alive():
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._out.close()

    def tail(self, lines: int = 30) -> str:
        text = ""
        for f in ("connect.out", "connect.log"):
            p = self.work / f
            if p.exists():
                text += "\n".join(p.read_text(errors="replace").splitlines()[-lines:]) + "\n"
        return text


def wait_running(connect: DebeziumConnect, timeout: float = 180.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and connect.alive():
        if connect.task_state() == "RUNNING":
            return True
        time.sleep(0.5)
    return False


if __name__ == "__main__":
    print(install())
