"""Issue 14 on the real servers: column rules at capture keep personal data out of Kafka,
skipped operations are not published, `cdc capture position set` advances the real slot,
and `cdc teardown` refuses a slot in use, then leaves nothing behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import orjson
import psycopg2
import pytest

from pipeline.harness import slot_active, wait_until
from tests.integration.scenario import Scenario

pytestmark = pytest.mark.integration


def cdc(sc: Scenario, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args],
                          env={**os.environ, **sc.env}, capture_output=True, text=True,
                          timeout=120)


def slot_row(sc: Scenario) -> tuple[str, bool] | None:
    conn = psycopg2.connect(sc.dsn)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT confirmed_flush_lsn::text, active FROM pg_replication_slots "
                        "WHERE slot_name = %s", (sc.settings.postgres.slot,))
            row = cur.fetchone()
            return None if row is None else (row[0], row[1])
    finally:
        conn.close()


def publication_exists(sc: Scenario) -> bool:
    conn = psycopg2.connect(sc.dsn)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_publication WHERE pubname = %s",
                        (sc.settings.postgres.publication,))
            return cur.fetchone() is not None
    finally:
        conn.close()


def test_rules_at_capture_then_position_and_teardown(scenario: Scenario) -> None:
    sc = scenario
    sc.env["CDC_POSTGRES__COLUMNS"] = json.dumps(
        {sc.table_id: {"mask": {"name": 3}, "exclude": ["note"]}})
    sc.env["CDC_POSTGRES__SKIPPED_OPERATIONS"] = "[d]"
    sc.execute("INSERT INTO items VALUES (1, 'Ada Secret', 1, 1.00, 'private note')")  # snapshot
    sc.start("capture")
    sc.execute("INSERT INTO items VALUES (2, 'Bob Secret', 2, 2.00, 'private too')")
    sc.execute("UPDATE items SET qty = 3 WHERE id = 2")
    sc.execute("DELETE FROM items WHERE id = 1")

    def values() -> list[dict[str, object]]:
        return [orjson.loads(m.value()) for m in sc.read_topic(sc.topic) if m.value()]

    assert wait_until(lambda: len(values()) >= 3, 60), sc.processes["capture"].tail()
    records = sc.read_topic(sc.topic)
    assert all(b"Secret" not in (m.value() or b"") and b"private" not in (m.value() or b"")
               for m in records)
    events = values()
    assert sorted(str(e["op"]) for e in events) == ["c", "r", "u"]  # the delete is skipped
    assert all(e["after"]["name"] == "***" and "note" not in e["after"]  # type: ignore[index,operator]
               for e in events)

    # -- a slot a capture reads is refused, and nothing is dropped
    refused = cdc(sc, "teardown", "--yes")
    assert refused.returncode == 3, refused.stdout + refused.stderr
    assert "is in use by a running capture" in refused.stderr
    assert slot_row(sc) is not None and publication_exists(sc)

    sc.processes["capture"].stop()
    assert wait_until(lambda: not slot_active(sc.dsn, sc.settings.postgres.slot), 30)

    # -- advance the stopped slot to the server's current position
    sc.execute("INSERT INTO items VALUES (3, 'never published', 1, 1.00, 'x')")
    conn = psycopg2.connect(sc.dsn)
    with conn.cursor() as cur:
        cur.execute("SELECT pg_current_wal_lsn()::text")
        (now,) = cur.fetchone()
    conn.close()
    dry = cdc(sc, "capture", "position", "set", now, "--dry-run")
    assert dry.returncode == 0 and dry.stdout.startswith("would advance slot"), dry.stderr
    before = slot_row(sc)
    assert before is not None and before[0] != now
    moved = cdc(sc, "capture", "position", "set", now, "--yes")
    assert moved.returncode == 0, moved.stderr
    assert slot_row(sc) == (now, False)
    shown = cdc(sc, "capture", "position", "show").stdout
    assert f'"lsn":"{now}"' in shown
    backwards = cdc(sc, "capture", "position", "set", before[0], "--yes")
    assert backwards.returncode != 0 and "never moves backwards" in backwards.stderr

    # -- workers still consuming: deleting the topics is refused (they would create them
    # again at once, empty, while teardown reported them deleted)
    from pipeline.teardown import _groups_with_members

    worker = sc.start("worker")
    assert wait_until(lambda: _groups_with_members(sc.settings), 90), worker.tail()
    busy = cdc(sc, "teardown", "--yes", "--topics")
    assert busy.returncode == 3 and "workers are running" in busy.stderr, busy.stderr
    assert sc.topic in sc.read_topic_names() and slot_row(sc) is not None
    worker.stop()
    assert wait_until(lambda: not _groups_with_members(sc.settings), 60)

    # -- teardown: dry run changes nothing, then everything named goes
    dry = cdc(sc, "teardown", "--dry-run", "--topics")
    assert f"would drop replication slot {sc.settings.postgres.slot}" in dry.stdout
    assert f"would delete topic {sc.topic}" in dry.stdout
    assert slot_row(sc) is not None
    done = cdc(sc, "teardown", "--yes", "--topics")
    assert done.returncode == 0, done.stderr
    assert f"dropped publication {sc.settings.postgres.publication}" in done.stdout
    assert slot_row(sc) is None and not publication_exists(sc)
    assert sc.topic not in sc.read_topic_names()
