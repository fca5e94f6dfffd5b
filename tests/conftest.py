"""Shared fixtures. Integration tests use the real local stack: a running one is reused, else
one is started for the session and stopped at its end."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session")
def stack_info() -> Iterator[object]:
    from pipeline import stack

    running = stack.load()
    info = running or stack.up()
    yield info
    if running is None and not os.environ.get("CDC_KEEP_STACK"):
        stack.down()
