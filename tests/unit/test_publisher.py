"""EventPublisher under backpressure: while it waits for Kafka, the source is kept alive."""

from __future__ import annotations

import pytest

from pipeline.capture.publisher import EventPublisher
from pipeline.config import KafkaSettings


class Stop(Exception):
    pass


def test_a_full_queue_keeps_calling_the_sources_keepalive() -> None:
    # No broker at this address: nothing is ever acknowledged, so the one-record queue stays
    # full and publish() waits; a PostgreSQL walsender would drop a silent client meanwhile.
    settings = KafkaSettings(bootstrap_servers="127.0.0.1:1",
                             producer={"queue.buffering.max.messages": 1})
    publisher = EventPublisher(settings)
    calls = 0

    def keepalive() -> None:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise Stop

    publisher.while_waiting = keepalive
    publisher.publish("t", b"k", b"v", lambda err, msg: None)
    with pytest.raises(Stop):
        publisher.publish("t", b"k", b"v", lambda err, msg: None)
    assert calls == 3
