"""Every use of Faust's internals, in one place, checked against the Faust version at import.

The worker relies on parts of faust-streaming that are not public API: it gates the
consumer's acknowledgements and gap bookkeeping (``agents.guard``) and hooks the start of a
rebalance. Those parts change between releases without notice. So this module names each one,
checks at import that the installed Faust is a version the worker was tested with and that
every attribute it touches is still there, and refuses to start with a message naming what
changed (:class:`FaustIncompatible`) instead of losing records quietly at run time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import faust
from faust.transport.consumer import Consumer
from faust.types import TP

from pipeline.errors import ConfigError

#: Faust releases this module was written and tested against (``major.minor``).
TESTED_VERSIONS = ("0.15",)

#: (where, attribute) pairs the worker reads, wraps or calls, beyond Faust's public API.
REQUIRED: tuple[tuple[type, str], ...] = (
    (Consumer, "ack"),
    (Consumer, "_add_gap"),
    (Consumer, "seek_wait"),
    (Consumer, "highwater"),
    (faust.App, "on_rebalance_start"),
)


class FaustIncompatible(ConfigError):
    """The installed Faust is not one the worker can run on safely."""

    def __init__(self, message: str) -> None:
        super().__init__("worker.engine", message)


def check(version: str = faust.__version__,
          required: Iterable[tuple[type, str]] = REQUIRED) -> None:
    """Raise :class:`FaustIncompatible` unless ``version`` is tested and every required
    attribute exists."""
    if not version.startswith(tuple(v + "." for v in TESTED_VERSIONS)):
        raise FaustIncompatible(
            f"faust-streaming {version} is installed; the faust worker engine relies on "
            f"internals of faust-streaming {', '.join(v + '.x' for v in TESTED_VERSIONS)} "
            f"only. Install a tested version (pip install 'faust-streaming~=0.15.3') or "
            f"set worker.engine: kafka")
    missing = [f"{owner.__module__}.{owner.__qualname__}.{name}"
               for owner, name in required if not hasattr(owner, name)]
    if missing:
        raise FaustIncompatible(
            f"faust-streaming {version} no longer has {', '.join(missing)}, which the faust "
            f"worker engine needs (agents/faust_internals.py); set worker.engine: kafka")


check()


# -- acknowledgements and gaps --------------------------------------------------------------
def gate_acks(consumer: Any, allow: Callable[[Any], bool],
              allow_gap: Callable[[Any], bool]) -> None:
    """Wrap ``consumer.ack`` so only messages ``allow`` approves reach Faust's commit
    bookkeeping, and ``consumer._add_gap`` so Faust records a hole between two delivered
    offsets (and commits over it) only where ``allow_gap(tp)`` says the log has one."""
    original_ack: Callable[[Any], bool] = consumer.ack

    def ack(message: Any) -> bool:
        return original_ack(message) if allow(message) else False

    consumer.ack = ack
    add_gap = consumer._add_gap

    async def _add_gap(tp: Any, offset_from: int, offset_to: int) -> None:
        if allow_gap(tp):
            await add_gap(tp, offset_from, offset_to)

    consumer._add_gap = _add_gap


async def record_gap(consumer: Any, tp: tuple[str, int], first: int, last: int) -> None:
    """Tell Faust offsets ``first..last`` of ``tp`` are not in the log (it may commit over)."""
    await consumer._add_gap(TP(*tp), first, last)


def highwater(consumer: Any, tp: tuple[str, int]) -> int | None:
    """The partition's fetched end, or None when unknown (not fetched, not assigned)."""
    try:
        end = consumer.highwater(TP(*tp))
    except Exception:  # noqa: BLE001 - not fetched yet, or not assigned any more
        return None
    return end if isinstance(end, int) and end >= 0 else None


async def seek(consumer: Any, tp: tuple[str, int], offset: int) -> None:
    """Re-read ``tp`` from ``offset`` (on the consumer's own thread; it also resets Faust's
    read offset)."""
    await consumer.seek_wait({TP(*tp): offset})


# -- rebalances -----------------------------------------------------------------------------
def on_rebalance_start(app: Any, hook: Callable[[], None]) -> None:
    """Run ``hook`` first whenever a rebalance starts. Faust calls this from its consumer
    thread, as early as it can; ``hook`` must be thread-safe."""
    started = app.on_rebalance_start

    def on_rebalance_start() -> None:
        hook()
        started()

    app.on_rebalance_start = on_rebalance_start
