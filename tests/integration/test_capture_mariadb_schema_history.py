"""MariaDB binlog capture of a server that sends MINIMAL row metadata (table maps without
column names, as MariaDB < 10.5 and MySQL < 8.0.1 write them): the columns of every event
come from the schema history, as of the event, across ALTER TABLEs and a kill -9.

``binlog_row_metadata`` is a GLOBAL-only variable on the shared server: it is MINIMAL only
while this test writes its rows and DDL (well under a second each time), and FULL again
in a ``finally``."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest

from pipeline.harness import wait_until
from tests.integration.mariadb_scenario import ITEMS_DDL, MariadbScenario

pytestmark = pytest.mark.integration


@contextlib.contextmanager
def minimal_row_metadata(maria: MariadbScenario) -> Iterator[None]:
    maria.execute("SET GLOBAL binlog_row_metadata = 'MINIMAL'")
    try:
        yield
    finally:
        maria.execute("SET GLOBAL binlog_row_metadata = 'FULL'")


def _afters(maria: MariadbScenario) -> list[tuple[int, dict[str, Any]]]:
    """(id, after) of each distinct change in binlog order (a restart publishes the
    unconfirmed tail again: the same change, at the same position)."""
    seen: dict[tuple[int, str], dict[str, Any]] = {}
    for change in maria.changes():
        seen.setdefault((change["source"]["lsn"], change["op"]), change["after"])
    return [(after["id"], after) for _, after in seen.items()]


def test_minimal_row_metadata_decodes_each_event_with_the_columns_of_its_time(
        maria: MariadbScenario) -> None:
    maria.env["CDC_MYSQL__SCHEMA_HISTORY_TOPIC"] = f"it{maria.uid}.schema-history"
    maria.execute(ITEMS_DDL)
    capture = maria.start("capture")
    with minimal_row_metadata(maria):
        maria.execute("INSERT INTO {db}.items VALUES (1, 'one', 1, 1.00), (2, 'two', 2, 2.00)")
        maria.execute("ALTER TABLE {db}.items ADD COLUMN color ENUM('red','blue') NOT NULL "
                      "DEFAULT 'blue' AFTER name")
        maria.execute("INSERT INTO {db}.items VALUES (3, 'three', 'red', 3, 3.00)")
        maria.execute("UPDATE {db}.items SET qty = 10 WHERE id = 1")
    assert wait_until(lambda: len(_afters(maria)) == 4, 60), capture.tail()
    capture.kill()  # kill -9 between the ALTERs
    with minimal_row_metadata(maria):
        maria.execute("ALTER TABLE {db}.items RENAME COLUMN name TO title")
        maria.execute("INSERT INTO {db}.items VALUES (4, 'four', 'blue', 4, 4.00)")
        maria.execute("ALTER TABLE {db}.items DROP COLUMN price")
        maria.execute("INSERT INTO {db}.items VALUES (5, 'five', 'red', 5)")
        maria.execute("UPDATE {db}.items SET qty = 20 WHERE id = 2")
    again = maria.start("capture")
    assert wait_until(lambda: len(_afters(maria)) == 7, 60), again.tail()
    assert _afters(maria) == [
        (1, {"id": 1, "name": "one", "qty": 1, "price": "1.00"}),
        (2, {"id": 2, "name": "two", "qty": 2, "price": "2.00"}),
        (3, {"id": 3, "name": "three", "color": "red", "qty": 3, "price": "3.00"}),
        (1, {"id": 1, "name": "one", "color": "blue", "qty": 10, "price": "1.00"}),
        (4, {"id": 4, "title": "four", "color": "blue", "qty": 4, "price": "4.00"}),
        (5, {"id": 5, "title": "five", "color": "red", "qty": 5}),
        (2, {"id": 2, "title": "two", "color": "blue", "qty": 20}),
    ]
    update = [c for c in maria.changes() if c["op"] == "u"][-1]
    assert update["before"] == {"id": 2, "title": "two", "color": "blue", "qty": 2}
    assert "binlog_row_metadata=FULL" in again.tail(400)
    assert "schema history" in capture.tail(400)


def test_a_ddl_the_history_cannot_follow_stops_capture_with_the_statement(
        maria: MariadbScenario) -> None:
    maria.env["CDC_MYSQL__SCHEMA_HISTORY_TOPIC"] = f"it{maria.uid}.schema-history"
    maria.execute(ITEMS_DDL)
    maria.execute("CREATE TABLE {db}.staged (id INT PRIMARY KEY, label TEXT)")
    capture = maria.start("capture")
    with minimal_row_metadata(maria):
        # gh-ost's cut-over: the captured name now holds a table capture never followed.
        maria.execute("RENAME TABLE {db}.items TO {db}.items_old, {db}.staged TO {db}.items")
        maria.execute("INSERT INTO {db}.items VALUES (1, 'one')")
    assert wait_until(lambda: not capture.alive(), 60), capture.tail()
    assert capture.proc.returncode == 3
    assert "RENAME TABLE" in capture.tail() and "--reset-position" in capture.tail()
    assert maria.changes() == []
