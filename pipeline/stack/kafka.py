"""Apache Kafka 3.9.1, KRaft single node (broker + controller in one JVM), jars from
Maven Central cached under ``<cache>/kafka-3.9.1/lib``, state under ``<state>/kafka``.

3.9.1 rather than 4.x: aiokafka/faust compatibility and Debezium 3.2 (built against 3.9).
Service interface used by :mod:`pipeline.stack.runner`: ``install``, ``start``,
``is_ready``, ``is_alive``, ``stop``, ``connection``.
"""

from __future__ import annotations

import base64
import logging
import os
import uuid
from pathlib import Path
from typing import Any

from pipeline.stack import install as inst
from pipeline.stack.ports import port_open
from pipeline.stack.process import fail, pid_alive, run, spawn, terminate, wait_until

NAME = "kafka"
PORTS = ("port", "controller_port")
VERSION = "3.9.1"
DEPENDENCIES = (
    f"org.apache.kafka:kafka_2.13:{VERSION}",
    "ch.qos.reload4j:reload4j:1.2.25",
    "org.slf4j:slf4j-reload4j:1.7.36",
)
JDKS = (
    os.environ.get("CDC_KAFKA_JAVA_HOME", ""),
    "/usr/lib/jvm/java-17-openjdk-amd64",
    "/usr/lib/jvm/temurin-25-jdk-amd64",
    os.environ.get("JAVA_HOME", ""),
)
START_TIMEOUT = 120.0
MAIN_CLASS = "kafka.Kafka"

_quiet = logging.getLogger("pipeline.stack.kafka.client")
_quiet.addHandler(logging.NullHandler())
_quiet.propagate = False


def lib_dir() -> Path:
    """Folder holding the Kafka jars (``<cache>/kafka-3.9.1/lib``)."""
    return inst.cache_dir() / f"kafka-{VERSION}" / "lib"


def install() -> None:
    """Resolve Kafka and the reload4j logging backend with mvn (cached with a marker)."""
    inst.maven_libs(inst.cache_dir() / f"kafka-{VERSION}", DEPENDENCIES)


def bootstrap(port: int) -> str:
    """bootstrap.servers value for clients."""
    return f"127.0.0.1:{port}"


def connection(record: dict[str, Any]) -> dict[str, Any]:
    """Connection settings recorded in stack.json."""
    return {"bootstrap_servers": bootstrap(record["port"])}


def _metadata_ok(port: int) -> bool:
    from confluent_kafka.admin import AdminClient

    if not port_open(port):
        return False
    conf: dict[str, Any] = {
        "bootstrap.servers": bootstrap(port),
        "logger": _quiet,
        "socket.timeout.ms": 3000,
    }
    admin = AdminClient(conf)
    md = admin.list_topics(timeout=3)
    return len(md.brokers) > 0


def is_ready(record: dict[str, Any]) -> bool:
    """True when a metadata request (AdminClient.list_topics) lists a broker."""
    try:
        return _metadata_ok(record["port"])
    except Exception:  # noqa: BLE001
        return False


def is_alive(record: dict[str, Any]) -> bool:
    """True when the recorded pid is a running Kafka JVM."""
    return pid_alive(record.get("pid"), MAIN_CLASS)


def _write_config(svc_dir: Path, port: int, cport: int) -> tuple[Path, Path]:
    data = svc_dir / "data"
    props = svc_dir / "server.properties"
    props.write_text(
        "\n".join(
            [
                "process.roles=broker,controller",
                "node.id=1",
                f"controller.quorum.voters=1@127.0.0.1:{cport}",
                f"listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{cport}",
                f"advertised.listeners=PLAINTEXT://127.0.0.1:{port}",
                "controller.listener.names=CONTROLLER",
                "inter.broker.listener.name=PLAINTEXT",
                "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
                f"log.dirs={data}",
                "num.partitions=1",
                "auto.create.topics.enable=true",
                "offsets.topic.replication.factor=1",
                "transaction.state.log.replication.factor=1",
                "transaction.state.log.min.isr=1",
                "share.coordinator.state.topic.replication.factor=1",
                "share.coordinator.state.topic.min.isr=1",
                "group.initial.rebalance.delay.ms=0",
                "log.retention.hours=168",
                "",
            ]
        )
    )
    log4j = svc_dir / "log4j.properties"
    log4j.write_text(
        "\n".join(
            [
                "log4j.rootLogger=INFO, file",
                "log4j.appender.file=org.apache.log4j.RollingFileAppender",
                f"log4j.appender.file.File={svc_dir / 'kafka.log'}",
                "log4j.appender.file.MaxFileSize=50MB",
                "log4j.appender.file.MaxBackupIndex=2",
                "log4j.appender.file.layout=org.apache.log4j.PatternLayout",
                "log4j.appender.file.layout.ConversionPattern=[%d] %p %m (%c)%n",
                "log4j.logger.kafka=INFO",
                "log4j.logger.org.apache.kafka=INFO",
                "log4j.logger.state.change.logger=WARN",
                "log4j.logger.kafka.request.logger=WARN",
                "",
            ]
        )
    )
    return props, log4j


def new_cluster_id() -> str:
    """A random cluster id as Kafka's own ``Uuid.randomUuid`` makes it: url-safe base64 of
    16 random bytes, drawn again when it starts with '-' (the storage tool's argument parser
    would read such an id as an option, and formatting fails one time in 64)."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):
            return cid


def start(svc_dir: Path, ports: dict[str, int]) -> dict[str, Any]:
    """Write server.properties, format storage once, start the JVM detached and wait
    until a metadata request succeeds. Returns the stack.json record."""
    port, cport = ports["port"], ports["controller_port"]
    svc_dir.mkdir(parents=True, exist_ok=True)
    props, log4j = _write_config(svc_dir, port, cport)
    java = inst.java_bin(*[j for j in JDKS if j])
    cp = f"{lib_dir()}/*"
    log = svc_dir / "kafka.log"
    out = svc_dir / "kafka.out"
    jvm_log = [f"-Dlog4j.configuration=file:{log4j}", f"-Dkafka.logs.dir={svc_dir}"]
    if not (svc_dir / "data" / "meta.properties").exists():
        cluster_id = new_cluster_id()
        try:
            run(
                [
                    java,
                    *jvm_log,
                    "-cp",
                    cp,
                    "kafka.tools.StorageTool",
                    "format",
                    "-t",
                    cluster_id,
                    "-c",
                    str(props),
                ],
                timeout=120,
            )
        except Exception as e:
            raise fail(f"kafka storage format failed: {e}", log) from e
    proc = spawn(
        [
            java,
            "-Xms512m",
            "-Xmx512m",
            "-XX:+UseG1GC",
            "-Djava.awt.headless=true",
            *jvm_log,
            "-cp",
            cp,
            MAIN_CLASS,
            str(props),
        ],
        out,
        cwd=svc_dir,
    )
    pid = proc.pid
    if not wait_until(
        lambda: _metadata_ok(port), START_TIMEOUT, alive=lambda: pid_alive(pid), interval=0.3
    ):
        terminate(pid, 10)
        raise fail(f"kafka on port {port} did not answer a metadata request", log, out)
    return {"port": port, "controller_port": cport, "pid": pid, "log": str(log)}


def stop(svc_dir: Path, record: dict[str, Any], timeout: float = 30.0) -> None:
    """SIGTERM (controlled shutdown), SIGKILL after ``timeout``."""
    terminate(record.get("pid"), timeout, cmdline_contains=MAIN_CLASS)
