"""The search-index sink: Elasticsearch (or OpenSearch) ``_bulk`` with external versioning.

Each row is one document, its id made from the primary key, its version the change's source
position (LSN). A batch is reduced to one write per document first (``search_batch``).
Elasticsearch refuses a write whose version is not higher than the stored one, so a replayed
or late event can never overwrite newer state; the refusal (409) means "already applied" and
counts as success. Deletes are versioned too: the tombstone keeps a
late create from resurrecting the row (for ``index.gc_deletes``, 60 s by default).

An unchanged TOAST column arrives as a placeholder. Before indexing, such a column is
filled from the newest image of the same row earlier in the batch, else from the stored
document; if neither has it, the column is left out: the placeholder is never stored.

What Elasticsearch answers is classified in ``search_errors``. A document it refuses is
dead-lettered with its reason, whether the refusal comes per document or for the whole
``_bulk`` (then the request is split until the refusing document is alone); documents it
throttles (429) are sent again; an outage raises ``SinkUnavailableError``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Sequence
from typing import Any

import httpx
import orjson

from pipeline.config import ElasticsearchSettings
from pipeline.errors import PermanentError, SinkRejectedError, SinkUnavailableError
from pipeline.events import COLUMN_TYPES, ChangeEvent, Row
from pipeline.sinks import search_errors, search_mapping
from pipeline.sinks.base import Rejection
from pipeline.sinks.search_batch import (
    DocumentWrites,
    Latest,
    Slot,
    bulk_actions,
    missing_columns,
)
from pipeline.sinks.search_errors import ElasticsearchRefused, Outcome
from pipeline.sinks.search_truncates import TruncatePositions
from pipeline.sinks.search_versions import IndexVersions

log = logging.getLogger(__name__)


#: Starts every id made by hashing; a key whose plain id starts with it is hashed too, so
#: plain and hashed ids can never meet.
HASHED_ID_PREFIX = "#sha256:"
#: How many type changes one flush may migrate before a refused document is dead-lettered.
MAX_MIGRATIONS_PER_FLUSH = 3
#: Elasticsearch refuses an ``_id`` longer than this (in UTF-8 bytes), or an empty one.
MAX_ID_BYTES = 512
#: Pauses before sending documents Elasticsearch throttled (429) again; after the last, the
#: batch is given back as unavailable (and retried with the sink's backoff).
THROTTLE_DELAYS_S = (0.1, 0.3, 1.0, 3.0)



def document_id(key: Row) -> str:
    """The document id for a primary key: the value itself for a one-column key, else a
    JSON array of the values in key order (unambiguous, unlike joining with a separator).

    An id Elasticsearch would refuse (empty, over 512 bytes), or one that starts with
    ``HASHED_ID_PREFIX``, becomes that prefix and the SHA-256 of the plain id instead: still
    one id per key, and the key itself stays readable in the document's columns.
    """
    if len(key) == 1:
        (value,) = key.values()
        plain = str(value)
    else:
        plain = orjson.dumps(list(key.values())).decode()
    encoded = plain.encode()
    if not encoded or len(encoded) > MAX_ID_BYTES or plain.startswith(HASHED_ID_PREFIX):
        return HASHED_ID_PREFIX + hashlib.sha256(encoded).hexdigest()
    return plain


class SearchIndexSink:
    """Writes change events to one index per table with ``_bulk``."""

    name = "search"
    #: Versioned writes refuse a stale read; its columns fill what the document never had.
    takes_stale_reads = True

    def __init__(self, settings: ElasticsearchSettings, client: httpx.AsyncClient | None = None):
        self.settings = settings
        auth = None
        if settings.username and settings.password:
            auth = (settings.username, settings.password.get_secret_value())
        self.client = client or httpx.AsyncClient(
            base_url=settings.url.rstrip("/"), timeout=settings.timeout_s, auth=auth
        )
        self.throttle_delays_s: Sequence[float] = THROTTLE_DELAYS_S
        self.versions = IndexVersions(self._send)
        self.truncates = TruncatePositions(
            self._send, f"{settings.index_prefix}cdc-truncates".lower())

    async def close(self) -> None:
        await self.client.aclose()

    async def write(self, batch: Sequence[ChangeEvent]) -> list[Rejection]:
        rejected: list[Rejection] = []
        writes = DocumentWrites()  # the batch, one write per document
        index_for = self.settings.index_for
        await self.truncates.refresh({index_for(e.table_id) for e in batch})
        for i, event in enumerate(batch):
            index = index_for(event.table_id)
            if event.op == "t":
                await self._flush(writes.latest, batch, rejected)
                writes = DocumentWrites()
                await self.truncates.truncate(index, event.version)
                continue
            if event.key is None:
                rejected.append(Rejection(i, SinkRejectedError("event has no key", sink=self.name)))
                continue
            if (event.source.lsn or 0) < self.truncates.position(index):
                continue  # written before a truncate of its table: must not come back
            writes.add(i, event, (index, document_id(event.key)))
        await self._flush(writes.latest, batch, rejected)
        return rejected

    async def _flush(
        self,
        latest: Latest,
        batch: Sequence[ChangeEvent],
        rejected: list[Rejection],
        migrations_left: int = MAX_MIGRATIONS_PER_FLUSH,
        throttled_before: int = 0,
    ) -> None:
        if not latest:
            return
        await self._fill_unchanged_toast(latest)
        aliases = await self._map_new_fields(latest)
        actions = bulk_actions(latest, aliases)
        items = await self._bulk_items(actions)
        conflicts: dict[tuple[str, str], list[tuple[int, Slot, str]]] = {}
        throttled: Latest = {}
        reads_refused: dict[Slot, Row] = {}
        for slot, item in zip(latest, items, strict=True):
            i = latest[slot][0]
            (action, result), = item.items()
            outcome = search_errors.item_outcome(action, result)
            if outcome is Outcome.APPLIED:
                if result.get("status") == 409 and latest[slot][1].op == "r":
                    reads_refused[slot] = latest[slot][2] or {}
                continue
            error = result.get("error") or {}
            reason = search_errors.shorten(
                f"{error.get('type', result.get('status'))}: {error.get('reason', '')}")
            if outcome is Outcome.THROTTLED:
                throttled[slot] = latest[slot]
            elif outcome is Outcome.UNAVAILABLE:
                raise SinkUnavailableError(f"Elasticsearch could not apply a write: {reason}")
            elif outcome is Outcome.INDEX_GONE:
                self.versions.forget(slot[0])  # deleted under us (a truncate): create it again
                raise SinkUnavailableError(f"index {slot[0]} is gone: {reason}")
            elif outcome is Outcome.FORBIDDEN:
                raise PermanentError(f"Elasticsearch refused a write to {slot[0]} "
                                     f"(rights of elasticsearch.username): {reason}")
            elif (result.get("status") == 400 and migrations_left > 0
                  and not result.get("request_refused")  # an action, not a value
                  and (field := search_mapping.conflicting_field(error)) is not None):
                conflicts.setdefault((slot[0], field), []).append((i, slot, reason))
            else:
                rejected.append(Rejection(i, SinkRejectedError(reason, sink=self.name)))
        if reads_refused:
            await self._fill_from_reads(reads_refused)
        for (index, field), refused in conflicts.items():
            docs = [latest[slot][2] or {} for _, slot, _ in refused]
            values = [v for doc in docs for v in search_mapping.field_values(doc, field)]
            if await self.versions.migrate(index, field, values):
                await self._flush({slot: latest[slot] for _, slot, _ in refused}, batch,
                                  rejected, migrations_left - 1)
            else:
                rejected.extend(
                    Rejection(i, SinkRejectedError(
                        f"{reason} (no wider mapping takes it)", sink=self.name))
                    for i, _, reason in refused)
        if throttled:
            if throttled_before >= len(self.throttle_delays_s):
                raise SinkUnavailableError(
                    f"Elasticsearch kept throttling {len(throttled)} document(s) (429)")
            await asyncio.sleep(self.throttle_delays_s[throttled_before])
            await self._flush(throttled, batch, rejected, migrations_left, throttled_before + 1)

    async def _fill_from_reads(self, reads: dict[Slot, Row]) -> None:
        """A snapshot read older than the stored document (409) still carries every column.
        Columns the document never had (an update whose unchanged TOAST values PostgreSQL did
        not send, for a row first written by it) are filled from it: no later change touched
        them, or it would have sent them. Each fill is conditional on the document not having
        changed since it was read (``if_seq_no``); one that did is left to its newer write."""
        slots = list(reads)
        body = {"docs": [{"_index": index, "_id": doc_id} for index, doc_id in slots]}
        response = await self._request("POST", "/_mget", content=orjson.dumps(body))
        lines: list[bytes] = []
        for slot, found in zip(slots, response.get("docs", []), strict=False):
            stored = found.get("_source") if found.get("found") else None
            if stored is None:
                continue  # deleted meanwhile
            absent = {k: v for k, v in reads[slot].items() if k not in stored}
            if not absent:
                continue
            meta = {"_index": found["_index"], "_id": slot[1], "if_seq_no": found["_seq_no"],
                    "if_primary_term": found["_primary_term"]}
            lines += [orjson.dumps({"update": meta}), orjson.dumps({"doc": absent})]
        if not lines:
            return
        for item in await self._bulk(b"\n".join(lines) + b"\n"):
            (_, result), = item.items()
            status = int(result.get("status", 500))
            if status in (429,) or status >= 500:
                raise SinkUnavailableError(f"filling columns from snapshot reads: {result}")
            if status >= 300 and status not in (404, 409):  # gone, or changed meanwhile
                log.warning("could not fill absent columns from a snapshot read: %s", result)

    async def _bulk_items(self, actions: list[tuple[str, list[bytes]]]) -> list[dict[str, Any]]:
        """One ``_bulk`` item result per action. A request Elasticsearch refuses as a whole
        (400: one document's action is invalid, say an id over 512 bytes or a negative
        version; 413: too large) is split in halves until the refusing action is alone; its
        refusal is then its result, so only that document is dead-lettered."""
        body = b"\n".join(line for _, lines in actions for line in lines) + b"\n"
        try:
            items = await self._bulk(body)
        except ElasticsearchRefused as exc:
            if len(actions) == 1:
                error = {"type": exc.kind, "reason": f"{exc.reason} (HTTP {exc.status} for "
                                                     "the whole _bulk)"}
                return [{actions[0][0]: {"status": exc.status, "error": error,
                                         "request_refused": True}}]
            log.info("Elasticsearch refused a _bulk of %d documents (%s); splitting it",
                     len(actions), exc)
            mid = len(actions) // 2
            return await self._bulk_items(actions[:mid]) + await self._bulk_items(actions[mid:])
        if len(items) != len(actions):
            raise SinkUnavailableError(
                f"Elasticsearch answered {len(items)} results for {len(actions)} documents")
        return items

    async def _map_new_fields(
        self, latest: Latest
    ) -> set[str]:
        """Create missing indices, and map columns they have not seen from the columns'
        types (when events carry them) or values. Returns the indices that are aliases."""
        states = {}
        for index, _ in latest:
            if index not in states:
                states[index] = await self.versions.ensure(index)
        # Values only of the columns not mapped yet: once a table's columns are mapped (every
        # batch after its first), nothing is collected per document.
        columns: dict[str, dict[str, list[Any]]] = {index: {} for index in states}
        types: dict[str, dict[str, dict[str, Any]]] = {}
        for (index, _), (_, event, doc) in latest.items():
            if doc is None:
                continue
            mapped = states[index].mapped
            if mapped.issuperset(doc):
                continue
            values = columns[index]
            for column, value in doc.items():
                if column not in mapped:
                    values.setdefault(column, []).append(value)
            types.setdefault(index, {}).update(event.extra.get(COLUMN_TYPES) or {})
        aliases = set()
        for index, values in columns.items():
            state = states[index]
            if state.alias:
                aliases.add(index)
            fields = {}
            for column in values:
                known = types.get(index, {}).get(column)
                decided = (search_mapping.mapping_for_type(known) if known else None) or (
                    search_mapping.mapping_for_values(values[column]))
                if decided is not None:
                    fields[column] = decided
            if fields:
                await self.versions.put_fields(index, fields)
        return aliases

    async def _fill_unchanged_toast(
        self, latest: Latest
    ) -> None:
        wanted = [slot for slot, (_, _, doc) in latest.items() if doc and missing_columns(doc)]
        if not wanted:
            return
        body = {"docs": [{"_index": index, "_id": doc_id} for index, doc_id in wanted]}
        response = await self._request("POST", "/_mget", content=orjson.dumps(body))
        for slot, found in zip(wanted, response.get("docs", []), strict=False):
            doc = latest[slot][2]
            assert doc is not None
            stored = found.get("_source") if found.get("found") else None
            for column in missing_columns(doc):
                if stored is not None and column in stored:
                    doc[column] = stored[column]
                else:
                    del doc[column]  # unknown: leave it out rather than store the placeholder

    async def _bulk(self, body: bytes) -> list[dict[str, Any]]:
        # Only what the outcome needs: Elasticsearch writes (and we parse) far less.
        response = await self._send(
            "POST", "/_bulk?filter_path=items.*.status,items.*.error", content=body)
        search_errors.raise_for_status(response, "_bulk")
        return list(orjson.loads(response.content).get("items", []))

    async def _request(self, method: str, path: str, content: bytes) -> dict[str, Any]:
        response = await self._send(method, path, content)
        search_errors.raise_for_status(response, f"{method} {path}")
        return dict(orjson.loads(response.content))

    async def _send(self, method: str, path: str, content: bytes | None = None) -> httpx.Response:
        try:
            response = await self.client.request(
                method, path, content=content,
                headers={"Content-Type": "application/x-ndjson"} if content else None,
            )
        except httpx.HTTPError as exc:
            raise SinkUnavailableError(f"Elasticsearch unreachable: {exc!r}") from exc
        if response.status_code in (401, 403) and (
                search_errors.refusal(response)[0] != "cluster_block_exception"):
            raise PermanentError(
                f"Elasticsearch refused the credentials (elasticsearch.username/password): "
                f"{response.text[:200]}"
            )
        return response
