"""How every ``cdc`` process logs: one line per record, as text or as JSON.

The level comes from ``--log-level``, else ``log_level`` in the settings (YAML or
``CDC_LOG_LEVEL``); the format from ``log_format`` (``text`` or ``json``, also
``CDC_LOG_FORMAT``). :func:`configure` runs once at start with what the command line and the
environment say, and again when the settings file is read.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: A sink worker's lines carry its sink (``sink`` in JSON).
SINK_FORMAT = "%(asctime)s %(levelname)s [%(sink)s] %(name)s: %(message)s"

# LogRecord attributes that are not extra fields
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, the
    exception if any, and any ``extra=`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value if isinstance(value, (str, int, float, bool)) else str(value)
        return json.dumps(out, ensure_ascii=False)


class _SinkTag(logging.Filter):
    def __init__(self, sink: str) -> None:
        super().__init__()
        self.sink = sink

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "sink"):
            record.sink = self.sink
        return True


def configure(level: str, fmt: str = "text", sink: str | None = None) -> None:
    """Sets the root logger's level and its handlers' format (stderr); ``sink`` tags every
    line of a sink worker."""
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(logging.StreamHandler())
    if fmt == "json":
        formatter: logging.Formatter = JsonFormatter()
    else:
        formatter = logging.Formatter(TEXT_FORMAT if sink is None else SINK_FORMAT)
    for handler in root.handlers:
        handler.setFormatter(formatter)
        for old in [f for f in handler.filters if isinstance(f, _SinkTag)]:
            handler.removeFilter(old)
        if sink is not None:
            handler.addFilter(_SinkTag(sink))
    root.setLevel(level.upper())
    # librdkafka's informational lines (queue purges at close...) are noise here
    for chatty in ("httpx", "httpcore", "librdkafka"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
