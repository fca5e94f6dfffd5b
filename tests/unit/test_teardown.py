"""`cdc teardown`: what it names, what it refuses, how it reads (no server needed)."""

from __future__ import annotations

import pytest

from pipeline.config import load_settings
from pipeline.errors import PermanentError
from pipeline.teardown import (
    SlotInUseError,
    SlotState,
    TeardownPlan,
    execute,
    owned_indices,
    owned_topics,
    plan,
)

YAML = """
postgres:
  tables: [public.orders, shop.items]
  slot: shop_slot
  publication: shop_pub
kafka:
  topic_prefix: shop
worker:
  app_id: shop-worker
  dead_letter_topic: shop.dlq
elasticsearch:
  index_prefix: "idx."
  indices:
    shop.items: items-v2
redis:
  keys:
    public.orders: ["order:{id}"]
"""


def _settings(tmp_path, text: str = YAML):  # type: ignore[no-untyped-def]
    path = tmp_path / "cdc.yaml"
    path.write_text(text)
    return load_settings(path, {})


def test_owned_topics_are_the_raw_topics_the_side_topics_dlq_and_changelogs(tmp_path) -> None:
    assert owned_topics(_settings(tmp_path)) == [
        "shop.public.orders", "shop.shop.items", "shop.message", "shop.transaction",
        "__debezium-heartbeat.shop", "shop.dlq",
        "shop-worker-search-dedup-changelog", "shop-worker-cache-dedup-changelog"]


def test_owned_topics_never_include_the_shared_offsets_topic(tmp_path) -> None:
    settings = _settings(tmp_path)
    assert settings.kafka.offsets_topic not in owned_topics(settings)


def test_owned_indices_follow_the_index_mapping(tmp_path) -> None:
    assert owned_indices(_settings(tmp_path)) == ["idx.public.orders", "items-v2",
                                                  "idx.cdc-truncates"]
    assert owned_indices(_settings(tmp_path, "postgres:\n  tables: [public.a]\n")) == []


def test_a_slot_in_use_is_refused_with_the_remedy(tmp_path) -> None:
    busy = TeardownPlan("logical", "shop_slot", SlotState("shop_slot", 4242, 0), "shop_pub",
                        True, "postgres slot shop_slot")
    reason = busy.refusal()
    assert reason is not None and "4242" in reason and "stop `cdc capture`" in reason
    with pytest.raises(SlotInUseError) as raised:
        execute(_settings(tmp_path), busy)  # refused before touching anything
    assert isinstance(raised.value, PermanentError)


def test_the_dry_run_says_what_it_would_drop_and_what_is_gone() -> None:
    found = TeardownPlan("logical", "shop_slot", SlotState("shop_slot", None, 3 * 1024 ** 2),
                         "shop_pub", False, "postgres slot shop_slot",
                         topics=["shop.public.orders"], topics_missing=["shop.dlq"],
                         indices=["idx.public.orders"])
    assert found.refusal() is None
    assert found.render().splitlines() == [
        "would drop replication slot shop_slot (it retains 3.0 MiB of WAL)",
        "publication shop_pub: not there",
        "would forget the positions of postgres slot shop_slot kept in Kafka",
        "would delete topic shop.public.orders",
        "topic shop.dlq: not there",
        "would delete index idx.public.orders",
    ]
    assert found.render(done=True).splitlines()[0] == (
        "dropped replication slot shop_slot (it retains 3.0 MiB of WAL)")


def test_trigger_capture_is_pointed_to_its_own_uninstall(tmp_path) -> None:
    found = plan(_settings(tmp_path, YAML + "capture:\n  source: triggers\n"))
    assert found.empty and found.slot_name is None  # no slot to drop, nothing else read
    assert "`cdc triggers uninstall`" in found.render()


def test_deleting_topics_that_running_workers_consume_is_refused_with_the_remedy() -> None:
    """The workers created the deleted topics again at once, empty, after teardown had
    reported them deleted."""
    busy = TeardownPlan("logical", "shop_slot", SlotState("shop_slot", None, 0), "shop_pub",
                        True, "postgres slot shop_slot", topics=["shop.shop.items"],
                        running_groups=["shop-worker-search"])
    reason = busy.refusal()
    assert reason is not None and "shop-worker-search" in reason
    assert "stop every `cdc worker` first" in reason
