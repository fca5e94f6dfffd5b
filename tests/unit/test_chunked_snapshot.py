"""The one-reader snapshot hands out every row once, in key order, with Debezium's
``source.snapshot`` markers, whatever the table and chunk sizes."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from pipeline.capture.chunked_snapshot import Chunk, ChunkedSnapshot
from pipeline.capture.source import Checkpoint


class ListSnapshot(ChunkedSnapshot):
    """Tables of integer keys 1..n, read after a key."""

    def __init__(self, sizes: dict[str, int], chunk_size: int) -> None:
        super().__init__(list(sizes), chunk_size, None)
        self.sizes = sizes

    def _chunk(self, table: str, after: Any) -> Chunk:
        start = 0 if after is None else after
        rows = [(k,) for k in range(start + 1, min(start + self.chunk_size, self.sizes[table])
                                    + 1)]
        return rows, lambda values: values[0], lambda values: values[0]

    def _emit(self, table: str, read: Any, marker: str) -> Any:
        return (table, read, marker)


def expected(sizes: dict[str, int]) -> list[tuple[str, int, str]]:
    flat = [(t, k) for t, n in sizes.items() for k in range(1, n + 1)]
    out = []
    for i, (t, k) in enumerate(flat):
        marker = ("first" if i == 0 else "last" if i == len(flat) - 1
                  else "first_in_data_collection" if k == 1
                  else "last_in_data_collection" if k == sizes[t] else "true")
        out.append((t, k, marker))
    return out


@given(st.lists(st.integers(0, 9), min_size=1, max_size=4), st.integers(1, 5))
def test_every_row_once_in_order_with_its_marker(counts: list[int], chunk_size: int) -> None:
    sizes = {f"s.t{i}": n for i, n in enumerate(counts)}
    snapshot = ListSnapshot(sizes, chunk_size)
    records: list[Any] = []
    while not snapshot.finished:
        records += [r for r in snapshot.read() if not isinstance(r, Checkpoint)]
    assert records == expected(sizes)
