"""A producer Kafka acknowledges nothing of: the one rule every capture producer waits by.

Capture's producers never give up on a record (``message.timeout.ms`` 0): while Kafka is
down they hold what they were given and the source waits. librdkafka 2.16's idempotent
producer can also stay stuck after a broker restart, holding records for a partition whose
leader is back (seen here about once in four Kafka-outage runs); only a new producer sends
them. Either way, a producer whose oldest records have had no answer from Kafka for
``kafka.producer_stall_s`` is given up: its owner raises :class:`ProducerStalled` (a
retriable error), opens a new producer, and reads again from the last confirmed position (at
least once: the sinks are idempotent). A Kafka still down then fails the next session at
its start, and the session after waits with backoff.

What counts as an answer is the owner's to say, from what it already tracks (no count per
record): the capture loop watches the oldest unit it waits for (another unit, or a change in
how many of its records are unanswered, is progress); a snapshot reader, whose producer
reports refusals alone, watches how many records its flushes leave.
"""

from __future__ import annotations

import time

from pipeline.errors import RetriableError


class ProducerStalled(RetriableError):
    """Kafka answered none of the records a producer holds for the stall limit."""


class StallWatch:
    """The stall clock of one producer, driven by its owner's looks at it.

    The clock runs only while records wait for an answer (``held`` > 0). It restarts at
    every sign of progress: the owner says so, or fewer records are held than when the
    clock started. :meth:`reset` restarts it too (a full queue took a record).
    """

    __slots__ = ("limit_s", "who", "least", "since")

    def __init__(self, limit_s: float, who: str) -> None:
        self.limit_s = limit_s
        self.who = who  # whose records, for the message: "this snapshot reader queued"
        self.least = 0  # the fewest records held since the clock started ...
        self.since = 0.0  # ... and when it started (0: not running)

    def observe(self, held: int, progressed: bool = False) -> None:
        """One look; raises :class:`ProducerStalled` once records were held with no
        progress for ``limit_s``."""
        if not held:
            self.since = 0.0
            return
        now = time.monotonic()
        if not self.since or progressed or held < self.least:
            self.least, self.since = held, now
        elif now - self.since >= self.limit_s:
            raise ProducerStalled(
                f"Kafka answered none of the {held} record(s) {self.who} in "
                f"{now - self.since:.0f}s (kafka.producer_stall_s = {self.limit_s:g}); "
                "reading again from the last confirmed position with a new producer")

    def reset(self) -> None:
        """Progress seen otherwise: a later look starts a new clock."""
        self.since = 0.0
