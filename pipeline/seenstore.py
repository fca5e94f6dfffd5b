"""Where a worker keeps the dedup seen-set (``worker.store``), on either engine.

* ``rocksdb://`` (the default where ``rocksdict`` imports, else memory:// with a warning):
  RocksDB on local disk, under the worker's data folder. Its memory is bounded by the
  memtables and the block cache (``MEMTABLE_MB``, ``CACHE_MB``), so the worker's RSS stays
  flat however many rows the window holds; the rest lives on disk.
* ``memory://``: a dict. Fastest; grows with the rows changed within ``worker.dedup.window_ms``
  (about 190 bytes per row).

Either way the changelog topic is the durable copy: a store is emptied when the worker
starts and filled from the changelog for the partitions it is assigned
(``pipeline.kafka.changelog``). So RocksDB runs without its write-ahead log, and each worker
process has a folder of its own (``dedup.<pid>.rocksdb``); folders left by processes that
are gone are removed when the next one opens.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections.abc import Iterator, MutableMapping, Sequence
from pathlib import Path
from typing import Any

from pipeline.errors import ConfigError

log = logging.getLogger(__name__)

#: RocksDB write buffers (two of them) and the block cache, in MB: the store's memory.
MEMTABLE_MB = 8
CACHE_MB = 16


class RocksSeenStore(MutableMapping[str, str]):
    """A ``str -> str`` mapping in RocksDB, keys in byte order."""

    def __init__(self, path: Path) -> None:
        from rocksdict import (
            BlockBasedIndexType,
            BlockBasedOptions,
            Cache,
            Options,
            Rdict,
            WriteBatch,
            WriteOptions,
        )

        shutil.rmtree(path, ignore_errors=True)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                "worker.store", f"rocksdb:// needs a writable CDC_WORKER_DATADIR: {exc}"
            ) from exc
        options = Options(raw_mode=True)
        options.create_if_missing(True)
        options.set_write_buffer_size(MEMTABLE_MB << 20)
        options.set_max_write_buffer_number(2)
        table = BlockBasedOptions()
        table.set_block_cache(Cache(CACHE_MB << 20))
        # A bloom filter, so looking up a row never seen reads no data block. Index and
        # filter blocks inside the cache (else they grow with the data, outside any bound),
        # and partitioned: a whole-file filter or index block is ~1 MB once the store holds
        # millions of rows, and a cache this small then evicts and reloads one per lookup
        # (measured: 0.5 ms per lookup of an absent row at 3M rows, 4.5 us partitioned;
        # `python -m bench.seenstore`). Only the small top-level blocks stay pinned.
        table.set_bloom_filter(10, False)
        table.set_cache_index_and_filter_blocks(True)
        table.set_pin_l0_filter_and_index_blocks_in_cache(True)
        table.set_index_type(BlockBasedIndexType.two_level_index_search())
        table.set_partition_filters(True)
        table.set_pin_top_level_index_and_filter(True)
        table.set_metadata_block_size(4096)
        options.set_block_based_table_factory(table)
        self.path = path
        self._write_batch = WriteBatch
        try:
            self._db = Rdict(str(path), options)
        except Exception as exc:  # rocksdict raises plain exceptions for I/O problems
            raise ConfigError(
                "worker.store", f"rocksdb:// cannot open {path} (set CDC_WORKER_DATADIR to a "
                f"writable local folder): {exc}"
            ) from exc
        write = WriteOptions()
        # The changelog is the durable copy (a property at run time; the stubs say method).
        write.disable_wal = True  # type: ignore[method-assign,assignment]
        self._db.set_write_options(write)

    def __getitem__(self, key: str) -> str:
        raw = self._db.get(key.encode())
        if raw is None:
            raise KeyError(key)
        return bytes(raw).decode()

    def get(self, key: str, default: str | None = None) -> str | None:  # type: ignore[override]
        raw = self._db.get(key.encode())
        return default if raw is None else bytes(raw).decode()

    def get_many(self, keys: Sequence[str]) -> list[str | None]:
        """The values of ``keys`` (None: absent), in one read of the store."""
        found: list[Any] = self._db.get([key.encode() for key in keys])  # type: ignore[assignment]
        return [None if raw is None else bytes(raw).decode() for raw in found]

    def __setitem__(self, key: str, value: str) -> None:
        self._db.put(key.encode(), value.encode())

    def update(self, other: Any = (), /, **kwargs: str) -> None:
        """Write the entries (given as to ``dict.update``) in one batch."""
        batch = self._write_batch(raw_mode=True)
        for key, value in dict(other, **kwargs).items():
            batch.put(key.encode(), value.encode())
        self._db.write(batch)

    def __delitem__(self, key: str) -> None:
        raw = key.encode()
        if self._db.get(raw) is None:
            raise KeyError(key)
        self._db.delete(raw)

    def pop(self, key: str, *default: str | None) -> str | None:  # type: ignore[override]
        raw = key.encode()
        found = self._db.get(raw)
        if found is None:
            if default:
                return default[0]
            raise KeyError(key)
        self._db.delete(raw)
        return bytes(found).decode()

    def __iter__(self) -> Iterator[str]:
        it = self._db.iter()
        it.seek_to_first()
        while it.valid():
            yield bytes(it.key()).decode()
            it.next()

    def __len__(self) -> int:
        """RocksDB's estimate of the number of keys (exact counting would cost a read per
        write); used for logs and metrics only."""
        return int(self._db.property_int_value("rocksdb.estimate-num-keys") or 0)

    def scan(self, after: str | None, limit: int) -> list[str]:
        """Up to ``limit`` keys in order, starting past ``after`` (None: from the first).
        Eviction walks the store with this, so it never holds every key in memory."""
        it = self._db.iter()
        if after is None:
            it.seek_to_first()
        else:
            it.seek(after.encode())
        out: list[str] = []
        while it.valid() and len(out) < limit:
            key = bytes(it.key()).decode()
            if key != after:
                out.append(key)
            it.next()
        return out

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._db.close()
        shutil.rmtree(self.path, ignore_errors=True)


def open_seen_store(spec: str, folder: Path, chosen: bool = True) -> MutableMapping[str, str]:
    """The store ``worker.store`` names; ``folder`` is this worker's data folder.

    ``chosen``: the user set ``worker.store`` (``WorkerSettings.store_chosen``). rocksdb://
    without the rocksdict package is then a configuration error; left at its default, it
    falls back to memory:// with a warning (memory then grows with the dedup window).
    """
    if spec == "memory://":
        return {}
    if spec == "rocksdb://":
        try:
            import rocksdict  # noqa: F401
        except ImportError as exc:
            if chosen:
                raise ConfigError(
                    "worker.store", f"rocksdb:// needs the rocksdict package (pip install "
                    f"rocksdict), or set memory://: {exc}"
                ) from exc
            log.warning("worker.store: rocksdict does not import (%s); keeping the dedup "
                        "seen-set in memory:// instead, whose size grows with the rows "
                        "changed within worker.dedup.window_ms (pip install rocksdict to "
                        "bound it)", exc)
            return {}
        _remove_orphans(folder)
        return RocksSeenStore(folder / f"dedup.{os.getpid()}.rocksdb")
    raise ConfigError("worker.store", f"{spec!r} is not one of memory://, rocksdb://")


def _remove_orphans(folder: Path) -> None:
    """Delete the store folders of worker processes that are no longer running."""
    if not folder.is_dir():
        return
    for path in folder.glob("dedup.*.rocksdb"):
        pid = path.name.split(".")[1]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
