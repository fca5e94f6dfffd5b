"""The Faust engine's seen-set table: Faust's recovery writes into the backing store (RocksDB
by default), in log order, and what was recovered for partitions the worker is not active
for is dropped afterwards."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import faust

from agents.seen_table import SeenSetTable
from pipeline.seenstore import RocksSeenStore, open_seen_store


def _entry(partition: int, key: str, value: str | None) -> Any:
    return SimpleNamespace(key=key, value=value,
                           message=SimpleNamespace(partition=partition, value=value))


def test_recovery_fills_the_disk_store_and_forgets_foreign_partitions(tmp_path: Path) -> None:
    backing = open_seen_store("rocksdb://", tmp_path)
    assert isinstance(backing, RocksSeenStore)
    app = faust.App("seen-table-test", store="memory://")
    table = SeenSetTable(app, name="dedup", backing=backing, beacon=app.tables.beacon,
                         partitions=4)
    store = table.data
    assert store.data is backing
    store.apply_changelog_batch([
        _entry(0, "a", "0|1:x"), _entry(1, "b", "1|1:y"), _entry(0, "a", "0|2:x"),
        _entry(2, "c", "2|1:z"), _entry(2, "c", None), _entry(3, "d", "3|1:w"),
    ], to_key=lambda k: k, to_value=lambda v: v)
    assert dict(backing.items()) == {"a": "0|2:x", "b": "1|1:y", "d": "3|1:w"}
    store.data["e"] = "1|5:v"  # written by the worker itself, not recovered
    asyncio.run(store.on_recovery_completed({("t", 0), ("t", 1)}, set()))
    assert dict(backing.items()) == {"a": "0|2:x", "b": "1|1:y", "e": "1|5:v"}
    assert store.scan(None, 10) == ["a", "b", "e"]
    assert store.get("a") == "0|2:x"  # read straight from the backing store
    assert store.get("d") is None and store.get("d", "absent") == "absent"
    asyncio.run(store.on_stop())
    assert not backing.path.exists()
