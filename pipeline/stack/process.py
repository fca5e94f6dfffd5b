"""Process helpers shared by the service modules: liveness, polling, stopping, logs."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from pipeline.stack.errors import StackError


def pid_alive(pid: int | None, cmdline_contains: str | None = None) -> bool:
    """True when process ``pid`` exists (not a zombie) and, if given, its command line
    contains ``cmdline_contains`` (guards against a recycled pid)."""
    if not pid or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return False
        if cmdline_contains is not None:
            cmd = (
                Path(f"/proc/{pid}/cmdline")
                .read_bytes()
                .replace(b"\0", b" ")
                .decode(errors="replace")
            )
            return cmdline_contains in cmd
    except (OSError, IndexError):
        return False
    return True


def read_pidfile(path: Path) -> int | None:
    """The pid written on the first line of ``path``, or None when missing/unreadable."""
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of a text file ("" when it does not exist)."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 64 * 1024))
            data = f.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(data.splitlines()[-lines:])


def fail(message: str, *logs: Path, lines: int = 40) -> StackError:
    """Build a StackError whose message ends with the last lines of each given log."""
    parts = [message]
    for log in logs:
        text = tail(log, lines)
        parts.append(f"--- last {lines} lines of {log} ---\n{text or '(empty or missing)'}")
    return StackError("\n".join(parts))


def wait_until(
    check: Callable[[], bool],
    timeout: float,
    *,
    alive: Callable[[], bool] | None = None,
    interval: float = 0.2,
) -> bool:
    """Poll ``check`` until it returns True (-> True) or ``timeout`` seconds pass (-> False).

    When ``alive`` is given and returns False, stop early (-> False): the process died.
    Exceptions raised by ``check`` count as "not yet".
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return True
        except Exception:  # noqa: BLE001 - readiness probes fail in many ways while starting
            pass
        if alive is not None and not alive():
            try:
                return bool(check())
            except Exception:  # noqa: BLE001
                return False
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def terminate(
    pid: int | None,
    timeout: float = 30.0,
    *,
    sig: int = signal.SIGTERM,
    group: int | None = None,
    cmdline_contains: str | None = None,
) -> None:
    """Send ``sig`` to ``pid``; after ``timeout`` seconds SIGKILL it (and its process
    ``group`` when given). Returns once the process is gone."""
    if pid and pid_alive(pid, cmdline_contains):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        if not wait_until(lambda: not pid_alive(pid), timeout, interval=0.1):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            wait_until(lambda: not pid_alive(pid), 10, interval=0.1)
    if group:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(group, signal.SIGKILL)


def run(
    cmd: Sequence[str],
    *,
    timeout: float = 600,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command to completion capturing output; raise StackError on failure."""
    try:
        proc = subprocess.run(
            list(cmd),
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as e:
        raise StackError(f"command timed out after {timeout}s: {' '.join(cmd)}") from e
    except FileNotFoundError as e:
        raise StackError(f"command not found: {cmd[0]}") from e
    if proc.returncode != 0:
        out = "\n".join((proc.stdout + proc.stderr).splitlines()[-40:])
        raise StackError(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{out}")
    return proc


def spawn(
    cmd: Sequence[str], log: Path, *, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.Popen[bytes]:
    """Start a detached server process (new session, stdin closed, output appended to
    ``log``) that outlives the calling Python process."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        return subprocess.Popen(
            list(cmd),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            start_new_session=True,
            close_fds=True,
        )
