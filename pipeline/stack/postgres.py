"""PostgreSQL 15 from Debian's ``postgresql-15`` package, a private cluster under
``<state>/postgres`` (superuser ``postgres``, trust auth, ``wal_level=logical``),
with the application database ``cdc`` created on first start.

Service interface used by :mod:`pipeline.stack.runner`: ``install``, ``start``,
``is_ready``, ``is_alive``, ``stop``, ``connection``.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import psycopg2

from pipeline.stack import install as inst
from pipeline.stack.process import fail, pid_alive, read_pidfile, run, terminate, wait_until

NAME = "postgres"
PORTS = ("port",)
BIN = Path("/usr/lib/postgresql/15/bin")
APP_DB = "cdc"
OS_USER = "postgres"
START_TIMEOUT = 90.0


def install() -> None:
    """Install ``postgresql-15`` with apt unless its binaries exist."""
    inst.apt_install(["postgresql-15"], BIN / "postgres")


def _pg(*args: str, timeout: float = 120) -> None:
    run(["runuser", "-u", OS_USER, "--", *args], timeout=timeout)


def dsn(port: int, dbname: str = APP_DB) -> str:
    """libpq key/value DSN for the local server."""
    return f"host=127.0.0.1 port={port} user=postgres dbname={dbname}"


def connection(record: dict[str, Any]) -> dict[str, Any]:
    """Connection settings recorded in stack.json."""
    return {"dsn": dsn(record["port"]), "admin_dsn": dsn(record["port"], "postgres")}


def _query_ok(port: int, dbname: str = "postgres") -> bool:
    conn = psycopg2.connect(dsn(port, dbname), connect_timeout=2)
    try:
        with conn.cursor() as cur:
            cur.execute("select 1")
            return cur.fetchone() == (1,)
    finally:
        conn.close()


def is_ready(record: dict[str, Any]) -> bool:
    """True when ``select 1`` succeeds in the ``cdc`` database."""
    try:
        return _query_ok(record["port"], APP_DB)
    except Exception:  # noqa: BLE001
        return False


def is_alive(record: dict[str, Any]) -> bool:
    """True when the recorded postmaster pid is still a running postgres."""
    return pid_alive(record.get("pid"), "postgres")


def start(svc_dir: Path, ports: dict[str, int]) -> dict[str, Any]:
    """initdb (once) and start the cluster on ``ports['port']``; wait until it answers
    SQL and ensure database ``cdc`` exists. Returns the stack.json record."""
    port = ports["port"]
    data = svc_dir / "data"
    log = svc_dir / "postgres.log"
    svc_dir.mkdir(parents=True, exist_ok=True)
    inst.chown_tree(svc_dir, OS_USER)
    inst.check_user_can_write(OS_USER, svc_dir)
    if not (data / "PG_VERSION").exists():
        if data.exists():
            run(["rm", "-rf", str(data)])
        _pg(
            str(BIN / "initdb"),
            "-D",
            str(data),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-locale",
        )
    opts = (
        f"-c listen_addresses=127.0.0.1 -p {port} -k {svc_dir} "
        "-c wal_level=logical -c max_replication_slots=20 -c max_wal_senders=20"
    )
    try:
        _pg(
            str(BIN / "pg_ctl"),
            "-D",
            str(data),
            "-l",
            str(log),
            "-w",
            "-t",
            str(int(START_TIMEOUT)),
            "-o",
            opts,
            "start",
            timeout=START_TIMEOUT + 30,
        )
    except Exception as e:
        raise fail(f"postgres failed to start on port {port}: {e}", log) from e
    pid = read_pidfile(data / "postmaster.pid")
    if not wait_until(lambda: _query_ok(port), START_TIMEOUT, alive=lambda: pid_alive(pid)):
        raise fail(f"postgres on port {port} does not answer select 1", log)
    conn = psycopg2.connect(dsn(port, "postgres"), connect_timeout=5)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("select 1 from pg_database where datname = %s", (APP_DB,))
            if cur.fetchone() is None:
                cur.execute(f'create database "{APP_DB}"')
    finally:
        conn.close()
    return {"port": port, "pid": pid, "log": str(log), "data": str(data)}


def stop(svc_dir: Path, record: dict[str, Any], timeout: float = 30.0) -> None:
    """Fast shutdown via ``pg_ctl stop -m fast``; SIGKILL after ``timeout``."""
    data = svc_dir / "data"
    pid = record.get("pid") or read_pidfile(data / "postmaster.pid")
    if not pid_alive(pid, "postgres"):
        return
    with contextlib.suppress(Exception):
        _pg(
            str(BIN / "pg_ctl"),
            "-D",
            str(data),
            "-m",
            "fast",
            "-w",
            "-t",
            str(int(timeout)),
            "stop",
            timeout=timeout + 15,
        )
    terminate(pid, 5, cmdline_contains="postgres")
