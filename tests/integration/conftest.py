from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.scenario import Scenario


@pytest.fixture
def scenario(stack_info: object, tmp_path: Path) -> Iterator[Scenario]:
    sc = Scenario(stack_info, tmp_path)
    yield sc
    sc.close()
