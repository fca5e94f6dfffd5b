"""Orchestration of the local stack: install, start (concurrently), reuse, stop,
status, with ports/pids/connection settings recorded in ``<state>/stack.json``.

The state folder is ``$CDC_STACK_DIR`` or ``<repo>/.stack``. Every mutating call holds
an exclusive file lock on ``<state>/.lock``, so several processes (pytest workers, the
CLI, ``make demo``) may call :func:`up` at once; the servers outlive the caller.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from pipeline.stack import elasticsearch, kafka, mariadb, postgres, redis, registry
from pipeline.stack.errors import StackError
from pipeline.stack.install import file_lock
from pipeline.stack.ports import free_ports, is_port_free

SERVICES: dict[str, ModuleType] = {
    "postgres": postgres,
    "kafka": kafka,
    "redis": redis,
    "elasticsearch": elasticsearch,
    "mariadb": mariadb,
    registry.NAME: registry,
}
ALL = tuple(SERVICES)
#: What ``up()`` starts when no service is named: the schema registry only when asked.
DEFAULT = tuple(n for n in SERVICES if n != registry.NAME)
REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class StackInfo:
    """How to reach the stack. A service never started in this state dir is ""."""

    postgres_dsn: str
    kafka_bootstrap: str
    redis_url: str
    elasticsearch_url: str
    state_dir: Path
    #: Port of MariaDB (the capture user's host is 127.0.0.1); 0 when never started here.
    mariadb_port: int = 0
    #: The schema registry's Confluent-API URL; "" unless it runs (it is optional).
    schema_registry_url: str = ""


@dataclass(frozen=True)
class ServiceStatus:
    """One service as recorded in stack.json and probed now."""

    name: str
    running: bool
    port: int | None
    pid: int | None
    connection: dict[str, Any]


def state_dir() -> Path:
    """``$CDC_STACK_DIR`` or ``<repo>/.stack`` (created, world-traversable)."""
    env = os.environ.get("CDC_STACK_DIR")
    path = Path(env).expanduser().resolve() if env else REPO / ".stack"
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o755)
    return path


def _state_file(base: Path) -> Path:
    return base / "stack.json"


def _read(base: Path) -> dict[str, dict[str, Any]]:
    try:
        data = json.loads(_state_file(base).read_text())
    except (OSError, ValueError):
        return {}
    services = data.get("services", {})
    return services if isinstance(services, dict) else {}


def _write(base: Path, services: dict[str, dict[str, Any]]) -> None:
    path = _state_file(base)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"state_dir": str(base), "services": services}, indent=2) + "\n")
    os.replace(tmp, path)


def _check_names(services: Iterable[str] | None) -> list[str]:
    names = list(DEFAULT) if services is None else list(services)
    unknown = [n for n in names if n not in SERVICES]
    if unknown:
        raise StackError(f"unknown services {unknown}; known: {list(ALL)}")
    return names


def _running(name: str, record: dict[str, Any] | None) -> bool:
    if not record or not record.get("pid"):
        return False
    mod = SERVICES[name]
    return bool(mod.is_alive(record) and mod.is_ready(record))


def _info(base: Path, records: dict[str, dict[str, Any]]) -> StackInfo:
    def conn(name: str, key: str) -> str:
        rec = records.get(name)
        return str(SERVICES[name].connection(rec)[key]) if rec and rec.get("port") else ""

    return StackInfo(
        postgres_dsn=conn("postgres", "dsn"),
        kafka_bootstrap=conn("kafka", "bootstrap_servers"),
        redis_url=conn("redis", "url"),
        elasticsearch_url=conn("elasticsearch", "url"),
        state_dir=base,
        mariadb_port=int(conn("mariadb", "port") or 0),
        schema_registry_url=conn(registry.NAME, "url") if _running(
            registry.NAME, records.get(registry.NAME)) else "",
    )


def _assign_ports(names: list[str], records: dict[str, dict[str, Any]]) -> dict[str, dict]:
    """Reuse each service's recorded ports when still free, else pick new free ones."""
    taken = {
        p
        for rec in records.values()
        for k, p in rec.items()
        if k.endswith("port") and isinstance(p, int)
    }
    chosen: dict[str, dict[str, int]] = {}
    for name in names:
        rec = records.get(name, {})
        ports: dict[str, int] = {}
        for key in SERVICES[name].PORTS:
            old = rec.get(key)
            if isinstance(old, int) and is_port_free(old):
                ports[key] = old
            else:
                ports[key] = free_ports(1, exclude=taken)[0]
                taken.add(ports[key])
        chosen[name] = ports
    return chosen


