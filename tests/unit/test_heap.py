"""pipeline.heap: what exists at set-up is frozen, collections come rarer."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from pipeline import heap


@pytest.fixture
def restored() -> Iterator[None]:
    thresholds = gc.get_threshold()
    gc.unfreeze()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


@pytest.mark.usefixtures("restored")
def test_settle_freezes_what_exists_and_raises_the_thresholds() -> None:
    kept = [object() for _ in range(10)]  # noqa: F841 - alive across settle()
    heap.settle()
    assert gc.get_freeze_count() > 1000  # the interpreter, pytest and the modules
    assert gc.get_threshold() == (heap.YOUNG_THRESHOLD, heap.OLDER_THRESHOLD,
                                  heap.OLDER_THRESHOLD)
    assert gc.get_count()[0] < 100  # collected just now


@pytest.mark.usefixtures("restored")
def test_cycles_made_after_settle_are_still_collected_by_themselves() -> None:
    heap.settle()

    class Node:
        other: object

    a, b = Node(), Node()
    a.other, b.other = b, a
    gone = weakref.ref(a)
    del a, b
    assert gone() is not None  # a cycle: reference counting alone cannot free it
    allocated = [[] for _ in range(2 * heap.YOUNG_THRESHOLD)]  # no gc.collect()
    assert gone() is None
    del allocated
