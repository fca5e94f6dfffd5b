"""The Faust engine's dedup seen-set: a Faust table kept in ``worker.store``.

Faust recovers the table from its changelog at start, as before; only where the entries
live changes. Faust's own ``rocksdb://`` store will not do: it finds the partition of every
write from the event being processed, and the worker writes the seen-set outside any event
(in batches, and from the eviction timer). So the table keeps Faust's in-memory store class,
with its dict swapped for the store ``pipeline.seenstore`` opens (RocksDB on disk by
default), the same one the kafka engine uses.

Faust's in-memory store also remembers the partition of every key it recovered, in a dict of
its own (unbounded: one entry per row); here the partition is read from the stored value
instead (``"<partition>|<entry>"``, ``pipeline.kafka.changelog.ChangelogStore``).

This module overrides two methods of Faust's (``Table._new_store`` and the memory store's
recovery hooks) on bases it takes from ``agents.faust_internals``, which checks at import
that the installed Faust still has them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, MutableMapping
from typing import Any

from agents.faust_internals import FaustMemoryStore, FaustTable


def _partition_of(raw: Any) -> int | None:
    head = str(raw).split("|", 1)[0]
    return int(head) if head.isdigit() else None


class SeenSetStore(FaustMemoryStore):  # type: ignore[misc]
    """Faust's in-memory table store over another mapping (``backing``)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self._recovered: set[int] = set()  # partitions whose entries Faust recovered

    def apply_changelog_batch(self, batch: Iterable[Any], to_key: Callable[[Any], Any],
                              to_value: Callable[[Any], Any]) -> None:
        """Entries from the changelog, in log order (a later entry for a key wins)."""
        data = self.data
        for event in batch:
            key = to_key(event.key)
            self._recovered.add(event.message.partition)
            if event.message.value is None:
                data.pop(key, None)
            else:
                data[key] = to_value(event.value)

    async def on_recovery_completed(self, active_tps: Any, standby_tps: Any) -> None:
        """Drop what was recovered for partitions this worker is not active for."""
        active = {partition for _, partition in active_tps}
        if self._recovered <= active:
            return
        foreign = self._recovered - active
        scan = getattr(self.data, "scan", None)
        gone: list[str] = []
        if scan is None:
            gone = [k for k, raw in self.data.items() if _partition_of(raw) in foreign]
        else:  # walk a disk store in pages, never every key at once
            after = None
            while page := scan(after, 10_000):
                gone += [k for k in page if _partition_of(self.data.get(k)) in foreign]
                after = page[-1]
        for key in gone:
            self.data.pop(key, None)
        self._recovered &= active

    def get(self, key: Any, default: Any = None) -> Any:
        """One lookup in the backing store. The inherited ``Mapping.get`` goes through
        ``FastUserDict.__getitem__``, and for a row not seen yet (most rows) raises and
        catches a KeyError through both frames: about 1 µs of every such event."""
        return self.data.get(key, default)

    def scan(self, after: str | None, limit: int) -> list[str] | None:
        """Keys in order past ``after``, when the backing store walks that way (eviction)."""
        scan = getattr(self.data, "scan", None)
        return None if scan is None else list(scan(after, limit))

    async def on_stop(self) -> None:
        close = getattr(self.data, "close", None)
        if close is not None:
            with contextlib.suppress(Exception):
                close()


class SeenSetTable(FaustTable):  # type: ignore[misc]
    """A Faust table whose entries live in ``backing`` (see the module docstring)."""

    def __init__(self, app: Any, *, backing: MutableMapping[str, str], **kwargs: Any) -> None:
        self.backing = backing
        super().__init__(app, **kwargs)

    def _new_store(self) -> SeenSetStore:
        store = SeenSetStore(
            "memory://", self.app, self, table_name=self.name, key_type=self.key_type,
            key_serializer=self.key_serializer, value_serializer=self.value_serializer,
            value_type=self.value_type, loop=self.loop, options=self.options)
        store.data = self.backing
        return store
