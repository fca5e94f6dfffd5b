"""MariaDB 10.11 from Debian's ``mariadb-server`` package, a private datadir under
``<state>/mariadb`` with the binlog as a capture needs it (``ROW`` format, ``FULL`` row
image, ``FULL`` row metadata: column names travel in every table-map event), and a capture
user ``cdc`` (password ``cdc``) holding ``REPLICATION SLAVE, REPLICATION CLIENT, SELECT``.

``root`` has no password and may connect over TCP from 127.0.0.1 (tests create their
databases with it). The package's own service is never used: the server runs as the
``mysql`` system user from our datadir, socket and port.

Service interface used by :mod:`pipeline.stack.runner`: ``install``, ``start``,
``is_ready``, ``is_alive``, ``stop``, ``connection``.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import pymysql

from pipeline.stack import install as inst
from pipeline.stack.process import fail, pid_alive, read_pidfile, run, spawn, terminate, wait_until

NAME = "mariadb"
PORTS = ("port",)
SERVER = Path("/usr/sbin/mariadbd")
INSTALL_DB = "mariadb-install-db"
OS_USER = "mysql"
CAPTURE_USER = "cdc"
CAPTURE_PASSWORD = "cdc"
START_TIMEOUT = 90.0
#: What a binlog capture needs of the server (the same in docker-compose.yml).
BINLOG_OPTIONS = (
    "--binlog-format=ROW",
    "--binlog-row-image=FULL",
    "--binlog-row-metadata=FULL",
    "--server-id=1",
)


def install() -> None:
    """Install ``mariadb-server`` with apt unless the server binary exists."""
    inst.apt_install(["mariadb-server"], SERVER)


def connection(record: dict[str, Any]) -> dict[str, Any]:
    """Connection settings recorded in stack.json (the capture user, and root for admin)."""
    return {"host": "127.0.0.1", "port": record["port"], "user": CAPTURE_USER,
            "password": CAPTURE_PASSWORD, "admin_user": "root"}


def connect(port: int, user: str = "root", password: str = "", **kwargs: Any) -> Any:
    """A pymysql connection to the local server over TCP (utf8mb4, autocommit)."""
    return pymysql.connect(host="127.0.0.1", port=port, user=user, password=password,
                           charset="utf8mb4", autocommit=True, connect_timeout=2, **kwargs)


def _query_ok(port: int, user: str = "root", password: str = "") -> bool:
    conn = connect(port, user, password)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
            return cur.fetchone() == (1,)
    finally:
        conn.close()


def is_ready(record: dict[str, Any]) -> bool:
    """True when the capture user can run ``SELECT 1``."""
    try:
        return _query_ok(record["port"], CAPTURE_USER, CAPTURE_PASSWORD)
    except Exception:  # noqa: BLE001
        return False


def is_alive(record: dict[str, Any]) -> bool:
    """True when the recorded pid is still a running mariadbd."""
    return pid_alive(record.get("pid"), "mariadbd")


def _initialise(svc_dir: Path, data: Path) -> None:
    if (data / "mysql").is_dir():
        return
    if data.exists():
        run(["rm", "-rf", str(data)])
    run([INSTALL_DB, "--no-defaults", f"--user={OS_USER}", f"--datadir={data}",
         "--auth-root-authentication-method=normal", "--skip-test-db"], timeout=300)
    inst.chown_tree(svc_dir, OS_USER)


def start(svc_dir: Path, ports: dict[str, int]) -> dict[str, Any]:
    """Create the datadir (once), start ``mariadbd`` on ``ports['port']`` with the binlog
    settings capture needs, wait until it answers, and ensure the capture user exists."""
    port = ports["port"]
    data = svc_dir / "data"
    log = svc_dir / "err.log"
    pidfile = svc_dir / "mariadbd.pid"
    svc_dir.mkdir(parents=True, exist_ok=True)
    inst.chown_tree(svc_dir, OS_USER)
    inst.check_user_can_write(OS_USER, svc_dir)
    _initialise(svc_dir, data)
    pidfile.unlink(missing_ok=True)
    proc = spawn([
        str(SERVER), "--no-defaults", f"--user={OS_USER}", f"--datadir={data}",
        f"--port={port}", "--bind-address=127.0.0.1", f"--socket={svc_dir / 'mysqld.sock'}",
        f"--pid-file={pidfile}", f"--log-bin={data / 'mysql-bin'}", *BINLOG_OPTIONS,
        f"--log-error={log}",
    ], svc_dir / "stdout.log")
    if not wait_until(lambda: _query_ok(port), START_TIMEOUT, alive=lambda: proc.poll() is None):
        raise fail(f"mariadb failed to start on port {port}", log)
    conn = connect(port)
    try:
        with conn.cursor() as cur:
            cur.execute("CREATE USER IF NOT EXISTS %s@'%%' IDENTIFIED BY %s",
                        (CAPTURE_USER, CAPTURE_PASSWORD))
            cur.execute("GRANT REPLICATION SLAVE, REPLICATION CLIENT, SELECT ON *.* TO %s@'%%'",
                        (CAPTURE_USER,))
    finally:
        conn.close()
    pid = read_pidfile(pidfile) or proc.pid
    return {"port": port, "pid": pid, "log": str(log), "data": str(data)}


def stop(svc_dir: Path, record: dict[str, Any], timeout: float = 30.0) -> None:
    """``SHUTDOWN`` as root, then SIGTERM/SIGKILL the recorded pid if still alive."""
    pid = record.get("pid") or read_pidfile(svc_dir / "mariadbd.pid")
    if not pid_alive(pid, "mariadbd"):
        return
    with contextlib.suppress(Exception):
        conn = connect(record["port"])
        try:
            with conn.cursor() as cur:
                cur.execute("SHUTDOWN")
        finally:
            conn.close()
    if not wait_until(lambda: not pid_alive(pid), min(timeout, 30)):
        terminate(pid, timeout, cmdline_contains="mariadbd")
