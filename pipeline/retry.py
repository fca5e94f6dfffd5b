"""One capped, jittered exponential backoff for every loop that retries infrastructure."""

from __future__ import annotations

import random
import time


class Backoff:
    """Delays of ``initial_s``, doubling up to ``max_s``, each with full jitter in
    [delay/2, delay]; :meth:`reset` after a success that lasted ``healthy_s``, so a flapping
    server is not hammered and a long-healthy one is retried fast."""

    def __init__(self, initial_s: float = 0.5, max_s: float = 30.0, healthy_s: float = 30.0,
                 rng: random.Random | None = None) -> None:
        if not 0 < initial_s <= max_s:
            raise ValueError("need 0 < initial_s <= max_s")
        self.initial_s = initial_s
        self.max_s = max_s
        self.healthy_s = healthy_s
        self._next = initial_s
        self._rng = rng or random.Random()
        self._started = time.monotonic()

    def started(self) -> None:
        """An attempt starts now (its duration decides whether the next delay resets)."""
        self._started = time.monotonic()

    def reset(self) -> None:
        self._next = self.initial_s

    def next_delay(self) -> float:
        """The delay before the next attempt."""
        if time.monotonic() - self._started >= self.healthy_s:
            self.reset()
        delay = self._next
        self._next = min(self._next * 2, self.max_s)
        return delay / 2 + self._rng.random() * delay / 2
