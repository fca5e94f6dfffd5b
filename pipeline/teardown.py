"""``cdc teardown``: decommission a capture so that nothing keeps costing.

A forgotten replication slot retains WAL until the disk fills; a forgotten publication and
the positions kept in Kafka make the next capture under the same names believe a slot was
lost. Teardown drops the slot and the publication (refusing while a capture still reads the
slot), forgets the positions, and on request deletes the pipeline's topics and search indices
(refusing while workers still consume them: they would create them again).

A plan is read first (:func:`plan`) and rendered (:meth:`TeardownPlan.render`): the dry run
shows it, the command asks before :func:`execute`. Only what exists is acted on; what is
already gone is said so.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import psycopg2
from psycopg2 import sql

from pipeline.config import Settings
from pipeline.errors import CdcError, PermanentError, RetriableError
from pipeline.kafka.client import client_config, list_topics

log = logging.getLogger(__name__)


class SlotInUseError(PermanentError):
    """The replication slot is read by a running capture: stop it first."""


@dataclass(frozen=True, slots=True)
class SlotState:
    """A replication slot as ``pg_replication_slots`` shows it."""

    name: str
    active_pid: int | None
    retained_wal_bytes: int


@dataclass(slots=True)
class TeardownPlan:
    """What teardown finds, so what it would drop."""

    source: str
    slot_name: str | None = None
    slot: SlotState | None = None
    publication: str | None = None
    publication_exists: bool = False
    positions_of: str | None = None
    topics: list[str] = field(default_factory=list)
    topics_missing: list[str] = field(default_factory=list)
    indices: list[str] = field(default_factory=list)
    indices_missing: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: Consumer groups of sink workers that have members (running workers), when topics go.
    running_groups: list[str] = field(default_factory=list)

    def refusal(self) -> str | None:
        """Why teardown may not go on (a capture still reads the slot, or workers still
        consume the topics it would delete), or None."""
        if self.slot is not None and self.slot.active_pid is not None:
            return (f"replication slot '{self.slot.name}' is in use by a running capture "
                    f"(walsender pid {self.slot.active_pid}): stop `cdc capture` first, then "
                    "run teardown again")
        if self.running_groups:
            return (f"workers are running in consumer group(s) "
                    f"{', '.join(self.running_groups)}: they would create the deleted topics "
                    "again at once (empty); stop every `cdc worker` first, then run "
                    "teardown again")
        return None

    @property
    def empty(self) -> bool:
        return (self.slot is None and not self.publication_exists and self.positions_of is None
                and not self.topics and not self.indices)

    def render(self, done: bool = False) -> str:
        verb = (lambda did, _would: did) if done else (lambda _did, would: would)
        out: list[str] = []
        if self.slot_name is not None:
            if self.slot is None:
                out.append(f"replication slot {self.slot_name}: not there")
            else:
                wal = _size(self.slot.retained_wal_bytes)
                out.append(f"{verb('dropped', 'would drop')} replication slot {self.slot.name} "
                           f"(it retains {wal} of WAL)")
        if self.publication is not None:
            out.append(f"{verb('dropped', 'would drop')} publication {self.publication}"
                       if self.publication_exists else
                       f"publication {self.publication}: not there")
        if self.positions_of is not None:
            out.append(f"{verb('forgot', 'would forget')} the positions of {self.positions_of} "
                       "kept in Kafka")
        out += [f"{verb('deleted', 'would delete')} topic {t}" for t in self.topics]
        out += [f"topic {t}: not there" for t in self.topics_missing]
        out += [f"{verb('deleted', 'would delete')} index {i}" for i in self.indices]
        out += [f"index {i}: not there" for i in self.indices_missing]
        return "\n".join([*out, *self.notes])


def _size(n: int) -> str:
    size = float(n)
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} bytes"


def owned_topics(settings: Settings) -> list[str]:
    """The topics this pipeline writes for the configured tables: the raw topics, the
    logical source's message, transaction and heartbeat topics, the new-record-state
    sinks' topics, the dead-letter topic and each sink's dedup changelog (not the offsets
    topic: it is shared by every source)."""
    from pipeline.sinks.registry import sink_names

    prefix = settings.kafka.topic_prefix
    topics = [*settings.raw_topics()]
    if settings.capture.source == "logical":
        topics += [f"{prefix}.message", f"{prefix}.transaction",
                   f"__debezium-heartbeat.{prefix}"]
    for entry in settings.sinks.values():  # new-record-state copies of the raw topics
        if entry.get("type") == "new_record_state":
            suffix = str(entry.get("topic_suffix", ".rows"))
            topics += [settings.kafka.raw_topic(t) + suffix for t in settings.captured_tables()]
    topics.append(settings.worker.dead_letter_topic)
    topics += [f"{settings.group_id(name)}-dedup-changelog" for name in sink_names(settings)]
    return list(dict.fromkeys(topics))


def owned_indices(settings: Settings) -> list[str]:
    """The search indices of the configured tables (none without an elasticsearch sink)."""
    es = settings.elasticsearch
    if es is None:
        return []
    names = [es.index_for(t) for t in settings.captured_tables()]
    names.append(f"{es.index_prefix}cdc-truncates".lower())  # the sink's truncate registry
    return list(dict.fromkeys(names))


def plan(settings: Settings, topics: bool = False, indices: bool = False) -> TeardownPlan:
    """Read what exists (slot, publication, topics, indices); changes nothing."""
    source = settings.capture.source
    p = TeardownPlan(source=source)
    if source == "logical":
        p.slot_name, p.publication = settings.postgres.slot, settings.postgres.publication
        p.slot, p.publication_exists = _slot_and_publication(settings)
        p.positions_of = f"postgres slot {settings.postgres.slot}"
    elif source == "triggers":
        p.notes.append("capture.source is triggers: the change log and its triggers are "
                       "dropped by `cdc triggers uninstall` (it asks first)")
    else:
        p.positions_of = f"the {source} source"
    if topics:
        existing = _existing_topics(settings)
        for name in owned_topics(settings):
            (p.topics if name in existing else p.topics_missing).append(name)
        p.running_groups = _groups_with_members(settings)
    if indices:
        if settings.elasticsearch is None:
            p.notes.append("no elasticsearch section: no search index to delete")
        for name in owned_indices(settings):
            (p.indices if _index_exists(settings, name) else p.indices_missing).append(name)
    return p


def execute(settings: Settings, p: TeardownPlan) -> None:
    """Drop what ``p`` found; refuses (SlotInUseError) while a capture reads the slot."""
    refusal = p.refusal()
    if refusal is not None:
        raise SlotInUseError(refusal)
    if p.slot is not None or p.publication_exists:
        _drop_slot_and_publication(settings, p)
    if p.positions_of is not None:
        from pipeline.compose import build_source
        from pipeline.metrics import Metrics

        build_source(settings, Metrics("teardown")).forget_positions()
    if p.topics:
        _delete_topics(settings, p.topics)
    for name in p.indices:
        _delete_index(settings, name)


# ---------------------------------------------------------------- PostgreSQL


def _pg(settings: Settings) -> Any:
    from pipeline.sources.postgres.slot import connect

    conn = connect(settings.postgres.dsn.get_secret_value())
    conn.autocommit = True
    return conn


def _slot_and_publication(settings: Settings) -> tuple[SlotState | None, bool]:
    from pipeline.sources.postgres.slot import translate

    pg = settings.postgres
    conn = _pg(settings)
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT active_pid, coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), "
                "restart_lsn), 0)::bigint FROM pg_replication_slots WHERE slot_name = %s",
                (pg.slot,))
            row = cur.fetchone()
            cur.execute("SELECT 1 FROM pg_publication WHERE pubname = %s", (pg.publication,))
            published = cur.fetchone() is not None
    except psycopg2.Error as exc:
        raise translate(exc, "reading the replication slot") from exc
    finally:
        conn.close()
    slot = None if row is None else SlotState(pg.slot, row[0], int(row[1]))
    return slot, published


def _drop_slot_and_publication(settings: Settings, p: TeardownPlan) -> None:
    from pipeline.sources.postgres.slot import translate

    pg = settings.postgres
    conn = _pg(settings)
    try:
        with conn.cursor() as cur:
            if p.slot is not None:
                # Only if still inactive: a capture started since the plan keeps its slot.
                cur.execute("SELECT pg_drop_replication_slot(slot_name) FROM "
                            "pg_replication_slots WHERE slot_name = %s", (pg.slot,))
            cur.execute(sql.SQL("DROP PUBLICATION IF EXISTS {}").format(
                sql.Identifier(pg.publication)))
    except psycopg2.errors.ObjectInUse as exc:
        raise SlotInUseError(f"replication slot '{pg.slot}' is in use by a capture started "
                             f"meanwhile: stop `cdc capture` first ({exc})".strip()) from exc
    except psycopg2.Error as exc:
        raise translate(exc, "dropping the replication slot and publication") from exc
    finally:
        conn.close()


# ---------------------------------------------------------------- Kafka


def _admin(settings: Settings) -> Any:
    from confluent_kafka.admin import AdminClient

    return AdminClient(client_config(settings.kafka))


def _existing_topics(settings: Settings) -> set[str]:
    return set(list_topics(_admin(settings), 10).topics)


def _groups_with_members(settings: Settings) -> list[str]:
    """The sinks' consumer groups that have members now (workers running): those Kafka
    lists as stable or rebalancing (an empty group has none)."""
    from confluent_kafka import ConsumerGroupState, KafkaException

    from pipeline.sinks.registry import sink_names

    groups = {settings.group_id(name) for name in sink_names(settings)}
    if not groups:
        return []
    live = {ConsumerGroupState.STABLE, ConsumerGroupState.PREPARING_REBALANCING,
            ConsumerGroupState.COMPLETING_REBALANCING}
    admin = _admin(settings)  # held: a client destroyed meanwhile answers nothing
    try:
        listed = admin.list_consumer_groups(states=live).result(timeout=30)
        errors = [str(e) for e in listed.errors]
    except (KafkaException, TimeoutError) as exc:  # the cluster is not answering
        listed, errors = None, [str(exc)]
    if errors:
        log.warning("could not tell whether workers are running (%s): stop them before "
                    "deleting their topics", "; ".join(errors))
    return [] if listed is None else sorted(g.group_id for g in listed.valid
                                            if g.group_id in groups)


def _delete_topics(settings: Settings, topics: list[str]) -> None:
    from confluent_kafka import KafkaError, KafkaException

    admin = _admin(settings)  # held until every future is done (else they fail: _DESTROY)
    futures = admin.delete_topics(topics, operation_timeout=30)
    failed = []
    for name, future in futures.items():
        try:
            future.result()
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            if isinstance(error, KafkaError) and \
                    error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
                continue  # gone meanwhile: what was asked for
            failed.append(f"{name}: {exc}")
    if failed:
        raise RetriableError("could not delete topics: " + "; ".join(failed))


# ---------------------------------------------------------------- search index


def _http(settings: Settings) -> Any:
    import httpx

    es = settings.elasticsearch
    assert es is not None
    auth = None if es.username is None or es.password is None else (
        es.username, es.password.get_secret_value())
    return httpx.Client(base_url=es.url.rstrip("/"), timeout=es.timeout_s, auth=auth)


def _index_exists(settings: Settings, name: str) -> bool:
    return _index_call(settings, "HEAD", name) == 200


def _delete_index(settings: Settings, name: str) -> None:
    """Delete an index; a name that is an alias (the search sink's versioned indices,
    ``<name>_vN``) deletes the indices behind it."""
    import httpx

    try:
        with _http(settings) as client:
            response = client.get(f"/_alias/{name}")
    except httpx.HTTPError as exc:
        raise RetriableError(f"search index {name}: {exc}") from exc
    behind = list(response.json()) if response.status_code == 200 else []
    for index in behind or [name]:
        _index_call(settings, "DELETE", index)


def _index_call(settings: Settings, method: str, name: str) -> int:
    import httpx

    try:
        with _http(settings) as client:
            response = client.request(method, f"/{name}")
    except httpx.HTTPError as exc:
        raise RetriableError(f"search index {name}: {exc}") from exc
    if response.status_code == 404 or response.status_code < 300:
        return response.status_code
    if response.status_code in (401, 403):
        raise PermanentError(f"search index {name}: refused ({response.status_code}): "
                             "check elasticsearch.username/password and the role's rights")
    raise CdcError(f"search index {name}: {method} answered {response.status_code}: "
                   f"{response.text[:200]}")
