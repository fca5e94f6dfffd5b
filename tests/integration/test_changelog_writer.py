"""The dedup changelog's writer on the real Kafka: a flush waits for what was written before
it, not for what other drains write meanwhile."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import pytest

from pipeline import stack
from pipeline.capture.publisher import ensure_topics
from pipeline.config import load_settings
from pipeline.kafka.changelog import ChangelogWriter

pytestmark = pytest.mark.integration


def test_a_flush_ends_while_other_drains_keep_writing(stack_info: Any) -> None:
    """Two partitions' drains at once: one flushes while the other keeps writing. The flush
    must end once its own entries are acknowledged. It used to check for an empty queue
    when it resumed, so another drain's writes made it fail with nothing failed; the drain
    retried and (before it kept what it had written) never acknowledged those records:
    their partitions were never committed again and the worker's memory grew."""
    env = {**stack.env_vars(stack_info), "CDC_POSTGRES__TABLES": "[public.unused]"}
    settings = load_settings(None, env).kafka
    topic = f"it{uuid.uuid4().hex[:8]}-dedup-changelog"
    ensure_topics(settings, [topic], partitions=3)
    writer = ChangelogWriter(topic, settings)

    async def scenario() -> int:
        for i in range(2_000):
            writer.write(0, f"row-{i}", f"0|{i}")
        flushing = asyncio.ensure_future(writer.flush(timeout=20.0))
        await asyncio.sleep(0.01)  # the flush began (in its thread)
        time.sleep(1.0)  # its entries are acknowledged before it is resumed
        for n in range(50_000):  # before that, another partition's drain writes
            writer.write(1 + n % 2, f"other-{n}", f"1|{n}")
        await flushing  # ends with its own entries, whatever was written since
        await writer.flush(timeout=20.0)  # and the rest, once nobody writes
        return len(writer._producer)

    assert asyncio.run(scenario()) == 0
