"""The kafka worker engine gives the same guarantees as the Faust one."""

from __future__ import annotations

import pytest

from tests.integration import test_end_to_end as e2e
from tests.integration import test_processing_semantics as semantics
from tests.integration.scenario import Scenario

pytestmark = pytest.mark.integration


@pytest.fixture
def kafka_engine(scenario: Scenario) -> Scenario:
    scenario.env["CDC_WORKER__ENGINE"] = "kafka"
    return scenario


def test_changes_reach_the_index_and_invalidate_the_cache(kafka_engine: Scenario) -> None:
    e2e.test_changes_reach_the_index_and_invalidate_the_cache(kafka_engine)


def test_capture_killed_mid_workload_loses_nothing(kafka_engine: Scenario) -> None:
    e2e.test_capture_killed_mid_workload_loses_nothing(kafka_engine)


def test_undecodable_event_goes_to_the_dead_letter_topic(kafka_engine: Scenario) -> None:
    e2e.test_undecodable_event_goes_to_the_dead_letter_topic(kafka_engine)


def test_elasticsearch_outage_delays_but_loses_nothing(kafka_engine: Scenario) -> None:
    e2e.test_elasticsearch_outage_delays_but_loses_nothing(kafka_engine)


def test_sink_down_longer_than_max_poll_interval_pauses_without_a_rebalance(
        kafka_engine: Scenario) -> None:
    e2e.test_sink_down_longer_than_max_poll_interval_pauses_without_a_rebalance(kafka_engine)


def test_duplicate_after_worker_restart_is_dropped(kafka_engine: Scenario) -> None:
    semantics.test_duplicate_after_worker_restart_is_dropped(kafka_engine)


def test_duplicate_after_worker_restart_is_dropped_with_rocksdb_store(
    kafka_engine: Scenario,
) -> None:
    """The seen-set on disk (worker.store rocksdb://) is refilled from the changelog after a
    restart, like the in-memory one."""
    kafka_engine.env["CDC_WORKER__STORE"] = "rocksdb://"
    semantics.test_duplicate_after_worker_restart_is_dropped(kafka_engine)


def test_changes_reach_the_index_with_rocksdb_store(kafka_engine: Scenario) -> None:
    kafka_engine.env["CDC_WORKER__STORE"] = "rocksdb://"
    e2e.test_changes_reach_the_index_and_invalidate_the_cache(kafka_engine)
