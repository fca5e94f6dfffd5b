"""Faust's worker with the pipeline's log lines.

Faust (through ``mode``) configures the root logger when its worker starts, with a format of
its own, replacing what ``cdc worker`` set up. :class:`CdcWorker` puts the pipeline's format
back once Faust is done (``on_setup_root_logger``), so Faust's lines, the Kafka client's
and ours come out alike: text or JSON (``log_format``), each tagged with the worker's sink.
"""

from __future__ import annotations

import logging
import os

import faust

from pipeline import logs


class CdcWorker(faust.Worker):
    """``faust.Worker`` whose root logger uses :func:`pipeline.logs.configure`."""

    def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:
        super().on_setup_root_logger(logger, level)
        from agents.app import SINK, settings

        fmt = os.environ.get("CDC_LOG_FORMAT") or str(settings.log_format)
        logs.configure(logging.getLevelName(level), fmt, sink=SINK)
