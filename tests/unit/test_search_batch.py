"""A search-sink batch reduced to one write per document: the newest change by version wins
whatever its place in the batch, older images fill the columns the newest lacks, and each
``_bulk`` action carries the change's source position as its external version."""

from __future__ import annotations

import orjson
from hypothesis import given
from hypothesis import strategies as st

from pipeline.events import SNAPSHOT_VERSION, UNAVAILABLE_VALUE, ChangeEvent, SourceInfo
from pipeline.sinks.search_batch import DocumentWrites, bulk_actions

INDEX = "shop.public.items"


def change(op: str, row_id: int, lsn: int, after: dict | None = None) -> ChangeEvent:
    source = SourceInfo(connector="postgresql", name="shop", db="shop", schema="public",
                        table="items", ts_us=1, lsn=lsn, commit_lsn=lsn)
    key = {"id": row_id}
    if after is None and op != "d":
        after = {"id": row_id, "name": f"n{lsn}"}
    return ChangeEvent(op=op, key=key, before=None, after=after, source=source)


def reduce(batch: list[ChangeEvent]) -> DocumentWrites:
    writes = DocumentWrites()
    for i, event in enumerate(batch):
        assert event.key is not None
        writes.add(i, event, (INDEX, str(event.key["id"])))
    return writes


def test_one_write_per_document_the_last_one() -> None:
    batch = [change("c", 1, 100), change("u", 1, 110), change("c", 2, 120),
             change("u", 1, 130), change("d", 2, 140)]
    writes = reduce(batch)
    assert len(writes) == 2 and writes.folded == 3
    assert writes.latest[(INDEX, "1")][:2] == (3, batch[3])
    assert writes.latest[(INDEX, "1")][2] == {"id": 1, "name": "n130"}
    assert writes.latest[(INDEX, "2")] == (4, batch[4], None)  # the delete wins


def test_newest_by_version_wins_not_the_latest_in_the_batch() -> None:
    newer, older = change("u", 1, 200), change("u", 1, 150)
    writes = reduce([newer, older])
    assert writes.latest[(INDEX, "1")][1] is newer and writes.folded == 1


def test_delete_then_insert_again_indexes_the_row() -> None:
    writes = reduce([change("d", 1, 100), change("c", 1, 110, {"id": 1, "name": "back"})])
    assert writes.latest[(INDEX, "1")][2] == {"id": 1, "name": "back"}


def test_unchanged_toast_column_is_filled_from_an_older_image() -> None:
    first = change("u", 1, 100, {"id": 1, "body": "long text", "n": 1})
    second = change("u", 1, 110, {"id": 1, "body": UNAVAILABLE_VALUE, "n": 2})
    writes = reduce([first, second])
    assert writes.latest[(INDEX, "1")][2] == {"id": 1, "body": "long text", "n": 2}


def test_older_snapshot_read_fills_what_the_newer_change_lacks() -> None:
    streamed = change("u", 1, 500, {"id": 1, "body": UNAVAILABLE_VALUE, "n": 2})
    read = change("r", 1, 10, {"id": 1, "body": "from the snapshot", "n": 1})
    writes = reduce([streamed, read])
    i, event, doc = writes.latest[(INDEX, "1")]
    assert event is streamed and doc == {"id": 1, "body": "from the snapshot", "n": 2}
    assert streamed.after is not None and streamed.after["body"] == UNAVAILABLE_VALUE  # a copy


def test_bulk_actions_carry_external_versions_from_the_source_position() -> None:
    writes = reduce([change("c", 1, 2**40 + 7), change("d", 2, 99), change("r", 3, 5)])
    actions = bulk_actions(writes.latest, aliases={INDEX})
    assert [a for a, _ in actions] == ["index", "delete", "index"]
    metas = [orjson.loads(lines[0]) for _, lines in actions]
    assert metas[0] == {"index": {"_index": INDEX, "_id": "1", "version": 2**40 + 7,
                                  "version_type": "external", "require_alias": True}}
    assert metas[1] == {"delete": {"_index": INDEX, "_id": "2", "version": 99,
                                   "version_type": "external"}}
    assert metas[2]["index"]["version"] == SNAPSHOT_VERSION  # below any streamed change
    assert orjson.loads(actions[0][1][1]) == {"id": 1, "name": f"n{2**40 + 7}"}
    assert "require_alias" not in orjson.loads(bulk_actions(writes.latest, set())[0][1][0])[
        "index"]


@given(st.lists(st.tuples(st.integers(0, 4), st.integers(1, 60), st.booleans()),
                min_size=1, max_size=40, unique_by=lambda t: (t[0], t[1])))
def test_each_document_gets_its_highest_version(changes: list[tuple[int, int, bool]]) -> None:
    """Whatever the order of a batch, each row's write is its highest-versioned change."""
    batch = [change("d" if gone else "u", row, 100 + lsn) for row, lsn, gone in changes]
    writes = reduce(batch)
    expected = {}
    for row, lsn, gone in changes:
        if row not in expected or expected[row][0] < lsn:
            expected[row] = (lsn, gone)
    assert {slot[1]: event.version for slot, (_, event, _) in writes.latest.items()} == {
        str(row): 100 + lsn for row, (lsn, _) in expected.items()}
    assert {slot[1]: doc is None for slot, (_, _, doc) in writes.latest.items()} == {
        str(row): gone for row, (_, gone) in expected.items()}
    assert writes.folded == len(batch) - len(expected)
