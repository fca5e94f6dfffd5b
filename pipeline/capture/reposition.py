"""``cdc capture position show|set|reset``: move a capture's position on purpose, as Kafka
Connect's offsets API does for a connector (with a dry run, and only while it is stopped).

- ``show``: the position kept in Kafka (``kafka.offsets_topic``), and for the logical source
  the slot's own (where streaming resumes), how far behind the server it is.
- ``set LSN`` (logical source): advance the slot with ``pg_replication_slot_advance`` and
  save the same position in Kafka. Every change between the old and the new position is
  skipped (never published): for getting past WAL you decided not to publish.
  A slot never moves backwards (PostgreSQL removed what lies behind it), so an earlier
  position is refused; so is one past the server's current WAL position.
- ``reset``: forget the positions kept in Kafka, and for the logical source drop the slot:
  the next capture starts as the first did (a new slot; a snapshot per
  ``postgres.snapshot_mode``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg2

from pipeline.config import Settings
from pipeline.errors import CdcError, ConfigError
from pipeline.positions import Lsn
from pipeline.teardown import SlotInUseError


@dataclass(frozen=True, slots=True)
class SlotPosition:
    """The slot as ``pg_replication_slots`` shows it, and the server's WAL position."""

    confirmed: Lsn | None
    restart: Lsn | None
    current: Lsn
    active_pid: int | None


def _source(settings: Settings) -> Any:
    from pipeline.compose import build_source
    from pipeline.metrics import Metrics

    return build_source(settings, Metrics("position"))


def _slot(settings: Settings) -> SlotPosition | None:
    from pipeline.sources.postgres.slot import connect, translate

    conn = connect(settings.postgres.dsn.get_secret_value())
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT confirmed_flush_lsn::text, restart_lsn::text, "
                        "pg_current_wal_lsn()::text, active_pid FROM pg_replication_slots "
                        "WHERE slot_name = %s", (settings.postgres.slot,))
            row = cur.fetchone()
    except psycopg2.Error as exc:
        raise translate(exc, "reading the replication slot") from exc
    finally:
        conn.close()
    if row is None:
        return None
    def lsn(text: str | None) -> Lsn | None:
        return Lsn.parse(text) if text else None
    return SlotPosition(lsn(row[0]), lsn(row[1]), Lsn.parse(row[2]), row[3])


def show(settings: Settings) -> str:
    source = _source(settings)
    store = getattr(source, "offsets", None)
    lines = [f"source: {source.name}"]
    if store is None:
        lines.append("keeps no position in Kafka (its position lives in the database)")
    else:
        saved = store.load()
        lines.append(f"saved in {store.topic}: "
                     f"{'none' if saved is None else _json(saved)}")
    if settings.capture.source == "logical":
        slot = _slot(settings)
        if slot is None:
            lines.append(f"slot {settings.postgres.slot}: not there")
        else:
            behind = int(slot.current) - int(slot.confirmed or slot.current)
            lines.append(f"slot {settings.postgres.slot}: confirmed {slot.confirmed}, restart "
                         f"{slot.restart}, server at {slot.current} ({behind} bytes behind), "
                         + (f"in use (pid {slot.active_pid})" if slot.active_pid else "idle"))
    return "\n".join(lines)


def _json(value: Any) -> str:
    import orjson

    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


def plan_set(settings: Settings, target: str) -> tuple[SlotPosition, Lsn]:
    """Check a move of the slot to ``target`` (refusals as CdcError); nothing changes."""
    if settings.capture.source != "logical":
        raise ConfigError("capture.source", f"`position set` moves a replication slot "
                                            f"(logical source), not a {settings.capture.source}"
                                            f" capture: use `position reset` to start over")
    try:
        lsn = Lsn.parse(target)
    except (ValueError, TypeError) as exc:
        raise ConfigError("capture position set", f"'{target}' is not an LSN (like 0/16B3748)"
                          ) from exc
    slot = _slot(settings)
    if slot is None:
        raise CdcError(f"slot {settings.postgres.slot} does not exist: there is no position "
                       "to move. A new capture creates it; one that had a slot stops and "
                       "asks for `cdc capture position reset` (a lost slot needs a new "
                       "snapshot)")
    _refuse_active(settings, slot)
    if slot.confirmed is not None and lsn < slot.confirmed:
        raise CdcError(f"{lsn} is before the slot's confirmed position {slot.confirmed}: a "
                       "slot never moves backwards (the WAL behind it is gone); to read "
                       "again, backfill (`cdc snapshot start`) or `position reset`")
    if lsn > slot.current:
        raise CdcError(f"{lsn} is past the server's current WAL position {slot.current}")
    return slot, lsn


