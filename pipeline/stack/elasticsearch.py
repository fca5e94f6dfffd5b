"""Elasticsearch 9 (Maven Central ``integ-test-zip`` distribution: real Elasticsearch
with the core modules only), unpacked once under ``<cache>/elasticsearch-<ver>``, run
as the non-root system user ``cdcstack`` with Java 21+ (Temurin 25), single-node,
HTTP on 127.0.0.1, state under ``<state>/elasticsearch``.

``GET /`` is not available in this distribution; readiness uses ``/_cluster/health``.
Service interface used by :mod:`pipeline.stack.runner`: ``install``, ``start``,
``is_ready``, ``is_alive``, ``stop``, ``connection``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import httpx

from pipeline.stack import install as inst
from pipeline.stack.process import (
    fail,
    pid_alive,
    read_pidfile,
    run,
    spawn,
    terminate,
    wait_until,
)

NAME = "elasticsearch"
PORTS = ("port", "transport_port")
VERSION = os.environ.get("CDC_ES_VERSION", "9.3.2")
ARTIFACT = f"org.elasticsearch.distribution.integ-test-zip:elasticsearch:{VERSION}:zip"
OS_USER = "cdcstack"
JAVA_HOME = os.environ.get("CDC_ES_JAVA_HOME", "/usr/lib/jvm/temurin-25-jdk-amd64")
START_TIMEOUT = 180.0
HEAP = os.environ.get("CDC_ES_HEAP", "512m")
PID_MARK = "org.elasticsearch"


def dist_dir() -> Path:
    """The unpacked distribution in the cache (``<cache>/elasticsearch-<ver>``)."""
    return inst.cache_dir() / f"elasticsearch-{VERSION}"


def install() -> None:
    """Download the zip with mvn and unpack it once; create the ``cdcstack`` user."""
    inst.ensure_system_user(OS_USER)
    if (dist_dir() / inst.MARKER).exists():
        return
    archive = inst.maven_artifact(ARTIFACT, inst.cache_dir() / "downloads")
    inst.unzip_once(archive, dist_dir())


def _home_in(dist: Path) -> Path:
    inner = dist / f"elasticsearch-{VERSION}"
    return inner if inner.exists() else dist


def url(port: int) -> str:
    """Base HTTP URL of the local server."""
    return f"http://127.0.0.1:{port}"


def connection(record: dict[str, Any]) -> dict[str, Any]:
    """Connection settings recorded in stack.json."""
    return {"url": url(record["port"])}


def _health_ok(port: int) -> bool:
    r = httpx.get(
        f"{url(port)}/_cluster/health",
        params={"wait_for_status": "yellow", "timeout": "2s"},
        timeout=5,
    )
    return r.status_code == 200 and r.json().get("status") in ("green", "yellow")


def is_ready(record: dict[str, Any]) -> bool:
    """True when cluster health is yellow or green."""
    try:
        return _health_ok(record["port"])
    except Exception:  # noqa: BLE001
        return False


def is_alive(record: dict[str, Any]) -> bool:
    """True when the recorded pid is the running Elasticsearch server JVM."""
    return pid_alive(record.get("pid"), PID_MARK)


def _prepare_home(svc_dir: Path) -> Path:
    """A copy of the distribution the service user can read: hard links into the state
    dir (the cache may sit under a private home such as /root), copied if that fails."""
    home = svc_dir / "home"
    marker = home / inst.MARKER
    if marker.exists() and marker.read_text().strip() == VERSION:
        return home
    src = _home_in(dist_dir())
    if home.exists():
        shutil.rmtree(home)
    try:
        run(["cp", "-al", str(src), str(home)])
    except Exception:  # noqa: BLE001 - different filesystem
        shutil.copytree(src, home, symlinks=True)
    (home / inst.MARKER).write_text(VERSION + "\n")
    run(["chmod", "-R", "a+rX", str(home)])
    return home


def start(svc_dir: Path, ports: dict[str, int]) -> dict[str, Any]:
    """Start Elasticsearch as ``cdcstack`` on ``ports['port']`` (transport on
    ``ports['transport_port']``) and wait for cluster health yellow."""
    port, tport = ports["port"], ports["transport_port"]
    svc_dir.mkdir(parents=True, exist_ok=True)
    home = _prepare_home(svc_dir)
    config = svc_dir / "config"
    if not (config / "elasticsearch.yml").exists():
        shutil.copytree(home / "config", config, dirs_exist_ok=True)
    for sub in ("data", "logs", "tmp"):
        (svc_dir / sub).mkdir(exist_ok=True)
    out = svc_dir / "elasticsearch.out"
    pidfile = svc_dir / "elasticsearch.pid"
    pidfile.unlink(missing_ok=True)
    out.touch()
    for p in (config, svc_dir / "data", svc_dir / "logs", svc_dir / "tmp", out):
        inst.chown_tree(p, OS_USER)
    run(["chown", f"{OS_USER}:", str(svc_dir)])
    inst.check_user_can_write(OS_USER, svc_dir / "data")
    env = dict(os.environ)
    env.update(
        {
            "ES_JAVA_HOME": JAVA_HOME,
            "JAVA_HOME": JAVA_HOME,
            "ES_PATH_CONF": str(config),
            "ES_TMPDIR": str(svc_dir / "tmp"),
            "ES_JAVA_OPTS": f"-Xms{HEAP} -Xmx{HEAP}",
        }
    )
    settings = {
        "cluster.name": "cdc-stack",
        "node.name": "cdc-node",
        "http.host": "127.0.0.1",
        "http.port": str(port),
        "transport.host": "127.0.0.1",
        "transport.port": str(tport),
        "discovery.type": "single-node",
        "xpack.security.enabled": "false",
        "path.data": str(svc_dir / "data"),
        "path.logs": str(svc_dir / "logs"),
        "cluster.routing.allocation.disk.threshold_enabled": "false",
        "action.auto_create_index": "true",
    }
    cmd = ["runuser", "-u", OS_USER, "--", str(home / "bin" / "elasticsearch"), "-p", str(pidfile)]
    for key, value in settings.items():
        cmd += ["-E", f"{key}={value}"]
    launcher = spawn(cmd, out, env=env, cwd=svc_dir)
    logs = (out, svc_dir / "logs" / "cdc-stack.log")
    if not wait_until(
        lambda: _health_ok(port), START_TIMEOUT, alive=lambda: launcher.poll() is None, interval=0.5
    ):
        terminate(read_pidfile(pidfile), 10, group=launcher.pid)
        raise fail(f"elasticsearch on port {port} did not report health yellow", *logs)
    pid = read_pidfile(pidfile)
    return {
        "port": port,
        "transport_port": tport,
        "pid": pid,
        "pgid": launcher.pid,
        "log": str(logs[1]),
    }


def stop(svc_dir: Path, record: dict[str, Any], timeout: float = 30.0) -> None:
    """SIGTERM the server JVM; SIGKILL it and its launcher group after ``timeout``."""
    pid = record.get("pid") or read_pidfile(svc_dir / "elasticsearch.pid")
    terminate(pid, timeout, cmdline_contains=PID_MARK)
    pgid = record.get("pgid")
    if pgid and pid_alive(pgid):
        wait_until(lambda: not pid_alive(pgid), 10)
        terminate(pgid, 1, group=pgid)
