"""The poison suite's records (tests/integration/poisons.py) decode as the integration test
expects, on the worker's decode path with schema evolution on: the reason each is
dead-lettered with, or that it is applied or skipped."""

from __future__ import annotations

import orjson
import pytest

from pipeline.errors import BadDataError, NotARowChange
from pipeline.evolution.stage import EvolutionStage
from pipeline.processing import foreign_table
from tests.integration.poisons import SCHEMAS, Poison, poisons


class Table:
    schema = "t1234abcd"


TOPIC = "it1234abcd.t1234abcd.items"
CATALOGUE = poisons(Table(), 7, 123_456, "it1234abcdvictim")


def test_the_suite_has_at_least_sixty_hostile_records() -> None:
    assert len(CATALOGUE) >= 60


@pytest.mark.parametrize("poison", CATALOGUE, ids=[p.name for p in CATALOGUE])
def test_each_poison_is_dead_lettered_with_its_reason_or_applied(poison: Poison) -> None:
    stage = EvolutionStage.from_settings(SCHEMAS, None)
    key = orjson.dumps({"id": 7}) if poison.key == "row" else poison.key
    assert not isinstance(key, str)
    result: object
    try:
        result = stage.decode(key, poison.value)
        if result is not None:
            result = foreign_table({TOPIC: "t1234abcd.items"}, TOPIC, result) or result
    except (BadDataError, NotARowChange) as exc:
        result = exc
    if poison.reason is None:
        assert not isinstance(result, BadDataError), result
    else:
        assert isinstance(result, BadDataError)
        assert poison.reason in str(result)
