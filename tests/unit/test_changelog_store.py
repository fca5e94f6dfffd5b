"""The dedup store keeps each entry's partition and mirrors every change to its changelog."""

from __future__ import annotations

from collections.abc import MutableMapping
from pathlib import Path

import pytest

from pipeline.kafka.changelog import ChangelogStore
from pipeline.seenstore import open_seen_store


class FakeChangelog:
    def __init__(self) -> None:
        self.writes: list[tuple[int, str, str | None]] = []

    def write(self, partition: int, key: str, value: str | None) -> None:
        self.writes.append((partition, key, value))

    def read(self, partitions: list[int],
             into: MutableMapping[str, str] | None = None) -> MutableMapping[str, str]:
        state: MutableMapping[str, str] = {} if into is None else into
        for partition, key, value in self.writes:
            if partition in partitions:
                if value is None:
                    state.pop(key, None)
                else:
                    state[key] = value
        return state


def test_writes_go_to_the_partition_of_their_scope() -> None:
    log = FakeChangelog()
    store = ChangelogStore(log)  # type: ignore[arg-type]
    with store.scope(2):
        store["row-a"] = "pos-1"
    with store.scope(0):
        store["row-b"] = "pos-7"
    assert store["row-a"] == "pos-1"
    assert store.get("missing") is None
    assert log.writes == [(2, "row-a", "2|pos-1"), (0, "row-b", "0|pos-7")]
    del store["row-a"]  # an eviction deletes in the entry's own partition
    assert log.writes[-1] == (2, "row-a", None)
    assert list(store) == ["row-b"]


@pytest.mark.parametrize("spec", ["memory://", "rocksdb://"])
def test_restore_and_forget_by_partition(spec: str, tmp_path: Path) -> None:
    log = FakeChangelog()
    writer = ChangelogStore(log)  # type: ignore[arg-type]
    for partition, key in ((0, "a"), (1, "b"), (1, "c")):
        with writer.scope(partition):
            writer[key] = f"v{key}"
    del writer["c"]

    # a restarted worker, restoring into the configured store
    fresh = ChangelogStore(log, open_seen_store(spec, tmp_path))  # type: ignore[arg-type]
    fresh.restore({1})
    assert dict(fresh.items()) == {"b": "vb"}  # partition 1 only; the deleted entry stays gone
    fresh.restore({0})
    fresh.forget({1})
    assert dict(fresh.items()) == {"a": "va"}
