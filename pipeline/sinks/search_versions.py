"""Index versions behind an alias: the search sink writes to ``<index>``, an alias of the
concrete index ``<index>_v<N>``.

A new index is created as ``<index>_v1`` with the mapping of ``search_mapping``. When a
column's type changes and Elasticsearch refuses its new values, the next version is created
with that field widened, the current one is made read-only, every document is copied with
its external version, and in one atomic ``_aliases`` call the old version is deleted and the
alias moved. Writes the read-only version refuses meanwhile are retried (never
dead-lettered) and land in the new version.

An index created before this scheme (a concrete ``<index>``, no alias) keeps being written
as it is; its first type conflict migrates it to ``<index>_v2`` behind the alias ``<index>``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx
import orjson

from pipeline.errors import SinkUnavailableError
from pipeline.sinks import search_mapping as mapping
from pipeline.sinks.search_errors import raise_for_status

log = logging.getLogger(__name__)

Send = Callable[[str, str, bytes | None], Awaitable[httpx.Response]]


def segment(name: str) -> str:
    """An index name as one URL path segment. Configured names are valid index names
    already (``pipeline.config``); escaping keeps any other name from reaching another
    API (``/``, ``?``, ``#``) or several indices (``,``)."""
    return quote(name, safe="")

_COPY_PAGE = 500


@dataclass
class IndexState:
    """What the sink knows of one index name: whether it is our alias, and which top-level
    fields are mapped already."""

    alias: bool
    mapped: set[str] = field(default_factory=set)


class IndexVersions:
    """Creates, maps and migrates the versioned indices behind each index name."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self._known: dict[str, IndexState] = {}

    async def ensure(self, name: str) -> IndexState:
        """The index named ``name`` exists (as ``<name>_v1`` behind the alias if new)."""
        state = self._known.get(name)
        if state is not None:
            return state
        found = await self._current(name)
        if found is None:
            body = {"mappings": mapping.INDEX_MAPPINGS, "aliases": {name: {}}}
            response = await self._send("PUT", f"/{segment(name + '_v1')}", orjson.dumps(body))
            if "resource_already_exists" not in response.text:
                # 400 for a name Elasticsearch refuses (a table named "my items"): bad data
                # of that table's rows, not an outage; elasticsearch.indices can rename it
                raise_for_status(response, f"creating index {name}_v1")
            found = await self._current(name)
            if found is None:
                raise SinkUnavailableError(f"index {name} vanished right after its creation")
        concrete, mappings = found
        state = IndexState(alias=concrete != name, mapped=set(mappings.get("properties") or {}))
        self._known[name] = state
        return state

    def forget(self, name: str) -> None:
        """Drop what is known of ``name`` (it was deleted, or is no longer an alias)."""
        self._known.pop(name, None)

    async def put_fields(self, name: str, fields: dict[str, dict[str, Any]]) -> None:
        """Map new top-level fields before documents bring them. A refusal means another
        writer mapped one first; the documents then meet that mapping (and may migrate)."""
        response = await self._send(
            "PUT", f"/{segment(name)}/_mapping", orjson.dumps({"properties": fields}))
        if response.status_code >= 500 or response.status_code == 429:
            raise SinkUnavailableError(f"could not map fields of {name}: {response.text[:300]}")
        if response.status_code >= 300:
            log.info("fields of %s not mapped ahead (%s)", name, response.text[:200])
        self._known.setdefault(name, IndexState(alias=True)).mapped.update(fields)

    async def drop(self, name: str) -> None:
        """Delete every version behind ``name`` (a truncated table)."""
        response = await self._send("GET", f"/_alias/{segment(name)}", None)
        concrete = sorted(orjson.loads(response.content)) if response.status_code == 200 else []
        target = ",".join(segment(c) for c in concrete) or segment(name)
        response = await self._send("DELETE", f"/{target}", None)
        self.forget(name)
        if response.status_code not in (200, 404):
            raise SinkUnavailableError(f"could not delete index {name}: {response.text[:200]}")

    async def migrate(self, name: str, path: str, values: list[Any]) -> bool:
        """Move ``name`` to a new version whose field ``path`` takes ``values`` as well as
        what it holds. False when no wider mapping exists (the values are then bad data)."""
        found = await self._current(name)
        if found is None:
            return False
        old, mappings = found
        widened = mapping.widened(mapping.field_mapping(mappings, path), values)
        if widened is None:
            return False
        version = re.fullmatch(re.escape(name) + r"_v(\d+)", old)
        new = f"{name}_v{int(version.group(1)) + 1 if version else 2}"
        log.warning("index %s: field %s changed type; moving %s -> %s with %s",
                    name, path, old, new, widened)
        new_mappings = mapping.with_field(mappings, path, widened)
        created = await self._send("PUT", f"/{segment(new)}",
                                   orjson.dumps({"mappings": new_mappings}))
        if created.status_code >= 300 and "resource_already_exists" not in created.text:
            raise SinkUnavailableError(f"could not create index {new}: {created.text[:300]}")
        await self._block_writes(old, True)
        try:
            # A scroll sees what the last refresh made visible: without one, a document's
            # newest writes (up to refresh_interval old) would be left behind in ``old``.
            await self._refresh(old)
            await self._copy(old, new)
            actions = [{"remove_index": {"index": old}}, {"add": {"index": new, "alias": name}}]
            moved = await self._send("POST", "/_aliases", orjson.dumps({"actions": actions}))
            if moved.status_code >= 300:
                raise SinkUnavailableError(f"could not move alias {name}: {moved.text[:300]}")
        except BaseException:
            await self._block_writes(old, False)
            raise
        self._known[name] = IndexState(alias=True, mapped=set(new_mappings["properties"]))
        return True

    async def _current(self, name: str) -> tuple[str, dict[str, Any]] | None:
        """The concrete index behind ``name`` and its mappings; None if there is none."""
        response = await self._send("GET", f"/{segment(name)}/_mapping", None)
        if response.status_code == 404:
            return None
        if response.status_code >= 300:
            raise SinkUnavailableError(f"could not read mapping of {name}: {response.text[:300]}")
        found = orjson.loads(response.content)
        concrete = sorted(found)[-1]  # one, unless an operator added more to the alias
        return concrete, dict(found[concrete].get("mappings") or {})

    async def _block_writes(self, index: str, blocked: bool) -> None:
        body = orjson.dumps({"index.blocks.write": blocked})
        response = await self._send("PUT", f"/{segment(index)}/_settings", body)
        if response.status_code >= 300:
            raise SinkUnavailableError(
                f"could not {'block' if blocked else 'unblock'} writes to {index}: "
                f"{response.text[:300]}")

    async def _refresh(self, index: str) -> None:
        response = await self._send("POST", f"/{segment(index)}/_refresh", None)
        if response.status_code >= 300:
            raise SinkUnavailableError(f"could not refresh {index}: {response.text[:300]}")

    async def _copy(self, old: str, new: str) -> None:
        """Every document of ``old`` into ``new`` with its version (what ``_reindex`` with
        ``version_type: external`` does; not every distribution has the reindex module)."""
        body = {"size": _COPY_PAGE, "sort": ["_doc"], "version": True}
        response = await self._send("POST", f"/{segment(old)}/_search?scroll=2m",
                                    orjson.dumps(body))
        page = self._json(response, f"read {old}")
        scroll_id = page.get("_scroll_id")
        try:
            while hits := page.get("hits", {}).get("hits", []):
                lines: list[bytes] = []
                for hit in hits:
                    meta = {"_index": new, "_id": hit["_id"], "version": hit["_version"],
                            "version_type": "external"}
                    lines += [orjson.dumps({"index": meta}), orjson.dumps(hit["_source"])]
                response = await self._send(
                    "POST", "/_bulk?filter_path=items.*.status,items.*.error",
                    b"\n".join(lines) + b"\n")
                for item in self._json(response, f"copy into {new}").get("items", []):
                    ((_, result),) = item.items()
                    if int(result.get("status", 500)) not in (200, 201, 409):
                        raise SinkUnavailableError(
                            f"could not copy a document into {new}: {result.get('error')}")
                response = await self._send(
                    "POST", "/_search/scroll",
                    orjson.dumps({"scroll": "2m", "scroll_id": scroll_id}))
                page = self._json(response, f"read {old}")
                scroll_id = page.get("_scroll_id", scroll_id)
        finally:
            if scroll_id:
                await self._send("DELETE", "/_search/scroll",
                                 orjson.dumps({"scroll_id": scroll_id}))

    @staticmethod
    def _json(response: httpx.Response, what: str) -> dict[str, Any]:
        if response.status_code >= 300:
            raise SinkUnavailableError(f"could not {what}: {response.text[:300]}")
        return dict(orjson.loads(response.content))
