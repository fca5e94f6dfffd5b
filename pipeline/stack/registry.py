"""Apicurio Registry 3.3.3, a schema registry that serves Confluent's API
(``/apis/ccompat/v7``). Its Quarkus distribution (``io.apicurio:apicurio-registry-app:
3.3.3:tar.gz:all`` on Maven Central, the ``quarkus-app`` layout: ``quarkus-run.jar`` plus
``lib/``) is unpacked once under ``<cache>/apicurio-registry-3.3.3``; it runs with Java 21+
(Temurin 25), HTTP and the management interface (health) on 127.0.0.1, schemas in an H2 file
database under ``<state>/schema-registry`` (kept across restarts).

Optional: ``cdc stack up`` starts it only when asked (``--with-registry``, the service name,
or a configuration with ``kafka.value_format: avro``). Service interface used by
:mod:`pipeline.stack.runner`: ``install``, ``start``, ``is_ready``, ``is_alive``, ``stop``,
``connection``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import httpx

from pipeline.stack import install as inst
from pipeline.stack.process import fail, pid_alive, spawn, terminate, wait_until

NAME = "schema-registry"
PORTS = ("port", "management_port")
VERSION = "3.3.3"
ARTIFACT = f"io.apicurio:apicurio-registry-app:{VERSION}:tar.gz:all"
JAVA_HOME = os.environ.get("CDC_REGISTRY_JAVA_HOME", "/usr/lib/jvm/temurin-25-jdk-amd64")
HEAP = os.environ.get("CDC_REGISTRY_HEAP", "384m")
START_TIMEOUT = 180.0
PID_MARK = "quarkus-run.jar"
#: The Confluent-compatible API under the server's root.
CCOMPAT_PATH = "/apis/ccompat/v7"


def dist_dir() -> Path:
    """The unpacked distribution in the cache (``<cache>/apicurio-registry-<ver>``)."""
    return inst.cache_dir() / f"apicurio-registry-{VERSION}"


def install() -> None:
    """Download the distribution with mvn (158 MB, once) and unpack it once."""
    if (dist_dir() / inst.MARKER).exists():
        return
    archive = inst.maven_artifact(ARTIFACT, inst.cache_dir() / "downloads")
    inst.untar_once(archive, dist_dir())


def url(port: int) -> str:
    """The Confluent-API base URL clients use (``kafka.schema_registry_url``)."""
    return f"http://127.0.0.1:{port}{CCOMPAT_PATH}"


def connection(record: dict[str, Any]) -> dict[str, Any]:
    """Connection settings recorded in stack.json."""
    return {"url": url(record["port"])}


def _ready(record: dict[str, Any]) -> bool:
    health = httpx.get(f"http://127.0.0.1:{record['management_port']}/health/ready", timeout=5)
    subjects = httpx.get(f"{url(record['port'])}/subjects", timeout=5)
    return health.status_code == 200 and subjects.status_code == 200


def is_ready(record: dict[str, Any]) -> bool:
    """True when the readiness check is UP and the Confluent API lists subjects."""
    try:
        return _ready(record)
    except Exception:  # noqa: BLE001
        return False


def is_alive(record: dict[str, Any]) -> bool:
    """True when the recorded pid is the registry's JVM."""
    return pid_alive(record.get("pid"), PID_MARK)


def start(svc_dir: Path, ports: dict[str, int]) -> dict[str, Any]:
    """Start the registry on ``ports['port']`` and wait until it is ready."""
    record = {"port": ports["port"], "management_port": ports["management_port"]}
    (svc_dir / "data").mkdir(parents=True, exist_ok=True)
    out = svc_dir / "registry.out"
    settings = {
        "quarkus.http.host": "127.0.0.1",
        "quarkus.http.port": ports["port"],
        "quarkus.management.host": "127.0.0.1",
        "quarkus.management.port": ports["management_port"],
        # The default is an in-memory H2: schemas (and so the ids on the topics) would be
        # lost with every restart. A file keeps them.
        "apicurio.datasource.url": f"jdbc:h2:file:{svc_dir / 'data' / 'registry'}",
        "quarkus.log.console.json": "false",
    }
    cmd = [
        str(Path(JAVA_HOME) / "bin" / "java"),
        f"-Xmx{HEAP}",
        "-XX:+UseSerialGC",  # a small, mostly idle server on a shared 2-core machine
        "-XX:TieredStopAtLevel=1",
        *(f"-D{key}={value}" for key, value in settings.items()),
        "-jar",
        str(dist_dir() / "quarkus-run.jar"),
    ]
    proc = spawn(cmd, out, cwd=svc_dir)
    if not wait_until(lambda: is_ready(record), START_TIMEOUT,
                      alive=lambda: proc.poll() is None, interval=0.5):
        terminate(proc.pid, 10)
        raise fail(f"the schema registry on port {ports['port']} did not become ready", out)
    return {**record, "pid": proc.pid, "log": str(out)}


def stop(svc_dir: Path, record: dict[str, Any], timeout: float = 30.0) -> None:
    """SIGTERM (Quarkus shuts down cleanly), SIGKILL after ``timeout``."""
    terminate(record.get("pid"), timeout, cmdline_contains=PID_MARK)
