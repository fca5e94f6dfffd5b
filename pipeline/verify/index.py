"""The index side of ``cdc verify``: documents by id (``_mget``, real-time), every id of an
index in bounded pages (a point in time, ``search_after`` on ``_shard_doc``), and the
deletes a repair makes. Synchronous: verify is one process reading at its own pace."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import httpx
import orjson

from pipeline.config import ElasticsearchSettings
from pipeline.errors import PermanentError, SinkUnavailableError
from pipeline.sinks.search_versions import segment

Document = dict[str, Any]


class IndexMissing(PermanentError):
    """The table has no index yet (capture and a search worker have not written it)."""


class SearchIndex:
    """One Elasticsearch cluster, read for verifying."""

    def __init__(self, settings: ElasticsearchSettings,
                 client: httpx.Client | None = None) -> None:
        auth = None
        if settings.username and settings.password:
            auth = (settings.username, settings.password.get_secret_value())
        self.url = settings.url
        self.client = client or httpx.Client(base_url=settings.url.rstrip("/"),
                                             timeout=settings.timeout_s, auth=auth)

    def close(self) -> None:
        self.client.close()

    def _call(self, method: str, path: str, body: Any = None) -> httpx.Response:
        try:
            content = None if body is None else orjson.dumps(body)
            return self.client.request(method, path, content=content,
                                       headers={"content-type": "application/json"})
        except httpx.HTTPError as exc:
            raise SinkUnavailableError(
                f"Elasticsearch at {self.url} is unreachable ({type(exc).__name__}: {exc}); "
                "check elasticsearch.url and that it is running") from exc

    def _json(self, response: httpx.Response, what: str) -> dict[str, Any]:
        if response.status_code >= 300:
            raise SinkUnavailableError(
                f"Elasticsearch refused to {what} (HTTP {response.status_code}): "
                f"{response.text[:300]}")
        return dict(orjson.loads(response.content))

    def check(self, index: str, table: str) -> int:
        """The number of documents in ``index``; IndexMissing when there is none."""
        response = self._call("GET", f"/{segment(index)}/_count")
        if response.status_code == 404:
            raise IndexMissing(
                f"{table} has no index yet ({index} does not exist): start capture and a "
                "search worker (`cdc worker --sink search`) and let them write it first; "
                "a table added to the capture after its start gets its existing rows only "
                f"from `cdc snapshot start {table}`")
        return int(self._json(response, f"count {index}")["count"])

    def documents(self, index: str, ids: Sequence[str]) -> dict[str, Document | None]:
        """The documents of ``ids`` (None: not found), read in real time."""
        if not ids:
            return {}
        found = self._json(self._call("POST", f"/{segment(index)}/_mget",
                                      {"ids": list(ids)}), f"read documents of {index}")
        out: dict[str, Document | None] = {}
        for doc in found.get("docs", []):
            out[doc["_id"]] = doc if doc.get("found") else None
        return out

    def ids(self, index: str, columns: Sequence[str], page: int
            ) -> Iterator[dict[str, dict[str, Any]]]:
        """Every document of ``index``, ``page`` at a time: id -> its ``columns`` (the key
        as the document holds it). A point in time keeps the pages consistent with each
        other; ``_shard_doc`` is the one sort that needs no field."""
        opened = self._json(self._call("POST", f"/{segment(index)}/_pit?keep_alive=2m"),
                            f"open a point in time on {index}")
        pit = opened["id"]
        after: list[Any] | None = None
        try:
            while True:
                body: dict[str, Any] = {
                    "size": page, "pit": {"id": pit, "keep_alive": "2m"},
                    "sort": [{"_shard_doc": "asc"}], "_source": list(columns),
                    "track_total_hits": False}
                if after is not None:
                    body["search_after"] = after
                hits = self._json(self._call("POST", "/_search", body),
                                  f"read ids of {index}")["hits"]["hits"]
                if not hits:
                    return
                yield {h["_id"]: dict(h.get("_source") or {}) for h in hits}
                after = hits[-1]["sort"]
        finally:
            self._call("DELETE", "/_pit", {"id": pit})

    def delete(self, index: str, doc_id: str, seq_no: int, primary_term: int) -> bool:
        """Delete a document if it is still what verify read (``if_seq_no``): False when it
        changed meanwhile (the stream wrote it; it is no longer drift)."""
        response = self._call(
            "DELETE", f"/{segment(index)}/_doc/{segment(doc_id)}"
            f"?if_seq_no={seq_no}&if_primary_term={primary_term}&refresh=false")
        if response.status_code in (404, 409):
            return False
        self._json(response, f"delete {doc_id} from {index}")
        return True

    def refresh(self, index: str) -> None:
        self._json(self._call("POST", f"/{segment(index)}/_refresh"), f"refresh {index}")

    def gc_deletes_s(self, index: str) -> float:
        """How long (s) the index keeps a delete's tombstone (``index.gc_deletes``)."""
        found = self._json(self._call(
            "GET", f"/{segment(index)}/_settings/index.gc_deletes?include_defaults=true"),
            f"read settings of {index}")
        longest = 0.0
        for settings in found.values():
            for group in ("settings", "defaults"):
                value = settings.get(group, {}).get("index", {}).get("gc_deletes")
                if value is not None:
                    longest = max(longest, _seconds(str(value)))
                    break
        return longest


def _seconds(value: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
    for unit in ("ms", "s", "m", "h", "d"):
        if value.endswith(unit) and value[:-len(unit)].replace(".", "", 1).isdigit():
            return float(value[:-len(unit)]) * units[unit]
    return float(value) / 1000 if value.isdigit() else 60.0
