"""Every path a record takes through the Avro publisher re-encodes a row change's value."""

from __future__ import annotations

from typing import Any

import orjson

from pipeline.capture.avro import AvroPublisher
from pipeline.config import KafkaSettings


class Schemas:
    def encode(self, topic: str, table: str, envelope: dict[str, Any]) -> bytes:
        return b"avro:" + table.encode()


def test_the_capture_loops_produce_path_re_encodes_as_publish_does() -> None:
    kafka = KafkaSettings(bootstrap_servers="127.0.0.1:1")  # never contacted
    publisher = AvroPublisher(kafka, Schemas())  # type: ignore[arg-type]
    sent: list[tuple[Any, ...]] = []
    publisher._produce = lambda *args, **kwargs: sent.append(args)  # type: ignore[method-assign]
    topic = kafka.raw_topic("public.orders")
    change = orjson.dumps({"before": None, "after": {"id": 1}, "op": "c",
                           "source": {"schema": "public", "table": "orders"}})
    publisher.produce(topic, change, b'{"id":1}', -1, None)
    publisher.publish(topic, b'{"id":1}', change, None)  # type: ignore[arg-type]
    publisher.produce(topic, None, b'{"id":1}', -1, None)  # a tombstone stays None
    assert [args[1] for args in sent] == [b"avro:public.orders", b"avro:public.orders", None]
