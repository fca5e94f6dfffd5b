"""Truncates in the search index: by position, so no row written before one survives and
no row written after one is lost, whatever the partition layout or number of workers.

A truncate reaches every worker of the sink: our capture writes one copy of it to each
partition of the table's topic, so each worker applies it in order with its own rows. Applying
it means:

1. Record the truncate's position for the index in a small registry index
   (``<index_prefix>cdc-truncates``, one document per index, versioned externally by the
   position, so only a higher position replaces a lower one). Every write of every worker
   checks it (re-read at most every ``REFRESH_S``): a change older than the newest truncate
   of its table is stale and dropped. That covers replays and Debezium's topics, where a
   truncate travels on one partition only.
2. Delete every document of the index with the truncate's position as the delete's external
   version. Elasticsearch applies a versioned delete only to a document with a lower
   version: rows written before the truncate go, rows another worker already wrote after it
   stay, and the delete's tombstone refuses late writes older than the truncate.

Elasticsearch cannot query ``_version`` and this distribution has no delete-by-query, so the
documents are walked with a scroll (ids only) and deleted with ``_bulk``.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import httpx
import orjson

from pipeline.errors import SinkUnavailableError
from pipeline.sinks.search_versions import segment

Send = Callable[..., Awaitable[httpx.Response]]

#: How long a worker trusts its copy of the truncate positions (seconds).
REFRESH_S = 1.0
_PAGE = 1_000
_OK_DELETE = frozenset({200, 404, 409})  # deleted, already gone, or newer than the truncate


class TruncatePositions:
    """The newest truncate position per index, shared through Elasticsearch."""

    def __init__(self, send: Send, registry: str) -> None:
        self._send = send
        self.registry = registry
        self._positions: dict[str, int] = {}
        self._read_at: dict[str, float] = {}

    def position(self, index: str) -> int:
        """The newest truncate position known for ``index`` (-1: none)."""
        return self._positions.get(index, -1)

    async def refresh(self, indices: Iterable[str]) -> None:
        """Re-read the positions of ``indices`` not read within ``REFRESH_S``."""
        now = time.monotonic()
        stale = sorted(i for i in set(indices) if now - self._read_at.get(i, -1e9) >= REFRESH_S)
        if not stale:
            return
        response = await self._send("POST", f"/{segment(self.registry)}/_mget",
                                    orjson.dumps({"ids": stale}))
        if response.status_code == 404:  # no truncate recorded yet anywhere
            docs: list[dict[str, Any]] = []
        elif response.status_code >= 300:
            raise SinkUnavailableError(f"could not read truncate positions: "
                                       f"{response.text[:300]}")
        else:
            docs = orjson.loads(response.content).get("docs", [])
        for doc in docs:
            if doc.get("found"):
                position = int(doc["_source"]["position"])
                if position > self.position(doc["_id"]):
                    self._positions[doc["_id"]] = position
        for index in stale:
            self._read_at[index] = now

    async def truncate(self, index: str, position: int) -> None:
        """Apply a truncate of ``index`` at ``position`` (idempotent)."""
        await self._record(index, position)
        refreshed = await self._send("POST", f"/{segment(index)}/_refresh")
        if refreshed.status_code == 404:
            return  # nothing was ever written
        body = {"size": _PAGE, "sort": ["_doc"], "_source": False}
        page = await self._json("POST", f"/{segment(index)}/_search?scroll=1m", body)
        scroll_id = page.get("_scroll_id")
        try:
            while hits := page.get("hits", {}).get("hits", []):
                await self._delete(hits, position)
                page = await self._json("POST", "/_search/scroll",
                                        {"scroll": "1m", "scroll_id": scroll_id})
                scroll_id = page.get("_scroll_id", scroll_id)
        finally:
            if scroll_id:
                await self._send("DELETE", "/_search/scroll",
                                 orjson.dumps({"scroll_id": scroll_id}))

    async def _record(self, index: str, position: int) -> None:
        response = await self._send(
            "PUT", f"/{segment(self.registry)}/_doc/{segment(index)}"
                   f"?version={position}&version_type=external",
            orjson.dumps({"position": position}))
        if response.status_code >= 300 and response.status_code != 409:  # 409: newer kept
            raise SinkUnavailableError(f"could not record a truncate of {index}: "
                                       f"{response.text[:300]}")
        if position > self.position(index):
            self._positions[index] = position
        self._read_at[index] = time.monotonic()

    async def _delete(self, hits: list[dict[str, Any]], position: int) -> None:
        lines = [orjson.dumps({"delete": {"_index": hit["_index"], "_id": hit["_id"],
                                          "version": position,
                                          "version_type": "external"}}) for hit in hits]
        result = await self._json("POST", "/_bulk?filter_path=items.*.status,items.*.error",
                                  b"\n".join(lines) + b"\n")
        for item in result.get("items", []):
            ((_, outcome),) = item.items()
            if int(outcome.get("status", 500)) not in _OK_DELETE:
                raise SinkUnavailableError(f"could not delete a truncated document: "
                                           f"{outcome.get('error')}")

    async def _json(self, method: str, path: str, body: Any) -> dict[str, Any]:
        content = body if isinstance(body, bytes) else orjson.dumps(body)
        response = await self._send(method, path, content)
        if response.status_code >= 300:
            raise SinkUnavailableError(f"Elasticsearch {method} {path} answered "
                                       f"{response.status_code}: {response.text[:300]}")
        return dict(orjson.loads(response.content))
