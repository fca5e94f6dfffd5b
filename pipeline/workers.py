"""``cdc worker`` without ``--sink``: one worker process per configured sink, supervised.

Each child is ``cdc worker --sink <name>`` (its own Faust app and consumer group). A child
that dies is restarted with backoff; one that exits with a configuration error (2) is not,
since it would only fail again: the supervisor stops and reports it.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time

from pipeline.compose import stop_on_signals
from pipeline.config import Settings
from pipeline.errors import ConfigError
from pipeline.sinks.registry import sink_names

log = logging.getLogger(__name__)

CONFIG_ERROR = 2


class _Child:
    def __init__(self, sink: str, extra: tuple[str, ...]) -> None:
        self.sink = sink
        self.extra = extra
        self.delay = 1.0
        self.proc = self._spawn()

    def _spawn(self) -> subprocess.Popen[bytes]:
        self.started = time.monotonic()
        cmd = [sys.executable, "-m", "pipeline.cli", "worker", "--sink", self.sink, *self.extra]
        return subprocess.Popen(cmd)

    def check(self) -> int | None:
        """Restart the child if it died; returns its exit code if it must not be restarted."""
        code = self.proc.poll()
        if code is None:
            return None
        if code == CONFIG_ERROR:
            return code
        if time.monotonic() - self.started > 60:
            self.delay = 1.0
        log.warning("worker for sink %s exited with %s; restarting in %.0fs",
                    self.sink, code, self.delay)
        time.sleep(self.delay)
        self.delay = min(self.delay * 2, 30.0)
        self.proc = self._spawn()
        return None

    def stop(self, timeout: float = 30.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def run_all(settings: Settings, extra: tuple[str, ...] = ()) -> int:
    names = sink_names(settings)
    if not names:
        raise ConfigError("sinks", "no sink is configured: add an 'elasticsearch' or 'redis' "
                                   "section, or an entry under 'sinks'")
    stop = stop_on_signals()
    children = [_Child(name, extra) for name in names]
    log.info("started workers for sinks: %s", ", ".join(names))
    code = 0
    try:
        while not stop.wait(0.5):
            for child in children:
                failed = child.check()
                if failed is not None:
                    log.error("worker for sink %s has a configuration error; stopping",
                              child.sink)
                    code = failed
                    stop.set()
    finally:
        for child in children:
            child.stop()
    return code
