"""SearchIndexSink against a fake Elasticsearch (httpx.MockTransport): external versioning,
document ids, 409 = already applied, bad data vs unavailable, unchanged TOAST columns."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from pipeline.config import ElasticsearchSettings
from pipeline.errors import PermanentError, SinkRejectedError, SinkUnavailableError
from pipeline.events import UNAVAILABLE_VALUE, ChangeEvent, SourceInfo
from pipeline.sinks.search import HASHED_ID_PREFIX, SearchIndexSink, document_id

INDEX = "cdc.public.products"


class FakeElasticsearch:
    """Just enough of Elasticsearch: indices with mappings and aliases, _bulk with external
    versions and ``require_alias``, _mget, DELETE /index (refused for an alias, as the real
    one does). Documents are kept per concrete index.

    ``item_hook(action, meta, source)`` may return a bulk item result to force a failure.
    Like the real one, a ``_bulk`` is refused as a whole (400) when one action has an id over
    512 bytes or a version outside 0..2^63-1, and (413) when over ``max_body_bytes``.
    """

    def __init__(self) -> None:
        self.docs: dict[str, dict[str, tuple[int, dict[str, Any]]]] = {}
        self.versions: dict[tuple[str, str], int] = {}  # includes delete tombstones
        self.mappings: dict[str, dict[str, Any]] = {}  # concrete index -> mappings
        self.aliases: dict[str, str] = {}  # alias -> concrete index
        self.requests: list[httpx.Request] = []
        self.bulk_actions: list[tuple[str, dict[str, Any], dict[str, Any] | None]] = []
        self.item_hook: Callable[[str, dict, dict | None], dict | None] | None = None
        self.status_override: int | None = None
        self.max_body_bytes: int | None = None
        self.registry: dict[str, dict[str, tuple[int, dict[str, Any]]]] = {}  # truncates

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def concrete(self, name: str) -> str:
        return self.aliases.get(name, name)

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.status_override is not None:
            return httpx.Response(self.status_override, json={"error": "overloaded"})
        path = request.url.path
        parts = path.strip("/").split("/")
        if request.method == "POST" and path == "/_bulk":
            refused = self._refuse_bulk(request.content)
            return refused or httpx.Response(200, json=self._bulk(request.content))
        if request.method == "POST" and parts[-1] == "_mget" and len(parts) == 2:
            docs = self.registry.get(parts[0])
            if docs is None:
                return httpx.Response(404, json={"error": {"type": "index_not_found_exception"}})
            ids = json.loads(request.content)["ids"]
            return httpx.Response(200, json={"docs": [
                {"_id": i, "found": True, "_source": docs[i][1]} if i in docs
                else {"_id": i, "found": False} for i in ids]})
        if request.method == "PUT" and len(parts) == 3 and parts[1] == "_doc":
            version = int(request.url.params["version"])
            docs = self.registry.setdefault(parts[0], {})
            if parts[2] in docs and docs[parts[2]][0] >= version:
                return httpx.Response(409, json={"error": {"type": "version_conflict"}})
            docs[parts[2]] = (version, json.loads(request.content))
            return httpx.Response(201, json={"result": "created"})
        if request.method == "POST" and parts[1:] == ["_refresh"]:
            found = self.concrete(parts[0]) in self.mappings
            return httpx.Response(200 if found else 404, json={})
        if request.method == "POST" and parts[1:] == ["_search"]:
            index = self.concrete(parts[0])
            hits = [{"_index": index, "_id": i} for i in self.docs.get(index, {})]
            return httpx.Response(200, json={"_scroll_id": "s1", "hits": {"hits": hits}})
        if path == "/_search/scroll":
            return httpx.Response(200, json={"_scroll_id": "s1", "hits": {"hits": []}})
        if request.method == "POST" and path == "/_mget":
            return httpx.Response(200, json=self._mget(json.loads(request.content)))
        if request.method == "GET" and parts[0] == "_alias":
            found = {c: {"aliases": {a: {}}} for a, c in self.aliases.items() if a == parts[1]}
            return httpx.Response(200 if found else 404, json=found or {"status": 404})
        if request.method == "GET" and parts[1:] == ["_mapping"]:
            index = self.concrete(parts[0])
            if index not in self.mappings:
                return httpx.Response(404, json={"error": {"type": "index_not_found_exception"}})
            return httpx.Response(200, json={index: {"mappings": self.mappings[index]}})
        if request.method == "PUT" and parts[1:] == ["_mapping"]:
            properties = self.mappings[self.concrete(parts[0])].setdefault("properties", {})
            properties.update(json.loads(request.content)["properties"])
            return httpx.Response(200, json={"acknowledged": True})
        if request.method == "PUT" and len(parts) == 1:
            if " " in parts[0]:
                return httpx.Response(400, json={"error": {
                    "type": "invalid_index_name_exception",
                    "reason": f"Invalid index name [{parts[0]}], must not contain ' '"}})
            if parts[0] in self.mappings:
                return httpx.Response(400, json={"error": {
                    "type": "resource_already_exists_exception"}})
            body = json.loads(request.content)
            self.mappings[parts[0]] = dict(body.get("mappings") or {})
            self.aliases.update({alias: parts[0] for alias in body.get("aliases") or {}})
            return httpx.Response(200, json={"acknowledged": True})
        if request.method == "DELETE" and len(parts) == 1:
            if any(name in self.aliases for name in parts[0].split(",")):
                return httpx.Response(400, json={"error": {
                    "type": "illegal_argument_exception", "reason": "matches an alias"}})
            gone = [name for name in parts[0].split(",") if name in self.mappings]
            if not gone:
                return httpx.Response(404, json={"error": {"type": "index_not_found_exception"}})
            for index in gone:
                self.mappings.pop(index)
                self.docs.pop(index, None)
                self.aliases = {a: c for a, c in self.aliases.items() if c != index}
                self.versions = {k: v for k, v in self.versions.items() if k[0] != index}
            return httpx.Response(200, json={"acknowledged": True})
        return httpx.Response(400, json={"error": f"unexpected {request.method} {path}"})

    def _refuse_bulk(self, body: bytes) -> httpx.Response | None:
        if self.max_body_bytes is not None and len(body) > self.max_body_bytes:
            return httpx.Response(413, text="")  # the real one answers 413 with no body
        lines = [json.loads(line) for line in body.splitlines() if line]
        i = 0
        while i < len(lines):
            ((action, meta),) = lines[i].items()
            i += 2 if action == "index" else 1
            problem = None
            if len(meta["_id"].encode()) > 512:
                problem = f"id [{meta['_id']}] is too long, must be no longer than 512 bytes"
            elif not 0 <= meta["version"] < 2 ** 63:
                problem = f"illegal version value [{meta['version']}] for version type [EXTERNAL]"
            if problem is not None:
                error = {"type": "action_request_validation_exception",
                         "reason": f"Validation Failed: 1: {problem};"}
                return httpx.Response(400, json={"error": {"root_cause": [error], **error},
                                                 "status": 400})
        return None

    def _bulk(self, body: bytes) -> dict[str, Any]:
        assert body.endswith(b"\n"), "a _bulk body must end with a newline"
        lines = [json.loads(line) for line in body.splitlines() if line]
        items = []
        i = 0
        while i < len(lines):
            ((action, meta),) = lines[i].items()
            source = None
            if action == "index":
                source = lines[i + 1]
                i += 2
            else:
                i += 1
            self.bulk_actions.append((action, meta, source))
            forced = self.item_hook(action, meta, source) if self.item_hook else None
            items.append({action: forced or self._apply(action, meta, source)})
        return {"took": 1, "errors": False, "items": items}

    def _apply(self, action: str, meta: dict, source: dict | None) -> dict[str, Any]:
        assert meta["version_type"] == "external"
        index, doc_id, version = self.concrete(meta["_index"]), meta["_id"], meta["version"]
        if meta.get("require_alias") and meta["_index"] not in self.aliases:
            return {"status": 404, "error": {"type": "index_not_found_exception",
                                             "reason": "[require_alias] request flag is [true]"}}
        self.mappings.setdefault(index, {})  # auto-create, as a write to a missing index does
        stored = self.versions.get((index, doc_id))
        if stored is not None and stored >= version:
            return {
                "_index": index, "_id": doc_id, "status": 409,
                "error": {"type": "version_conflict_engine_exception",
                          "reason": f"current version [{stored}] is higher or equal"},
            }
        self.versions[(index, doc_id)] = version
        if action == "delete":
            existed = self.docs.get(index, {}).pop(doc_id, None) is not None
            return {"_index": index, "_id": doc_id, "status": 200 if existed else 404,
                    "result": "deleted" if existed else "not_found"}
        self.docs.setdefault(index, {})[doc_id] = (version, source or {})
        return {"_index": index, "_id": doc_id, "status": 201, "result": "created"}

    def _mget(self, body: dict) -> dict[str, Any]:
        out = []
        for ref in body["docs"]:
            found = self.docs.get(self.concrete(ref["_index"]), {}).get(ref["_id"])
            if found is None:
                out.append({"_index": ref["_index"], "_id": ref["_id"], "found": False})
            else:
                out.append({"_index": ref["_index"], "_id": ref["_id"], "found": True,
                            "_version": found[0], "_source": found[1]})
        return {"docs": out}

    def source(self, doc_id: str, index: str = INDEX) -> dict[str, Any] | None:
        found = self.docs.get(self.concrete(index), {}).get(doc_id)
        return None if found is None else found[1]


def _event(op: str, key: dict, after: dict | None = None, before: dict | None = None, *,
           lsn: int, table: str = "products") -> ChangeEvent:
    src = SourceInfo(connector="postgresql", name="shop", db="shop", schema="public",
                     table=table, ts_us=1_700_000_000_000_000, tx_id=1, lsn=lsn)
    return ChangeEvent(op, key, before, after, src)


def _sink(es: FakeElasticsearch, **settings: Any) -> SearchIndexSink:
    client = httpx.AsyncClient(base_url="http://es.test:9200", transport=es.transport())
    sink = SearchIndexSink(ElasticsearchSettings(**settings), client=client)
    sink.throttle_delays_s = (0.0, 0.0, 0.0)
    return sink


def _write(sink: SearchIndexSink, batch: list[ChangeEvent]):
    return asyncio.run(sink.write(batch))


# --- document ids ------------------------------------------------------------------------

def test_document_id_single_and_composite() -> None:
    assert document_id({"id": 42}) == "42"
    assert document_id({"sku": "AB-1"}) == "AB-1"
    # composite keys: a JSON array in key order, unambiguous
    assert document_id({"order_id": 7, "line": 2}) == "[7,2]"
    assert document_id({"a": "x,y", "b": "z"}) != document_id({"a": "x", "b": "y,z"})


def test_document_id_for_keys_elasticsearch_would_refuse() -> None:
    # An empty or over-long (> 512 bytes) id is refused by Elasticsearch: such keys, and keys
    # that look like the result, get a hashed id of fixed length instead.
    empty = document_id({"sku": ""})
    assert empty == HASHED_ID_PREFIX + hashlib.sha256(b"").hexdigest()
    long_key = "é" * 300  # 600 bytes
    assert document_id({"sku": long_key}) == (
        HASHED_ID_PREFIX + hashlib.sha256(long_key.encode()).hexdigest())
    assert document_id({"sku": "é" * 256}) == "é" * 256  # exactly 512 bytes: kept
    assert document_id({"sku": empty}) not in (empty, "")


# --- actions -----------------------------------------------------------------------------

def test_index_action_uses_external_version_and_key_id() -> None:
    es = FakeElasticsearch()
    row = {"id": 42, "name": "lamp", "price": "9.99"}
    assert _write(_sink(es), [_event("c", {"id": 42}, row, lsn=1000)]) == []
    ((action, meta, source),) = es.bulk_actions
    assert action == "index"
    assert meta == {"_index": INDEX, "_id": "42", "version": 1000, "version_type": "external",
                    "require_alias": True}
    assert source == row
    bulk = next(r for r in es.requests if r.url.path == "/_bulk")
    assert bulk.headers["content-type"] == "application/x-ndjson"
    assert es.source("42") == row


def test_composite_key_document() -> None:
    es = FakeElasticsearch()
    row = {"order_id": 7, "line": 2, "qty": 1}
    _write(_sink(es), [_event("c", {"order_id": 7, "line": 2}, row, lsn=5, table="lines")])
    ((_, meta, _),) = es.bulk_actions
    assert meta["_id"] == "[7,2]"
    assert meta["_index"] == "cdc.public.lines"


def test_index_override_from_settings() -> None:
    es = FakeElasticsearch()
    sink = _sink(es, indices={"public.products": "products-v2"})
    _write(sink, [_event("c", {"id": 1}, {"id": 1}, lsn=5)])
    assert es.bulk_actions[0][1]["_index"] == "products-v2"


def test_delete_action() -> None:
    es = FakeElasticsearch()
    sink = _sink(es)
    _write(sink, [_event("c", {"id": 1}, {"id": 1, "name": "a"}, lsn=10)])
    assert _write(sink, [_event("d", {"id": 1}, None, {"id": 1, "name": "a"}, lsn=20)]) == []
    action, meta, source = es.bulk_actions[-1]
    assert action == "delete"
    assert meta == {"_index": INDEX, "_id": "1", "version": 20, "version_type": "external"}
    assert source is None
    assert es.source("1") is None


def test_delete_of_missing_doc_is_fine() -> None:
    es = FakeElasticsearch()
    assert _write(_sink(es), [_event("d", {"id": 9}, None, {"id": 9}, lsn=20)]) == []


def test_snapshot_read_is_indexed() -> None:
    es = FakeElasticsearch()
    _write(_sink(es), [_event("r", {"id": 3}, {"id": 3, "name": "x"}, lsn=1)])
    assert es.source("3") == {"id": 3, "name": "x"}


# --- idempotence and stale writes --------------------------------------------------------

def test_replay_and_stale_event_are_success_and_do_not_overwrite() -> None:
    es = FakeElasticsearch()
    sink = _sink(es)
    new = _event("u", {"id": 1}, {"id": 1, "name": "new"}, lsn=200)
    old = _event("u", {"id": 1}, {"id": 1, "name": "old"}, lsn=100)
    assert _write(sink, [new]) == []
    assert _write(sink, [new]) == []  # replay: 409, counted as applied
    assert _write(sink, [old]) == []  # late older change: 409, not a rejection
    assert es.source("1") == {"id": 1, "name": "new"}


def test_late_create_cannot_resurrect_deleted_row() -> None:
    es = FakeElasticsearch()
    sink = _sink(es)
    _write(sink, [_event("d", {"id": 1}, None, {"id": 1}, lsn=300)])
    assert _write(sink, [_event("c", {"id": 1}, {"id": 1}, lsn=100)]) == []
    assert es.source("1") is None


def test_only_newest_version_of_a_doc_in_a_batch_is_sent() -> None:
    es = FakeElasticsearch()
    batch = [
        _event("c", {"id": 1}, {"id": 1, "name": "v1"}, lsn=100),
        _event("u", {"id": 2}, {"id": 2, "name": "other"}, lsn=110),
        _event("u", {"id": 1}, {"id": 1, "name": "v3"}, lsn=300),
        _event("u", {"id": 1}, {"id": 1, "name": "v2"}, lsn=200),  # older, arrives late
    ]
    assert _write(_sink(es), batch) == []
    sent_for_1 = [(a, m["version"], s) for a, m, s in es.bulk_actions if m["_id"] == "1"]
    assert sent_for_1 == [("index", 300, {"id": 1, "name": "v3"})]
    assert es.source("2") == {"id": 2, "name": "other"}


def test_create_then_delete_in_one_batch_sends_only_delete() -> None:
    es = FakeElasticsearch()
    batch = [
        _event("c", {"id": 1}, {"id": 1}, lsn=100),
        _event("d", {"id": 1}, None, {"id": 1}, lsn=200),
    ]
    _write(_sink(es), batch)
    assert [(a, m["version"]) for a, m, _ in es.bulk_actions] == [("delete", 200)]


# --- failures ----------------------------------------------------------------------------

def test_mapping_error_rejects_only_that_event() -> None:
    es = FakeElasticsearch()

    def hook(action: str, meta: dict, source: dict | None) -> dict | None:
        if source is not None and source.get("price") == "not a number":
            return {"_index": meta["_index"], "_id": meta["_id"], "status": 400,
                    "error": {"type": "mapper_parsing_exception",
                              "reason": "failed to parse field [price] of type [float]"}}
        return None

    es.item_hook = hook
    batch = [
        _event("c", {"id": 1}, {"id": 1, "price": 1.5}, lsn=10),
        _event("c", {"id": 2}, {"id": 2, "price": "not a number"}, lsn=11),
        _event("c", {"id": 3}, {"id": 3, "price": 2.5}, lsn=12),
    ]
    rejected = _write(_sink(es), batch)
    assert [r.index for r in rejected] == [1]
    assert isinstance(rejected[0].error, SinkRejectedError)
    assert rejected[0].error.sink == "search"
    assert "mapper_parsing_exception" in str(rejected[0].error)
    assert es.source("1") is not None and es.source("3") is not None


def test_rejection_index_points_into_original_batch_after_dedup() -> None:
    es = FakeElasticsearch()
    es.item_hook = lambda action, meta, source: (
        {"status": 400, "error": {"type": "mapper_parsing_exception", "reason": "bad"}}
        if meta["_id"] == "2" else None
    )
    batch = [
        _event("c", {"id": 1}, {"id": 1}, lsn=10),
        _event("u", {"id": 1}, {"id": 1}, lsn=20),
        _event("c", {"id": 2}, {"id": 2}, lsn=30),
    ]
    assert [r.index for r in _write(_sink(es), batch)] == [2]


def test_item_429_is_unavailable_not_rejection() -> None:
    es = FakeElasticsearch()
    es.item_hook = lambda action, meta, source: {
        "status": 429, "error": {"type": "es_rejected_execution_exception", "reason": "queue full"}
    }
    with pytest.raises(SinkUnavailableError):
        _write(_sink(es), [_event("c", {"id": 1}, {"id": 1}, lsn=10)])


def test_item_5xx_is_unavailable() -> None:
    es = FakeElasticsearch()
    es.item_hook = lambda action, meta, source: {
        "status": 503, "error": {"type": "unavailable_shards_exception", "reason": "primary"}
    }
    with pytest.raises(SinkUnavailableError):
        _write(_sink(es), [_event("c", {"id": 1}, {"id": 1}, lsn=10)])


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
def test_whole_response_error_is_unavailable(status: int) -> None:
    es = FakeElasticsearch()
    es.status_override = status
    with pytest.raises(SinkUnavailableError):
        _write(_sink(es), [_event("c", {"id": 1}, {"id": 1}, lsn=10)])


def test_transport_error_is_unavailable() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    transport = httpx.MockTransport(refuse)
    client = httpx.AsyncClient(base_url="http://es.test:9200", transport=transport)
    sink = SearchIndexSink(ElasticsearchSettings(), client=client)
    with pytest.raises(SinkUnavailableError):
        _write(sink, [_event("c", {"id": 1}, {"id": 1}, lsn=10)])


def test_timeout_is_unavailable() -> None:
    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    client = httpx.AsyncClient(base_url="http://es.test:9200", transport=httpx.MockTransport(slow))
    with pytest.raises(SinkUnavailableError):
        _write(SearchIndexSink(ElasticsearchSettings(), client=client),
               [_event("c", {"id": 1}, {"id": 1}, lsn=10)])


def test_bad_credentials_are_permanent() -> None:
    es = FakeElasticsearch()
    es.status_override = 401
    with pytest.raises(PermanentError):
        _write(_sink(es), [_event("c", {"id": 1}, {"id": 1}, lsn=10)])


# --- unchanged TOAST placeholder ---------------------------------------------------------

def _placeholder_sent(es: FakeElasticsearch) -> bool:
    return any(
        UNAVAILABLE_VALUE in json.dumps(source)
        for _, _, source in es.bulk_actions if source is not None
    )


def test_placeholder_filled_from_stored_document() -> None:
    es = FakeElasticsearch()
    sink = _sink(es)
    _write(sink, [_event("c", {"id": 1}, {"id": 1, "body": "long text", "n": 1}, lsn=10)])
    update = _event("u", {"id": 1}, {"id": 1, "body": UNAVAILABLE_VALUE, "n": 2}, lsn=20)
    assert _write(sink, [update]) == []
    assert any(r.url.path == "/_mget" for r in es.requests)
    assert es.source("1") == {"id": 1, "body": "long text", "n": 2}
    assert not _placeholder_sent(es)


def test_placeholder_column_omitted_when_doc_unknown() -> None:
    es = FakeElasticsearch()
    update = _event("u", {"id": 1}, {"id": 1, "body": UNAVAILABLE_VALUE, "n": 2}, lsn=20)
    assert _write(_sink(es), [update]) == []
    assert es.source("1") == {"id": 1, "n": 2}
    assert not _placeholder_sent(es)


def test_placeholder_filled_from_earlier_event_in_same_batch() -> None:
    es = FakeElasticsearch()
    batch = [
        _event("c", {"id": 1}, {"id": 1, "body": "fresh text", "n": 1}, lsn=10),
        _event("u", {"id": 1}, {"id": 1, "body": UNAVAILABLE_VALUE, "n": 2}, lsn=20),
    ]
    assert _write(_sink(es), batch) == []
    assert es.source("1") == {"id": 1, "body": "fresh text", "n": 2}
    assert not _placeholder_sent(es)


def test_null_is_not_a_placeholder() -> None:
    es = FakeElasticsearch()
    sink = _sink(es)
    _write(sink, [_event("c", {"id": 1}, {"id": 1, "body": "text"}, lsn=10)])
    _write(sink, [_event("u", {"id": 1}, {"id": 1, "body": None}, lsn=20)])
    assert es.source("1") == {"id": 1, "body": None}


# --- truncate ----------------------------------------------------------------------------

def test_truncate_deletes_older_documents_and_keeps_newer_ones() -> None:
    es = FakeElasticsearch()
    sink = _sink(es)
    _write(sink, [_event("c", {"id": 1}, {"id": 1}, lsn=10),
                  _event("c", {"id": 2}, {"id": 2}, lsn=70)])  # another worker, after it
    truncate = _event("t", None, lsn=50)  # type: ignore[arg-type]
    batch = [truncate, _event("c", {"id": 3}, {"id": 3}, lsn=60)]
    assert _write(sink, batch) == []
    assert es.source("1") is None
    assert es.source("2") == {"id": 2} and es.source("3") == {"id": 3}


def test_a_change_older_than_a_truncate_seen_by_another_worker_is_dropped() -> None:
    es = FakeElasticsearch()
    _write(_sink(es), [_event("t", None, lsn=50)])  # type: ignore[arg-type]
    late = _sink(es)  # a second worker: learns the position from Elasticsearch
    assert _write(late, [_event("c", {"id": 1}, {"id": 1}, lsn=40),
                         _event("c", {"id": 2}, {"id": 2}, lsn=60)]) == []
    assert es.source("1") is None and es.source("2") == {"id": 2}


def test_writes_before_truncate_in_the_batch_are_flushed_first() -> None:
    es = FakeElasticsearch()
    batch = [_event("c", {"id": 1}, {"id": 1}, lsn=10), _event("t", None, lsn=50)]  # type: ignore[arg-type]
    _write(_sink(es), batch)
    bulks = [json.loads(r.content.splitlines()[0]) for r in es.requests
             if r.url.path == "/_bulk"]
    assert [next(iter(b)) for b in bulks] == ["index", "delete"]  # written, then truncated
    assert es.source("1") is None


def test_truncate_of_missing_index_is_fine() -> None:
    es = FakeElasticsearch()
    assert _write(_sink(es), [_event("t", None, lsn=50)]) == []  # type: ignore[arg-type]


# --- what Elasticsearch refuses, per document and for a whole _bulk ------------------------

def _items(n: int, bad: dict[int, int] | None = None) -> list[ChangeEvent]:
    """Creates of ids 0..n-1, each with lsn 100+i unless ``bad`` gives another."""
    return [_event("c", {"id": i}, {"id": i, "name": f"row {i}"},
                   lsn=(bad or {}).get(i, 100 + i)) for i in range(n)]


def _bulk_requests(es: FakeElasticsearch) -> list[httpx.Request]:
    return [r for r in es.requests if r.url.path == "/_bulk"]


@pytest.mark.parametrize("lsn", [2 ** 63, 2 ** 64 - 1])  # legal in PostgreSQL
def test_a_document_refused_for_the_whole_bulk_is_isolated(lsn: int) -> None:
    # Elasticsearch refuses the whole _bulk (HTTP 400) for one invalid action: it used to be
    # retried forever as "unavailable"; now the bad document is found and rejected alone.
    es = FakeElasticsearch()
    rejected = _write(_sink(es), _items(8, bad={5: lsn}))
    assert [r.index for r in rejected] == [5]
    error = rejected[0].error
    assert isinstance(error, SinkRejectedError) and error.sink == "search"
    assert "action_request_validation_exception" in str(error)
    assert f"illegal version value [{lsn}]" in str(error)
    assert sorted(int(i) for i in es.docs[es.concrete(INDEX)]) == [0, 1, 2, 3, 4, 6, 7]
    assert len(_bulk_requests(es)) <= 1 + 2 * 3  # split in halves, not one request per row


def test_an_id_elasticsearch_refuses_is_rejected_not_retried(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # document_id never makes such an id; should one get through, only its row is refused.
    from pipeline.sinks import search

    monkeypatch.setattr(search, "document_id", lambda key: str(key["id"]))
    es = FakeElasticsearch()
    batch = _items(3) + [_event("c", {"id": "k" * 600}, {"id": "k" * 600}, lsn=500)]
    rejected = _write(_sink(es), batch)
    assert [r.index for r in rejected] == [3]
    assert "is too long, must be no longer than 512 bytes" in str(rejected[0].error)
    assert es.source("0") is not None and es.source("2") is not None


def test_too_large_bulk_is_split_and_every_document_indexed() -> None:
    es = FakeElasticsearch()
    es.max_body_bytes = 400  # about three documents per request
    assert _write(_sink(es), _items(10)) == []
    assert len(es.docs[es.concrete(INDEX)]) == 10
    assert len(_bulk_requests(es)[0].content) > 400  # the first was too large: split


def test_one_document_too_large_on_its_own_is_rejected() -> None:
    es = FakeElasticsearch()
    es.max_body_bytes = 400
    batch = _items(3) + [_event("c", {"id": 9}, {"id": 9, "name": "x" * 1000}, lsn=900)]
    rejected = _write(_sink(es), batch)
    assert [r.index for r in rejected] == [3]
    assert "413: Request Entity Too Large" in str(rejected[0].error)
    assert len(es.docs[es.concrete(INDEX)]) == 3


@pytest.mark.parametrize("error", [
    {"type": "illegal_argument_exception", "reason": "Limit of total fields [1000] exceeded"},
    {"type": "document_parsing_exception",
     "reason": "[1:2] failed to parse: field name cannot be an empty string"},
    {"type": "document_parsing_exception",
     "reason": "[1:8] failed to parse field [_id] of type [_id] in document with id '1'"},
])
def test_item_refusal_other_than_a_type_change_is_rejected_with_the_reason(
        error: dict[str, str]) -> None:
    es = FakeElasticsearch()
    es.item_hook = lambda action, meta, source: (
        {"status": 400, "error": error} if meta["_id"] == "1" else None)
    rejected = _write(_sink(es), _items(3))
    assert [r.index for r in rejected] == [1]
    assert error["reason"] in str(rejected[0].error)
    assert sorted(es.mappings) == [f"{INDEX}_v1"]  # no index version migration for it
    assert es.source("0") is not None and es.source("2") is not None


def test_item_409_stale_write_is_success() -> None:
    es = FakeElasticsearch()
    es.item_hook = lambda action, meta, source: {
        "status": 409, "error": {"type": "version_conflict_engine_exception",
                                 "reason": "current version [900] is higher or equal"}}
    assert _write(_sink(es), _items(2)) == []


def test_throttled_items_alone_are_sent_again() -> None:
    es = FakeElasticsearch()
    throttled: set[str] = set()

    def hook(action: str, meta: dict, source: dict | None) -> dict | None:
        if meta["_id"] in ("1", "3") and meta["_id"] not in throttled:
            throttled.add(meta["_id"])
            return {"status": 429, "error": {"type": "es_rejected_execution_exception",
                                             "reason": "rejected execution (queue capacity)"}}
        return None

    es.item_hook = hook
    assert _write(_sink(es), _items(4)) == []
    assert sorted(int(i) for i in es.docs[es.concrete(INDEX)]) == [0, 1, 2, 3]
    assert [m["_id"] for _, m, _ in es.bulk_actions] == ["0", "1", "2", "3", "1", "3"]


def test_items_throttled_every_time_make_the_batch_unavailable() -> None:
    es = FakeElasticsearch()
    es.item_hook = lambda action, meta, source: {"status": 429, "error": {
        "type": "es_rejected_execution_exception", "reason": "queue full"}}
    sink = _sink(es)
    with pytest.raises(SinkUnavailableError):
        _write(sink, _items(2))
    assert len(_bulk_requests(es)) == 1 + len(sink.throttle_delays_s)


def test_item_refused_for_rights_is_permanent_but_a_write_block_is_not() -> None:
    es = FakeElasticsearch()
    es.item_hook = lambda action, meta, source: {"status": 403, "error": {
        "type": "security_exception", "reason": "action [indices:data/write/bulk[s]] is "
                                                "unauthorized for user [cdc]"}}
    with pytest.raises(PermanentError):
        _write(_sink(es), _items(1))
    es.item_hook = lambda action, meta, source: {"status": 403, "error": {
        "type": "cluster_block_exception",
        "reason": "index [x] blocked by: [FORBIDDEN/8/index write (api)]"}}
    with pytest.raises(SinkUnavailableError):
        _write(_sink(es), _items(1))


def test_a_value_the_sink_cannot_encode_is_isolated_by_the_retrying_wrapper() -> None:
    # An exception the sink does not expect (orjson cannot write an integer over 64 bits)
    # is bad data of one event: the wrapper bisects, the other rows are indexed.
    from pipeline.metrics import Metrics
    from pipeline.sinks.base import RetryingSink

    es = FakeElasticsearch()
    sink = RetryingSink(_sink(es), initial_s=0.01, max_s=0.01, metrics=Metrics("t"))
    rejected = asyncio.run(sink.write(_items(4, bad={2: 2 ** 64})))
    assert [r.index for r in rejected] == [2]
    assert isinstance(rejected[0].error, SinkRejectedError)
    assert sorted(int(i) for i in es.docs[es.concrete(INDEX)]) == [0, 1, 3]


def test_whole_request_refused_outside_bulk_is_bad_data_not_an_outage() -> None:
    es = FakeElasticsearch()
    sink = _sink(es)
    _write(sink, [_event("c", {"id": 1}, {"id": 1, "body": "text"}, lsn=10)])
    es.status_override = 400  # the _mget filling an unchanged TOAST column is refused
    with pytest.raises(SinkRejectedError):
        _write(sink, [_event("u", {"id": 1}, {"id": 1, "body": UNAVAILABLE_VALUE}, lsn=20)])


def test_a_table_whose_name_is_no_index_name_has_its_rows_rejected() -> None:
    # PostgreSQL allows "my items"; Elasticsearch refuses the index name (400): that table's
    # rows are dead-lettered with the reason (elasticsearch.indices can map it), the others
    # are written; it used to be retried forever.
    from pipeline.metrics import Metrics
    from pipeline.sinks.base import RetryingSink

    es = FakeElasticsearch()
    sink = RetryingSink(_sink(es), initial_s=0.01, max_s=0.01, metrics=Metrics("t"))
    batch = [_event("c", {"id": 1}, {"id": 1}, lsn=10),
             _event("c", {"id": 2}, {"id": 2}, lsn=11, table="my items"),
             _event("c", {"id": 3}, {"id": 3}, lsn=12)]
    rejected = asyncio.run(sink.write(batch))
    assert [r.index for r in rejected] == [1]
    assert "invalid_index_name_exception" in str(rejected[0].error)
    assert es.source("1") is not None and es.source("3") is not None
