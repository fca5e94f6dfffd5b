"""Documents the real Elasticsearch refuses, in a batch with good ones: the good ones are
indexed, each refused one is rejected with Elasticsearch's reason, and nothing is retried
forever (a whole ``_bulk`` refused with HTTP 400 used to be taken for an outage)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import pytest

from pipeline.config import ElasticsearchSettings
from pipeline.errors import SinkRejectedError
from pipeline.events import ChangeEvent, SourceInfo
from pipeline.metrics import Metrics
from pipeline.sinks import search
from pipeline.sinks.base import MeasuredSink, Rejection, RetryingSink

pytestmark = pytest.mark.integration


def _event(key: str, row: dict[str, Any], lsn: int) -> ChangeEvent:
    src = SourceInfo(connector="postgresql", name="it", db="cdc", schema="public",
                     table="items", ts_us=1_700_000_000_000_000, lsn=lsn)
    return ChangeEvent("c", {"id": key}, None, row, src)


def test_refused_documents_are_rejected_with_the_reason_and_the_rest_indexed(
        stack_info: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # document_id hashes long keys; take the raw key, as a sink without that would, to meet
    # the refusal Elasticsearch gives for a whole _bulk.
    monkeypatch.setattr(search, "document_id", lambda key: str(key["id"]))
    prefix = f"refuse_{uuid.uuid4().hex[:8]}."
    settings = ElasticsearchSettings(url=stack_info.elasticsearch_url, index_prefix=prefix)
    long_key = "k" * 600
    batch = [
        _event("good-1", {"id": "good-1", "n": 1}, lsn=1000),
        _event(long_key, {"id": long_key, "n": 2}, lsn=1001),  # whole _bulk: id too long
        _event("good-2", {"id": "good-2", "n": 3}, lsn=1002),
        _event("huge-lsn", {"id": "huge-lsn", "n": 4}, lsn=2 ** 63),  # whole _bulk: not a long
        _event("good-3", {"id": "good-3", "n": 5}, lsn=1004),
        _event("no-name", {"id": "no-name", "": 6}, lsn=1005),  # per document: empty field
        _event("good-4", {"id": "good-4", "n": 7}, lsn=1006),
    ]
    metrics = Metrics("it")

    async def run() -> list[Rejection]:
        inner = search.SearchIndexSink(settings)
        sink = RetryingSink(MeasuredSink(inner, metrics), 0.05, 0.2, metrics)
        try:
            return await asyncio.wait_for(sink.write(batch), timeout=60)
        finally:
            await sink.close()

    rejected = asyncio.run(run())
    es = httpx.Client(base_url=stack_info.elasticsearch_url, timeout=30)
    index = f"{prefix}public.items"
    try:
        reasons = {r.index: str(r.error) for r in rejected}
        assert sorted(reasons) == [1, 3, 5]
        assert all(isinstance(r.error, SinkRejectedError) for r in rejected)
        assert "must be no longer than 512 bytes" in reasons[1]
        assert "out of range of long" in reasons[3]
        assert "field name cannot be an empty string" in reasons[5]
        assert metrics.total("cdc_sink_retries_total") == 0  # refusals are not outages
        es.post(f"/{index}/_refresh").raise_for_status()
        found = es.post(f"/{index}/_search", json={"size": 20}).json()["hits"]["hits"]
        assert sorted(hit["_id"] for hit in found) == ["good-1", "good-2", "good-3", "good-4"]
    finally:
        aliased = es.get(f"/_alias/{index}")
        for concrete in aliased.json() if aliased.status_code == 200 else ():
            es.delete(f"/{concrete}")
        es.close()