def _refuse_active(settings: Settings, slot: SlotPosition) -> None:
    if slot.active_pid is not None:
        raise SlotInUseError(f"replication slot '{settings.postgres.slot}' is in use by a "
                             f"running capture (walsender pid {slot.active_pid}): stop "
                             "`cdc capture` first")


def render_set(settings: Settings, slot: SlotPosition, lsn: Lsn, done: bool) -> str:
    skipped = int(lsn) - int(slot.confirmed or lsn)
    verb = "advanced" if done else "would advance"
    return (f"{verb} slot {settings.postgres.slot} from {slot.confirmed} to {lsn}, skipping "
            f"{skipped} bytes of WAL: changes committed in between are not published "
            "(backfill a table with `cdc snapshot start` if they matter)")


def apply_set(settings: Settings, lsn: Lsn) -> None:
    """Advance the slot, then save the position in Kafka (so capture's check that the slot
    did not go missing compares with the new one)."""
    from pipeline.sources.postgres.slot import connect, translate

    conn = connect(settings.postgres.dsn.get_secret_value())
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_replication_slot_advance(%s, %s::pg_lsn)",
                        (settings.postgres.slot, str(lsn)))
    except psycopg2.errors.ObjectInUse as exc:
        raise SlotInUseError(f"replication slot '{settings.postgres.slot}' is in use by a "
                             "capture started meanwhile: stop it first") from exc
    except psycopg2.Error as exc:
        raise translate(exc, "advancing the replication slot") from exc
    finally:
        conn.close()
    store = _source(settings).offsets
    store.save({"lsn": str(lsn), "last_commit_lsn": None})
    if store.flush():
        raise CdcError(f"the slot was advanced to {lsn}, but Kafka did not acknowledge the "
                       f"saved position in {store.topic}: run `position set {lsn}` again")


def plan_reset(settings: Settings) -> SlotPosition | None:
    """The slot a reset would drop (None: not logical, or no slot); refuses one in use."""
    if settings.capture.source != "logical":
        return None
    slot = _slot(settings)
    if slot is not None:
        _refuse_active(settings, slot)
    return slot


def render_reset(settings: Settings, slot: SlotPosition | None, done: bool) -> str:
    forget = "forgot" if done else "would forget"
    lines = [f"{forget} the positions kept in Kafka for {_source(settings).name}"]
    if slot is not None:
        lines.append(f"{'dropped' if done else 'would drop'} slot {settings.postgres.slot} "
                     f"(confirmed {slot.confirmed}): the next capture creates a new one "
                     f"(snapshot_mode {settings.postgres.snapshot_mode})")
    return "\n".join(lines)


def apply_reset(settings: Settings, slot: SlotPosition | None) -> None:
    if slot is not None:
        _drop_slot_only(settings)
    _source(settings).forget_positions()


def _drop_slot_only(settings: Settings) -> None:
    from pipeline.sources.postgres.slot import connect, translate

    conn = connect(settings.postgres.dsn.get_secret_value())
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                        "WHERE slot_name = %s", (settings.postgres.slot,))
    except psycopg2.errors.ObjectInUse as exc:
        raise SlotInUseError(f"replication slot '{settings.postgres.slot}' is in use by a "
                             "capture started meanwhile: stop it first") from exc
    except psycopg2.Error as exc:
        raise translate(exc, "dropping the replication slot") from exc
    finally:
        conn.close()
