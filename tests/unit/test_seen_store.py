"""The rocksdb:// seen-set store: a str mapping on disk, scanned in key order for eviction,
filled from a changelog, emptied at open, one folder per process; and the settings around it."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import pytest

from pipeline.config import load_settings
from pipeline.dedup import Deduplicator, DedupSettings, RowRecord
from pipeline.errors import ConfigError
from pipeline.positions import ChangePosition
from pipeline.seenstore import RocksSeenStore, open_seen_store


@pytest.fixture
def store(tmp_path: Path) -> RocksSeenStore:
    opened = open_seen_store("rocksdb://", tmp_path)
    assert isinstance(opened, RocksSeenStore)
    return opened


def test_mapping_behaviour(store: RocksSeenStore) -> None:
    store["b"] = "2"
    store["a"] = "1"
    store["a"] = "one"
    assert store["a"] == "one" and store.get("b") == "2" and store.get("z") is None
    assert "a" in store and "z" not in store
    assert list(store) == ["a", "b"]  # byte order
    assert store.pop("b") == "2" and store.pop("b", None) is None
    del store["a"]
    with pytest.raises(KeyError):
        del store["a"]
    with pytest.raises(KeyError):
        store["a"]
    assert list(store) == []


def test_batch_reads_and_writes(store: RocksSeenStore) -> None:
    store["a"] = "1"
    store.update({"b": "2", "a": "one"}, c="3")
    assert store.get_many(["a", "z", "c", "b"]) == ["one", None, "3", "2"]
    assert list(store) == ["a", "b", "c"]
    store.update()  # nothing to write
    assert store.get_many([]) == []


def test_scan_walks_in_order_from_a_cursor(store: RocksSeenStore) -> None:
    for i in range(25):
        store[f"k{i:03d}"] = str(i)
    first = store.scan(None, 10)
    assert first == [f"k{i:03d}" for i in range(10)]
    second = store.scan(first[-1], 10)
    assert second == [f"k{i:03d}" for i in range(10, 20)]
    del store["k021"]
    assert store.scan(second[-1], 10) == ["k020", "k022", "k023", "k024"]
    assert store.scan("k024", 10) == []


def test_eviction_over_a_scanning_store(store: RocksSeenStore) -> None:
    dedup = Deduplicator(store, DedupSettings(window_ms=1_000, evict_batch=7))
    for i in range(30):
        ts = 0 if i % 2 else 10_000  # odd rows old, even rows recent
        store[f"src|t.x|{{\"id\":{i}}}"] = RowRecord(ts, (ChangePosition(1, i + 10),)).encode()
    dropped = 0
    for _ in range(6):  # 30 keys, 7 per call: every key seen at least once
        dropped += dedup.evict(now_ms=10_500)
    assert dropped == 15
    assert all(int(k.split(":")[1].rstrip("}")) % 2 == 0 for k in store)
    assert len(list(store)) == 15


def test_open_empties_what_a_previous_run_left(tmp_path: Path) -> None:
    first = open_seen_store("rocksdb://", tmp_path)
    first["x"] = "1"
    assert isinstance(first, RocksSeenStore)
    first._db.close()
    again = RocksSeenStore(first.path)  # same process, same folder: starts empty
    assert list(again) == []
    again.close()
    assert not first.path.exists()


def test_folders_of_dead_processes_are_removed(tmp_path: Path) -> None:
    dead = tmp_path / "dedup.999999999.rocksdb"
    dead.mkdir()
    alive = tmp_path / f"dedup.{os.getppid()}.rocksdb"
    alive.mkdir()
    store = open_seen_store("rocksdb://", tmp_path)
    assert not dead.exists() and alive.exists()
    assert isinstance(store, RocksSeenStore)
    assert store.path.name == f"dedup.{os.getpid()}.rocksdb"


def test_memory_store_is_a_dict(tmp_path: Path) -> None:
    assert open_seen_store("memory://", tmp_path) == {}
    with pytest.raises(ConfigError, match="worker.store"):
        open_seen_store("redis://", tmp_path)


def test_rocksdb_is_the_default_on_both_engines() -> None:
    env = {"CDC_POSTGRES__DSN": "host=x", "CDC_POSTGRES__TABLES": "[public.t]"}
    for engine in ("faust", "kafka"):
        worker = load_settings(None, {**env, "CDC_WORKER__ENGINE": engine}).worker
        assert worker.store == "rocksdb://" and not worker.store_chosen
    chosen = load_settings(None, {**env, "CDC_WORKER__STORE": "rocksdb://"}).worker
    assert chosen.store_chosen


def test_without_rocksdict_the_default_falls_back_to_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "rocksdict", None)  # import rocksdict -> ImportError
    with caplog.at_level(logging.WARNING, logger="pipeline.seenstore"):
        assert open_seen_store("rocksdb://", tmp_path, chosen=False) == {}
    assert "memory://" in caplog.text and "rocksdict" in caplog.text
    with pytest.raises(ConfigError, match="worker.store.*rocksdict"):
        open_seen_store("rocksdb://", tmp_path, chosen=True)
    assert not list(tmp_path.iterdir())


def test_unwritable_data_folder_is_a_configuration_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(ConfigError, match="CDC_WORKER_DATADIR"):
        open_seen_store("rocksdb://", blocker / "worker")
