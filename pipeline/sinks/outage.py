"""A bound on how long a sink outage is retried (``errors.retry_timeout_s``).

Stacked inside :class:`~pipeline.sinks.base.RetryingSink`: it passes each failure on to be
retried until the sink has been unavailable for ``timeout_s`` without a single confirmed
batch, then raises a ``PermanentError`` (which the retry wrapper does not retry), and the
worker exits non-zero with the last error, for systemd or Kubernetes to see.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from pipeline.errors import PermanentError, RetriableError
from pipeline.events import ChangeEvent
from pipeline.sinks.base import Rejection, Sink, copy_traits


class OutageLimit:
    """Turns an outage of ``inner`` longer than ``timeout_s`` into a PermanentError."""

    def __init__(self, inner: Sink, timeout_s: float) -> None:
        self.inner = inner
        self.name = inner.name
        copy_traits(self, inner)
        self.timeout_s = timeout_s
        self._since: float | None = None  # first failure since the last confirmed batch

    async def write(self, batch: Sequence[ChangeEvent]) -> list[Rejection]:
        try:
            rejected = await self.inner.write(batch)
        except RetriableError as exc:
            now = time.monotonic()
            if self._since is None:
                self._since = now
            if now - self._since >= self.timeout_s:
                raise PermanentError(
                    f"sink {self.name}: gave up after {now - self._since:.0f}s of retrying "
                    f"(errors.retry_timeout_s = {self.timeout_s:g}): {exc}") from exc
            raise
        self._since = None
        return rejected

    async def close(self) -> None:
        await self.inner.close()
