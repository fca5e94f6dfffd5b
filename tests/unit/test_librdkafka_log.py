"""librdkafka's log lines, throttled (pipeline.kafka.client.LogThrottle)."""

from __future__ import annotations

import logging

from pipeline.kafka.client import LogThrottle


def _record(text: str, fac: str = "FAIL") -> logging.LogRecord:
    # as confluent-kafka logs: logger.log(level, "%s [%s] %s", fac, client name, text)
    return logging.LogRecord("librdkafka", logging.ERROR, "", 0, "%s [%s] %s",
                             (fac, "rdkafka#producer-1", text), None)


def test_a_broker_that_is_down_is_said_once_per_interval_with_the_setting_to_check() -> None:
    now = [0.0]
    throttle = LogThrottle(every=30, clock=lambda: now[0])
    refused = "127.0.0.1:1/bootstrap: Connect to ipv4#127.0.0.1:1 failed: Connection refused " \
              "(after {}ms in state CONNECT)"
    first = _record(refused.format(0))
    assert throttle.filter(first)
    assert "kafka.bootstrap_servers" in first.getMessage()
    shown = 0
    for i in range(1, 200):  # ~20 a second for 10 s
        now[0] = i * 0.05
        shown += throttle.filter(_record(refused.format(i)))
    assert shown == 0
    other = _record("Metadata request failed", fac="ERROR")
    assert throttle.filter(other)  # another kind of line is not held back
    assert throttle.filter(_record(refused.replace("127.0.0.1:1", "10.0.0.2:9093").format(5)))
    # (another broker's failure is another kind)
    now[0] = 31.0
    again = _record(refused.format(999))
    assert throttle.filter(again)
    assert "199 more like it in the last 31s" in again.getMessage()
    assert "kafka.bootstrap_servers" not in again.getMessage()  # said once
