from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline import stack
from tests.integration.mariadb_scenario import MariadbScenario
from tests.integration.scenario import Scenario


@pytest.fixture
def scenario(stack_info: object, tmp_path: Path) -> Iterator[Scenario]:
    sc = Scenario(stack_info, tmp_path)
    yield sc
    sc.close()


@pytest.fixture(scope="session")
def mariadb(stack_info: object) -> object:
    """The stack with MariaDB running (started through the stack code if missing)."""
    return stack.up(["mariadb"])


@pytest.fixture
def maria(mariadb: object, tmp_path: Path) -> Iterator[MariadbScenario]:
    sc = MariadbScenario(mariadb, tmp_path)
    yield sc
    sc.close()
