"""Signals: asking a running capture to backfill, pause, resume or stop, from SQL or the CLI.

Debezium's signal vocabulary, so an application written for Debezium keeps working:

* ``execute-snapshot`` with ``{"data-collections": ["schema.table", ...], "type":
  "incremental", "additional-conditions": [{"data-collection": "schema.table", "filter":
  "<SQL condition>"}]}`` (we also read ``chunk-size``);
* ``stop-snapshot`` (``data-collections`` optional: all when absent), ``pause-snapshot``,
  ``resume-snapshot``.

A signal reaches capture through the WAL, in order with the changes around it, either as a
transactional logical decoding message with the prefix :data:`SIGNAL_PREFIX` (what ``cdc
snapshot`` sends; nothing is written to any table) or as a row inserted into Debezium's
signal table (``postgres.signal_table``: columns ``id``, ``type``, ``data``).
"""

from __future__ import annotations

import orjson

from pipeline.capture.signals import KINDS, Signal, SignalError, parse

__all__ = ["INTERNAL_PREFIXES", "KINDS", "SIGNAL_PREFIX", "WATERMARK_PREFIX", "Signal",
           "SignalError", "from_message", "parse"]

#: The logical decoding message prefix of signals (never published to ``<prefix>.message``).
SIGNAL_PREFIX = "cdc-signal"
#: ... and of a backfill's chunk watermarks.
WATERMARK_PREFIX = "cdc-watermark"
#: Prefixes capture keeps for itself.
INTERNAL_PREFIXES = frozenset({SIGNAL_PREFIX, WATERMARK_PREFIX})

def from_message(content: bytes) -> Signal:
    """A signal sent as a logical decoding message (``{"id", "type", "data"}``)."""
    try:
        body = orjson.loads(content)
    except orjson.JSONDecodeError as exc:
        raise SignalError(f"signal message is not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise SignalError("signal message must be a JSON object")
    return parse(str(body.get("type")), body.get("data"), str(body.get("id") or ""))
