"""One batch of the search sink reduced to one write per document, and its ``_bulk`` actions.

As the best sink connectors do, a batch never sends two writes for one document: the
changes of each ``(index, _id)`` fold into the newest by version, whatever their order in the
batch (the last write wins, by the source position, not by arrival). What an older change
still knows is kept: a column the newer image lacks (an unchanged TOAST value arrives as a
placeholder) is taken from an older image of the same row in the batch, and a snapshot read
older than the newest change still fills the columns the newer one did not carry.

Each action carries ``version_type: external`` with the change's version (its source
position, ``ChangeEvent.version``), so Elasticsearch itself refuses anything older than what
it holds: a replayed or late batch can never overwrite newer state.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from pipeline.events import UNAVAILABLE_VALUE, ChangeEvent, Row, is_unavailable

Slot = tuple[str, str]  # (index, document id)
#: slot -> (index of the change in the batch, the change, the document to write or None
#: for a delete)
Latest = dict[Slot, tuple[int, ChangeEvent, Row | None]]


def missing_columns(doc: Row) -> list[str]:
    """Columns of ``doc`` that hold the unchanged-TOAST placeholder."""
    return [name for name, value in doc.items() if is_unavailable(value)]


@dataclass
class DocumentWrites:
    """The writes of one batch, one per document (see the module docstring)."""

    latest: Latest = field(default_factory=dict)
    #: Changes folded away: older than the document's newest change in the batch, or
    #: replaced by a newer one.
    folded: int = 0

    def add(self, i: int, event: ChangeEvent, slot: Slot) -> None:
        """Fold change ``i`` of the batch (a row change with a key) into its document."""
        doc = dict(event.after) if event.after is not None else None
        previous = self.latest.get(slot)
        if previous is not None and previous[1].version > event.version:
            # An older change of the same row later in the batch: stale. A snapshot read
            # still fills the columns the newer change did not carry.
            if event.op == "r" and doc is not None and previous[2] is not None:
                for column in missing_columns(previous[2]):
                    if column in doc and not is_unavailable(doc[column]):
                        previous[2][column] = doc[column]
            self.folded += 1
            return
        if doc is not None and previous is not None and previous[2] is not None:
            for column in missing_columns(doc):
                if not is_unavailable(previous[2].get(column, UNAVAILABLE_VALUE)):
                    doc[column] = previous[2][column]
        if previous is not None:
            self.folded += 1
        self.latest[slot] = (i, event, doc)

    def __len__(self) -> int:
        return len(self.latest)


def bulk_actions(latest: Latest, aliases: set[str]) -> list[tuple[str, list[bytes]]]:
    """One ``_bulk`` action per document, in ``latest``'s order: ``(action, lines)``.
    A write to an index that is our alias requires it to stay one (``require_alias``), so
    it never auto-creates an unmapped index."""
    actions: list[tuple[str, list[bytes]]] = []
    for (index, doc_id), (_, event, doc) in latest.items():
        meta: dict[str, Any] = {"_index": index, "_id": doc_id, "version": event.version,
                                "version_type": "external"}
        if doc is None:
            actions.append(("delete", [orjson.dumps({"delete": meta})]))
        else:
            if index in aliases:
                meta["require_alias"] = True
            actions.append(("index", [orjson.dumps({"index": meta}), orjson.dumps(doc)]))
    return actions
