"""Redis 7 from Debian's ``redis-server`` package, daemonized on 127.0.0.1 with no
persistence, files under ``<state>/redis``.

Service interface used by :mod:`pipeline.stack.runner`: ``install``, ``start``,
``is_ready``, ``is_alive``, ``stop``, ``connection``.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import redis as redis_client

from pipeline.stack import install as inst
from pipeline.stack.process import fail, pid_alive, read_pidfile, run, terminate, wait_until

NAME = "redis"
PORTS = ("port",)
START_TIMEOUT = 30.0


def _binary() -> str:
    return shutil.which("redis-server") or "/usr/bin/redis-server"


def install() -> None:
    """Install ``redis-server`` with apt unless the binary exists."""
    if shutil.which("redis-server"):
        return
    inst.apt_install(["redis-server"], Path("/usr/bin/redis-server"))


def url(port: int) -> str:
    """redis:// URL of the local server (database 0)."""
    return f"redis://127.0.0.1:{port}/0"


def connection(record: dict[str, Any]) -> dict[str, Any]:
    """Connection settings recorded in stack.json."""
    return {"url": url(record["port"])}


def _ping(port: int) -> bool:
    client = redis_client.Redis(
        host="127.0.0.1", port=port, socket_timeout=2, socket_connect_timeout=2
    )
    try:
        return bool(client.ping())
    finally:
        client.close()


def is_ready(record: dict[str, Any]) -> bool:
    """True when PING answers."""
    try:
        return _ping(record["port"])
    except Exception:  # noqa: BLE001
        return False


def is_alive(record: dict[str, Any]) -> bool:
    """True when the recorded pid is a running redis-server."""
    return pid_alive(record.get("pid"), "redis-server")


def start(svc_dir: Path, ports: dict[str, int]) -> dict[str, Any]:
    """Start ``redis-server --daemonize yes`` on ``ports['port']``; wait for PING."""
    port = ports["port"]
    svc_dir.mkdir(parents=True, exist_ok=True)
    log = svc_dir / "redis.log"
    pidfile = svc_dir / "redis.pid"
    pidfile.unlink(missing_ok=True)
    try:
        run(
            [
                _binary(),
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(svc_dir),
                "--daemonize",
                "yes",
                "--pidfile",
                str(pidfile),
                "--logfile",
                str(log),
            ],
            timeout=30,
        )
    except Exception as e:
        raise fail(f"redis failed to start on port {port}: {e}", log) from e
    wait_until(lambda: read_pidfile(pidfile) is not None, 10)
    pid = read_pidfile(pidfile)
    if not wait_until(lambda: _ping(port), START_TIMEOUT, alive=lambda: pid_alive(pid)):
        raise fail(f"redis on port {port} does not answer PING", log)
    return {"port": port, "pid": pid, "log": str(log)}


def stop(svc_dir: Path, record: dict[str, Any], timeout: float = 30.0) -> None:
    """SHUTDOWN NOSAVE, then SIGTERM/SIGKILL the recorded pid if still alive."""
    pid = record.get("pid") or read_pidfile(svc_dir / "redis.pid")
    if not pid_alive(pid, "redis-server"):
        return
    try:
        client = redis_client.Redis(host="127.0.0.1", port=record["port"], socket_timeout=2)
        client.shutdown(nosave=True)
    except Exception:  # noqa: BLE001 - shutdown closes the connection
        pass
    if not wait_until(lambda: not pid_alive(pid), min(timeout, 10)):
        terminate(pid, timeout, cmdline_contains="redis-server")