def _start_one(base: Path, name: str, ports: dict[str, int]) -> dict[str, Any]:
    mod = SERVICES[name]
    t0 = time.monotonic()
    mod.install()
    t1 = time.monotonic()
    record = mod.start(base / name, ports)
    t2 = time.monotonic()
    record.update(mod.connection(record))
    record["install_seconds"] = round(t1 - t0, 2)
    record["start_seconds"] = round(t2 - t1, 2)
    record["started_at"] = time.time()
    return record


def up(services: Iterable[str] | None = None) -> StackInfo:
    """Install what is missing and start the given services (default: all but the schema
    registry)
    concurrently; services already running (pid alive and readiness probe passing) are
    reused. Ports recorded in stack.json are reused. Raises StackError (with the log
    tail) if a server fails; the others that did start stay up and are recorded."""
    names = _check_names(services)
    base = state_dir()
    with file_lock(base / ".lock"):
        records = _read(base)
        todo = [n for n in names if not _running(n, records.get(n))]
        for name in todo:  # a process that is alive but not answering is restarted
            rec = records.get(name)
            if rec and rec.get("pid"):
                SERVICES[name].stop(base / name, rec, 20)
        ports = _assign_ports(todo, records)
        errors: list[str] = []
        if todo:
            with ThreadPoolExecutor(max_workers=len(todo)) as pool:
                futures = {n: pool.submit(_start_one, base, n, ports[n]) for n in todo}
                for name, fut in futures.items():
                    try:
                        records[name] = fut.result()
                    except Exception as e:  # noqa: BLE001
                        records[name] = {**records.get(name, {}), **ports[name], "pid": None}
                        errors.append(f"[{name}] {e}")
            _write(base, records)
        if errors:
            raise StackError("\n\n".join(errors))
        return _info(base, records)


def start_service(name: str) -> StackInfo:
    """Start one service (same port and data as before if it ran already)."""
    return up([name])


def stop_service(name: str, timeout: float = 30.0) -> None:
    """Stop one service gracefully (SIGKILL after ``timeout``); keeps its ports and data
    so :func:`start_service` brings it back at the same address."""
    _check_names([name])
    base = state_dir()
    with file_lock(base / ".lock"):
        records = _read(base)
        rec = records.get(name)
        if rec:
            SERVICES[name].stop(base / name, rec, timeout)
            rec["pid"] = None
            _write(base, records)


def down(timeout: float = 30.0) -> None:
    """Stop every service recorded in the state dir (concurrently, graceful then
    SIGKILL after ``timeout``). Ports and data are kept for the next :func:`up`."""
    base = state_dir()
    with file_lock(base / ".lock"):
        records = _read(base)
        live = {n: r for n, r in records.items() if n in SERVICES and r.get("pid")}
        if live:
            with ThreadPoolExecutor(max_workers=len(live)) as pool:
                futs = [
                    pool.submit(SERVICES[n].stop, base / n, r, timeout) for n, r in live.items()
                ]
                for f in futs:
                    f.result()
        for rec in records.values():
            rec["pid"] = None
        if records:
            _write(base, records)


def status() -> dict[str, ServiceStatus]:
    """Per service (all, the optional schema registry while it runs): running now?,
    recorded port, pid, connection settings."""
    base = state_dir()
    records = _read(base)
    result: dict[str, ServiceStatus] = {}
    for name, mod in SERVICES.items():
        rec = records.get(name) or {}
        running = _running(name, rec)
        if name not in DEFAULT and not running:
            continue  # an optional service is listed while it runs
        result[name] = ServiceStatus(
            name=name,
            running=running,
            port=rec.get("port"),
            pid=rec.get("pid") if running else None,
            connection=mod.connection(rec) if rec.get("port") else {},
        )
    return result


def load() -> StackInfo | None:
    """The running stack if every service is up and answering, else None."""
    base = state_dir()
    records = _read(base)
    if all(_running(n, records.get(n)) for n in DEFAULT):
        return _info(base, records)
    return None


def env_vars(info: StackInfo) -> dict[str, str]:
    """Environment variables the app's settings read, for ``info``."""
    env = {
        "CDC_POSTGRES__DSN": info.postgres_dsn,
        "CDC_KAFKA__BOOTSTRAP_SERVERS": info.kafka_bootstrap,
        "CDC_REDIS__URL": info.redis_url,
        "CDC_ELASTICSEARCH__URL": info.elasticsearch_url,
    }
    if info.schema_registry_url:
        env["CDC_KAFKA__SCHEMA_REGISTRY_URL"] = info.schema_registry_url
    if info.mariadb_port:
        env.update({
            "CDC_MYSQL__HOST": "127.0.0.1",
            "CDC_MYSQL__PORT": str(info.mariadb_port),
            "CDC_MYSQL__USER": mariadb.CAPTURE_USER,
            "CDC_MYSQL__PASSWORD": mariadb.CAPTURE_PASSWORD,
        })
    return env
