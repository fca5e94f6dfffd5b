"""Debezium's periodic throughput line: "N records sent during previous 00:01:00, last
confirmed position ..." (logged only for an interval that sent something)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("pipeline.capture")


def hms(seconds: float) -> str:
    total = int(round(seconds))
    return f"{total // 3600:02d}:{total // 60 % 60:02d}:{total % 60:02d}"


class ThroughputLog:
    def __init__(self, name: str, interval_s: float | None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self.interval_s = interval_s
        self.clock = clock
        self.sent = 0
        self._since = clock()

    def add(self, records: int) -> None:
        self.sent += records

    def tick(self, position: Any) -> str | None:
        """The line, logged at INFO, once ``interval_s`` has passed since the last one."""
        if self.interval_s is None:
            return None
        now = self.clock()
        elapsed = now - self._since
        if elapsed < self.interval_s:
            return None
        line = None
        if self.sent:
            line = (f"{self.name}: {self.sent} records sent during previous {hms(elapsed)}, "
                    f"last confirmed position {position}")
            log.info(line)
        self.sent = 0
        self._since = now
        return line
