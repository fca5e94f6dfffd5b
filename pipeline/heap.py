"""The garbage collector's settings for the long-running processes (capture, workers).

Per event these processes allocate many short-lived objects (decoded rows, positions,
sink requests) while holding hundreds of thousands of long-lived ones (imported modules,
Faust's app and consumer, settings). With CPython's default thresholds (700, 10, 10) a
young collection runs every 700 allocations and every hundredth one walks every
long-lived object again, which a profile of a Faust worker shows as time spent on plain
allocation lines. :func:`settle`, called once a process is set up, freezes what exists
then (it lives as long as the process; the collector no longer walks it) and makes
collections rarer. Reference counting still frees almost everything at once: only
reference cycles wait for a collection, so memory does not grow by it.
"""

from __future__ import annotations

import gc

#: Allocations (less deallocations) of container objects between young collections.
YOUNG_THRESHOLD = 50_000
#: Young collections per middle one, and middle ones per full one.
OLDER_THRESHOLD = 20


def settle() -> None:
    """Collect once, freeze the survivors and raise the thresholds (idempotent)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, OLDER_THRESHOLD, OLDER_THRESHOLD)
