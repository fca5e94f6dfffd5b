"""A private single-node KRaft broker whose only client listener is SASL_PLAINTEXT with
SCRAM-SHA-256, for proving every Kafka client of the pipeline authenticates.

Reuses the jars of :mod:`pipeline.stack.kafka` (same version, same cache). The SCRAM users
are written into the cluster's bootstrap metadata when the storage is formatted
(``StorageTool format --add-scram``), so the broker accepts them from its first start.
"""

from __future__ import annotations

import base64
import uuid
from dataclasses import dataclass
from pathlib import Path

from pipeline.stack import install as inst
from pipeline.stack import kafka as stack_kafka
from pipeline.stack.ports import free_ports, port_open
from pipeline.stack.process import fail, pid_alive, run, spawn, terminate, wait_until

MECHANISM = "SCRAM-SHA-256"
#: The broker's own identity on its SASL listener (it talks to itself as a client).
ADMIN = ("admin", "admin-secret")


@dataclass
class SecuredBroker:
    folder: Path
    port: int
    pid: int

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        terminate(self.pid, 30, cmdline_contains=stack_kafka.MAIN_CLASS)


def _properties(folder: Path, port: int, cport: int) -> str:
    admin, secret = ADMIN
    return "\n".join([
        "process.roles=broker,controller",
        "node.id=1",
        f"controller.quorum.voters=1@127.0.0.1:{cport}",
        f"listeners=SASL_PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{cport}",
        f"advertised.listeners=SASL_PLAINTEXT://127.0.0.1:{port}",
        "controller.listener.names=CONTROLLER",
        "inter.broker.listener.name=SASL_PLAINTEXT",
        "listener.security.protocol.map=CONTROLLER:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT",
        f"sasl.enabled.mechanisms={MECHANISM}",
        f"sasl.mechanism.inter.broker.protocol={MECHANISM}",
        f"listener.name.sasl_plaintext.{MECHANISM.lower()}.sasl.jaas.config="
        f'org.apache.kafka.common.security.scram.ScramLoginModule required '
        f'username="{admin}" password="{secret}";',
        f"log.dirs={folder / 'data'}",
        "num.partitions=1",
        "auto.create.topics.enable=true",
        "offsets.topic.replication.factor=1",
        "transaction.state.log.replication.factor=1",
        "transaction.state.log.min.isr=1",
        "group.initial.rebalance.delay.ms=0",
        "",
    ])


def start_secured_broker(folder: Path, users: dict[str, str]) -> SecuredBroker:
    """Format and start the broker with SCRAM-SHA-256 users ``users`` (name -> password)
    and wait until its port accepts connections."""
    stack_kafka.install()
    folder.mkdir(parents=True, exist_ok=True)
    port, cport = free_ports(2)
    props = folder / "server.properties"
    props.write_text(_properties(folder, port, cport))
    log4j = folder / "log4j.properties"
    log4j.write_text("\n".join([
        "log4j.rootLogger=INFO, file",
        "log4j.appender.file=org.apache.log4j.FileAppender",
        f"log4j.appender.file.File={folder / 'kafka.log'}",
        "log4j.appender.file.layout=org.apache.log4j.PatternLayout",
        "log4j.appender.file.layout.ConversionPattern=[%d] %p %m (%c)%n",
        "",
    ]))
    java = inst.java_bin(*[j for j in stack_kafka.JDKS if j])
    cp = f"{stack_kafka.lib_dir()}/*"
    jvm_log = [f"-Dlog4j.configuration=file:{log4j}", f"-Dkafka.logs.dir={folder}"]
    cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
    scram = [arg for name, password in {**dict([ADMIN]), **users}.items()
             for arg in ("--add-scram", f"{MECHANISM}=[name={name},password={password}]")]
    run([java, *jvm_log, "-cp", cp, "kafka.tools.StorageTool", "format", "-t", cluster_id,
         "-c", str(props), *scram], timeout=120)
    out = folder / "kafka.out"
    proc = spawn([java, "-Xms256m", "-Xmx512m", "-XX:+UseG1GC", "-Djava.awt.headless=true",
                  *jvm_log, "-cp", cp, stack_kafka.MAIN_CLASS, str(props)], out, cwd=folder)
    broker = SecuredBroker(folder, port, proc.pid)
    ready = wait_until(lambda: port_open(port) and "started (kafka.server" in
                       (folder / "kafka.log").read_text(errors="replace"),
                       stack_kafka.START_TIMEOUT, alive=lambda: pid_alive(proc.pid), interval=0.3)
    if not ready:
        broker.stop()
        raise fail(f"secured kafka on port {port} did not start", folder / "kafka.log", out)
    return broker
