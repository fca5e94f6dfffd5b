"""``cdc verify --repair``: divergent keys go through the pipeline again.

A missing or differing document is repaired by an incremental backfill of exactly its keys
(one ``execute-snapshot`` signal per table, its filter selecting those keys), so the row is
read in order with the stream: a change made after the read still wins.

A backfill read ranks below every streamed change (the sink writes it with version 0), so it
cannot overwrite a differing document, which holds a higher version. That document is first
deleted, conditionally on it still being what verify read (``if_seq_no``): if the stream
wrote it meanwhile, the delete is refused and the key is left alone (verify again). The
delete leaves a tombstone that refuses version 0 as well for ``index.gc_deletes`` (60 s by
default), so the signal is sent only once that has passed and the index was refreshed.
A document whose row does not exist (extra) is only deleted: a backfill of a missing row
emits nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from pipeline.config import Settings
from pipeline.errors import CdcError, ConfigError
from pipeline.sources.postgres import backfill_control as control
from pipeline.sources.postgres.signals import Signal
from pipeline.verify.compare import DIFFERING, EXTRA, MISSING, TableResult
from pipeline.verify.database import TableRows, key_filter
from pipeline.verify.index import SearchIndex

#: Keys one repair backfills per table at most: the filter travels in a WAL message and is
#: kept in the backfill state (a Kafka record); beyond this a full backfill is cheaper.
MAX_KEYS = 10_000


@dataclass
class TableRepair:
    table: str
    deleted: int = 0
    #: Documents that changed between verify and the delete: left to the stream.
    changed: int = 0
    backfilled: int = 0
    signal: str | None = None
    #: Why the backfill was not sent (its deletes stand: repair again).
    error: str | None = None
    where: str = field(default="", repr=False)


def repair(settings: Settings, es: SearchIndex, tables: dict[str, TableRows],
           results: list[TableResult], say: Callable[[str], None] = print
           ) -> list[TableRepair]:
    drifted = [r for r in results if r.drifts]
    # Every table is checked before anything is deleted: a table that cannot be repaired
    # must not leave another's deletes without their backfill.
    for result in drifted:
        _check(settings, tables[result.table], result)
    repairs: list[TableRepair] = []
    wait_s = 0.0
    backfills: dict[str, list[list[object]]] = {}
    for result in drifted:
        done = TableRepair(result.table)
        repairs.append(done)
        keys: list[list[object]] = []
        for drift in result.drifts:
            if drift.kind in (DIFFERING, EXTRA):
                if drift.seen is None or not es.delete(result.index, drift.doc_id, *drift.seen):
                    done.changed += 1
                    continue
                done.deleted += 1
            if drift.kind in (MISSING, DIFFERING) and drift.text_key is not None:
                keys.append(list(drift.text_key))
        if keys:
            backfills[result.table] = keys
            # a tombstone, ours or an older one, refuses the backfill's version 0 this long
            wait_s = max(wait_s, es.gc_deletes_s(result.index))
    if not backfills:
        return repairs
    if wait_s:
        say(f"waiting {wait_s:.0f} s (index.gc_deletes) so the deletes' tombstones cannot "
            "refuse the backfilled rows")
        time.sleep(wait_s + 0.5)
    for done in repairs:
        keys = backfills.get(done.table, [])
        if not keys:
            continue
        db = tables[done.table]
        es.refresh(settings_index(settings, done.table))
        done.where = key_filter(db.key_names, keys).as_string(db.conn)
        try:  # checked before the deletes; a backfill started since is the one way here
            control.check_start(settings, (done.table,), done.where)
            done.signal = control.send(settings, Signal("execute-snapshot", (done.table,),
                                                        {done.table: done.where}))
        except CdcError as exc:
            done.error = (f"{len(keys)} key(s) not backfilled ({exc}): run cdc verify "
                          "--repair again once it can start")
            continue
        done.backfilled = len(keys)
    return repairs


def _check(settings: Settings, db: TableRows, result: TableResult) -> None:
    """ConfigError when ``result``'s drift cannot be repaired key by key."""
    if len(result.drifts) > MAX_KEYS:
        raise ConfigError("--repair", f"{result.table} has {len(result.drifts)} drifted "
                          f"documents (more than {MAX_KEYS} to repair key by key): "
                          f"backfill the whole table instead: cdc snapshot start "
                          f"{result.table}")
    keys = [list(d.text_key) for d in result.drifts
            if d.kind in (MISSING, DIFFERING) and d.text_key is not None]
    if keys:
        control.check_start(settings, (result.table,),
                            key_filter(db.key_names, keys).as_string(db.conn))


def settings_index(settings: Settings, table: str) -> str:
    assert settings.elasticsearch is not None
    return settings.elasticsearch.index_for(table)
