"""``cdc worker`` without ``--sink``: one worker process per configured sink, supervised.

Each child is ``cdc worker --sink <name>`` (its own Faust app and consumer group).

* A child that dies is restarted after a backoff (``pipeline.retry.Backoff``: 1 s doubling
  to 30 s with jitter, back to 1 s after a minute of health). One that exits with a
  configuration error (2) or a permanent error (3: refused credentials, missing rights) is
  not, since it would only fail again: the supervisor stops every child and exits with that
  code.
* Children die with the supervisor: each asks the kernel for SIGTERM when its parent dies
  (Linux ``PR_SET_PDEATHSIG``; elsewhere it polls its parent's pid), so a SIGKILLed
  supervisor leaves no orphans that a restarted one would run beside.
* SIGTERM/SIGINT stop the supervisor at once, also during a restart backoff: no child is
  started after a stop was asked; the children get SIGTERM together and up to 30 s to finish.
* With ``metrics.port`` set, the child for the i-th sink (in the order ``cdc status`` lists
  them: search, cache, then ``sinks``) serves ``/metrics`` on ``metrics.port + 1 + i``;
  ``metrics.port`` itself is left to ``cdc capture``.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence

from pipeline.compose import stop_on_signals
from pipeline.config import Settings
from pipeline.errors import EXIT_CONFIG, EXIT_PERMANENT, ConfigError
from pipeline.retry import Backoff
from pipeline.sinks.registry import sink_names

log = logging.getLogger(__name__)

#: Exit codes after which a child is not restarted.
FINAL_CODES = (EXIT_CONFIG, EXIT_PERMANENT)
#: Set in each child's environment: the supervisor's pid, which the child must not outlive.
SUPERVISOR_PID = "CDC_SUPERVISOR_PID"
PR_SET_PDEATHSIG = 1
STOP_TIMEOUT_S = 30.0


def die_with_supervisor() -> None:
    """In a child of ``cdc worker``: get SIGTERM when the supervisor dies (nothing to do in
    a process started otherwise)."""
    wanted = os.environ.get(SUPERVISOR_PID)
    if not wanted:
        return
    parent = int(wanted)
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    else:
        threading.Thread(target=_poll_parent, args=(parent,), daemon=True,
                         name="supervisor-watch").start()
    if os.getppid() != parent:  # it died before the request above took effect
        log.warning("supervisor %d is gone; stopping", parent)
        raise SystemExit(1)


def _poll_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(1.0)
    os.kill(os.getpid(), signal.SIGTERM)


def child_metrics_port(base: int | None, index: int) -> int | None:
    """The metrics port of the child serving the ``index``-th sink (see the module doc)."""
    return None if base is None else base + 1 + index


class _Child:
    """One sink's worker process, restarted after a backoff when it dies."""

    def __init__(self, sink: str, command: Sequence[str], env: dict[str, str]) -> None:
        self.sink = sink
        self.command = list(command)
        self.env = env
        # 1 s doubling to 30 s, back to 1 s once a child has been up for a minute
        self.backoff = Backoff(1.0, 30.0, healthy_s=60.0)
        self.restart_at: float | None = None
        self.proc: subprocess.Popen[bytes] | None = None

    def spawn(self) -> None:
        self.backoff.started()
        self.restart_at = None
        self.proc = subprocess.Popen(self.command, env=self.env)
        log.info("started the worker for sink %s (pid %d)", self.sink, self.proc.pid)

    def check(self, stop: threading.Event) -> int | None:
        """Restart the child when it died and its backoff passed (never once ``stop`` is
        set); returns its exit code if it must not be restarted."""
        if self.proc is None:
            if self.restart_at is not None and time.monotonic() >= self.restart_at \
                    and not stop.is_set():
                self.spawn()
            return None
        code = self.proc.poll()
        if code is None:
            return None
        self.proc = None
        if code in FINAL_CODES:
            return code
        delay = self.backoff.next_delay()
        log.warning("worker for sink %s exited with %s; restarting in %.1fs",
                    self.sink, code, delay)
        self.restart_at = time.monotonic() + delay
        return None

    def terminate(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def wait(self, deadline: float) -> None:
        if self.proc is None:
            return
        try:
            self.proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("worker for sink %s did not stop in time; killing it", self.sink)
            self.proc.kill()
            self.proc.wait()


def worker_command(sink: str, extra: Sequence[str]) -> list[str]:
    return [sys.executable, "-m", "pipeline.cli", "worker", "--sink", sink, *extra]


def run_all(settings: Settings, extra: tuple[str, ...] = (), *,
            stop: threading.Event | None = None,
            command: Callable[[str, Sequence[str]], list[str]] = worker_command) -> int:
    """Supervise one child per sink until a signal (or ``stop``); returns the exit code."""
    names = sink_names(settings)
    if not names:
        raise ConfigError("sinks", "no sink is configured: add an 'elasticsearch' or 'redis' "
                                   "section, or an entry under 'sinks'")
    stop = stop or stop_on_signals()
    children = []
    for i, name in enumerate(names):
        env = {**os.environ, SUPERVISOR_PID: str(os.getpid())}
        port = child_metrics_port(settings.metrics.port, i)
        if port is not None:
            env["CDC_METRICS__PORT"] = str(port)
        children.append(_Child(name, command(name, extra), env))
    code = 0
    try:
        for child in children:
            if not stop.is_set():
                child.spawn()
        log.info("started workers for sinks: %s", ", ".join(names))
        while not stop.wait(0.2):
            for child in children:
                failed = child.check(stop)
                if failed is not None:
                    log.error("worker for sink %s stopped with a %s error (exit %d); "
                              "stopping", child.sink,
                              "configuration" if failed == EXIT_CONFIG else "permanent",
                              failed)
                    code = failed
                    stop.set()
                    break
    finally:
        for child in children:
            child.terminate()
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for child in children:
            child.wait(deadline)
    return code
