"""Errors raised by the local stack."""

from __future__ import annotations


class StackError(Exception):
    """A server of the local stack could not be installed, started or stopped.

    When a server fails to start, the message ends with the last lines of its log.
    """
