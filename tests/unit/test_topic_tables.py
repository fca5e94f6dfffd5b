"""Issue 9, item 3: a record cannot choose where it is written. Its topic, through the
configuration, says which table it must be of; a record naming another table is dead-lettered
before any sink derives an index, a key pattern or a truncate from it."""

from __future__ import annotations

import asyncio
import json

import pytest

from pipeline.config import load_settings
from pipeline.deadletter import RawRecord
from pipeline.errors import ConfigError, ForeignTableError
from pipeline.metrics import Metrics
from pipeline.processing import BatchProcessor
from pipeline.sinks.search_versions import segment
from tests.unit.test_processing import RecordingDeadLetters, RecordingSink

TOPIC = "cdc.public.orders"
TABLES = {TOPIC: "public.orders"}


def change(offset: int, table: str = "orders", op: str = "c", schema: str = "public",
           topic: str = TOPIC) -> RawRecord:
    source = {"connector": "postgresql", "name": "cdc", "db": "shop", "schema": schema,
              "table": table, "ts_ms": 1_700_000_000_000, "lsn": 100 + offset}
    after = None if op == "t" else {"id": offset}
    value = {"before": None, "after": after, "source": source, "op": op, "ts_ms": 1}
    key = None if op == "t" else json.dumps({"id": offset}).encode()
    return RawRecord(topic=topic, partition=0, offset=offset, key=key,
                     value=json.dumps(value).encode())


def run(records: list[RawRecord]) -> tuple[RecordingSink, RecordingDeadLetters]:
    sink, dead = RecordingSink("search"), RecordingDeadLetters()
    processor = BatchProcessor([sink], dead, Metrics("worker"),  # type: ignore[arg-type]
                               topic_tables=TABLES)
    asyncio.run(processor.process(records))
    return sink, dead


def test_a_truncate_naming_another_table_never_reaches_a_sink() -> None:
    """A truncate whose table was ``orders,victim`` made the search sink delete the
    ``victim`` index's documents; one naming ``victim`` truncated it outright."""
    sink, dead = run([change(1, "orders,victim", op="t"), change(2, "victim", op="t"),
                      change(3)])
    assert [e.key for batch in sink.batches for e in batch] == [{"id": 3}]
    assert [(r.offset, stage) for r, stage, _ in dead.letters] == [(1, "decode"),
                                                                   (2, "decode")]
    error = dead.letters[0][2]
    assert isinstance(error, ForeignTableError)
    assert "'public.orders,victim'" in str(error) and f"topic {TOPIC} carries public.orders" in (
        str(error))


def test_a_row_of_another_table_or_schema_is_dead_lettered() -> None:
    sink, dead = run([change(1, "customers"), change(2, schema="other"), change(3)])
    assert [e.key for batch in sink.batches for e in batch] == [{"id": 3}]
    assert all(isinstance(e, ForeignTableError) for _, _, e in dead.letters)
    assert len(dead.letters) == 2


def test_a_topic_without_a_configured_table_writes_nothing() -> None:
    sink, dead = run([change(1, topic="cdc.public.elsewhere")])
    assert not sink.batches
    assert "carries no configured table" in str(dead.letters[0][2])


def test_each_topic_carries_the_table_configured_for_it() -> None:
    settings = load_settings(None, {"CDC_POSTGRES__TABLES": "[public.orders, Shop.Items]",
                                    "CDC_KAFKA__TOPIC_PREFIX": "my.app"})
    assert settings.topic_tables() == {"my.app.public.orders": "public.orders",
                                       "my.app.Shop.Items": "Shop.Items"}


def test_foreign_topics_carry_the_table_their_last_two_parts_name() -> None:
    settings = load_settings(None, {
        "CDC_POSTGRES__TABLES": "[public.orders]",
        "CDC_WORKER__TOPICS": "[dbserver1.inventory.customers, cdc.public.orders]"})
    assert settings.topic_tables() == {"dbserver1.inventory.customers": "inventory.customers",
                                       "cdc.public.orders": "public.orders"}


def test_a_topic_that_names_no_table_is_a_configuration_error() -> None:
    with pytest.raises(ConfigError, match="worker.topics.*does not end in <schema>.<table>"):
        load_settings(None, {"CDC_POSTGRES__TABLES": "[public.orders]",
                             "CDC_WORKER__TOPICS": "[orders]"})


@pytest.mark.parametrize(("setting", "value"), [
    ("CDC_ELASTICSEARCH__INDICES", '{"public.orders": "a,b"}'),
    ("CDC_ELASTICSEARCH__INDICES", '{"public.orders": "Orders"}'),
    ("CDC_ELASTICSEARCH__INDICES", '{"public.orders": "_all"}'),
    ("CDC_ELASTICSEARCH__INDICES", '{"public.orders": "x/_delete_by_query"}'),
    ("CDC_ELASTICSEARCH__INDEX_PREFIX", "cdc/"),
    ("CDC_ELASTICSEARCH__INDEX_PREFIX", "-cdc."),
])
def test_index_names_are_valid_elasticsearch_names(setting: str, value: str) -> None:
    with pytest.raises(ConfigError, match="elasticsearch.*is not an Elasticsearch index name"):
        load_settings(None, {"CDC_POSTGRES__TABLES": "[public.orders]", setting: value})


def test_index_names_in_urls_stay_one_path_segment() -> None:
    assert segment("cdc.public.orders") == "cdc.public.orders"
    assert segment("a,b/_doc?x#y") == "a%2Cb%2F_doc%3Fx%23y"
