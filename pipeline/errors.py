"""The error tree. Every failure the pipeline handles is one of these.

    CdcError
    ├── ConfigError             a setting is missing or wrong; names the setting. Fatal at start.
    ├── PermanentError          the environment refuses us (rights, wal_level, auth). Fatal.
    │   └── SourceSetupError    the source database cannot be captured as configured
    ├── SourceExhausted         a source has nothing more to give (snapshot_mode initial_only)
    ├── RetriableError          infrastructure is down or slow (I/O, timeouts, 5xx, 429).
    │   └── SinkUnavailableError    a sink could not confirm a batch; retried with backoff while
    │                               the partition waits. Never sent to the dead-letter topic.
    ├── NotARowChange           a record that is valid but no row change (a logical decoding
    │                           message): skipped and counted, never dead-lettered
    └── BadDataError            one event cannot be processed: it goes to the dead-letter topic
        ├── EventDecodeError    the raw record is not a change event we can read
        │   └── ForeignTableError   it names another table than its topic carries
        ├── SinkRejectedError   a sink refused the event as bad data (mapping error, bad template)
        │                       (also: an exception a sink did not expect, for the event
        │                       that raises it alone; see ``RetryingSink``)
        └── BadOutboxEvent      an outbox event that cannot become a record (payload not
                                JSON, no topic name): FAILED (relay) or dead-lettered

Third-party exceptions are translated into this tree where the library is called, with
``raise ... from exc``, so the stages above never see a driver's own exception types.
"""

from __future__ import annotations

#: Process exit codes. A supervisor (``cdc worker``, systemd's ``RestartPreventExitStatus``,
#: a Kubernetes alert) should restart after 1 (a crash) but not after these: the same
#: settings or credentials would fail again.
EXIT_CONFIG = 2
EXIT_PERMANENT = 3
#: ``cdc verify``: 1 is drift; these are what kept it from comparing at all.
EXIT_UNAVAILABLE = 4  # PostgreSQL or Elasticsearch unreachable
EXIT_NOT_INDEXED = 5  # a table has no index yet
#: ``cdc tune``: nothing to measure.
EXIT_NOTHING_RUNNING = 6  # no capture or worker answered on its /metrics
EXIT_NOTHING_FLOWING = 7  # they answered, but no change went through them


class CdcError(Exception):
    """Base of every error the pipeline raises on purpose."""


class ConfigError(CdcError):
    """A configuration setting is missing or invalid."""

    def __init__(self, setting: str, problem: str) -> None:
        self.setting = setting
        self.problem = problem
        super().__init__(f"configuration error in '{setting}': {problem}")


class PermanentError(CdcError):
    """The environment refuses the pipeline; retrying will not help."""


class SourceSetupError(PermanentError):
    """The source database is not set up for capture (wal_level, rights, missing table)."""


class SourceExhausted(CdcError):
    """A source has nothing more to give (a snapshot-only capture finished): capture ends
    cleanly after confirming what it published."""


class RetriableError(CdcError):
    """A transient infrastructure failure: retry with backoff, keep the data."""


class SinkUnavailableError(RetriableError):
    """A sink could not confirm a batch (down, timeout, overloaded)."""


class NotARowChange(CdcError):
    """A valid record that carries no row change (``op: m``, a logical decoding message):
    a worker skips it. ``kind`` names it for the skip counter."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        super().__init__(f"not a row change: {kind}")


class BadDataError(CdcError):
    """One event cannot be processed; it belongs on the dead-letter topic."""

    stage = "unknown"


class EventDecodeError(BadDataError):
    """A raw record is not a readable change event."""

    stage = "decode"


class ForeignTableError(EventDecodeError):
    """A record's ``source.schema``/``table`` is not the table its topic carries (from the
    configuration): it may not write to, create or truncate another table's data."""


class SinkRejectedError(BadDataError):
    """A sink refused an event as bad data."""

    stage = "sink"

    def __init__(self, message: str, *, sink: str) -> None:
        self.sink = sink
        super().__init__(message)


class BadOutboxEvent(BadDataError):
    """An outbox event that cannot be published: its payload is not JSON, its aggregate
    type makes no topic name, it is too large."""

    stage = "outbox"


def exit_code(exc: BaseException) -> int:
    """The exit code a process stopped by ``exc`` reports (see ``EXIT_*``)."""
    if isinstance(exc, ConfigError):
        return EXIT_CONFIG
    if isinstance(exc, PermanentError):
        return EXIT_PERMANENT
    return 1
