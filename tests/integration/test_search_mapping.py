"""The search sink against the real Elasticsearch: rows it used to dead-letter (empty and
long keys, NaN/±Infinity, arrays mixing numbers with them), decimals that range-query and
sum, and a column whose type changes mid-stream."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from pipeline.config import ElasticsearchSettings
from pipeline.events import ChangeEvent, SourceInfo
from pipeline.sinks.search import SearchIndexSink, document_id

pytestmark = pytest.mark.integration


class Index:
    """A sink writing to a fresh index (``srch_<uid>.public.items``) and a client to read it."""

    def __init__(self, url: str) -> None:
        self.prefix = f"srch_{uuid.uuid4().hex[:8]}."
        self.name = f"{self.prefix}public.items"
        self.settings = ElasticsearchSettings(url=url, index_prefix=self.prefix)
        self.es = httpx.Client(base_url=url, timeout=30)
        self.lsn = 1000

    def write(self, *rows: dict[str, Any], key: str = "id", refresh: bool = True) -> list[Any]:
        """Creates of ``rows`` as one batch through a new sink; returns the rejections.
        ``refresh``: make them visible to searches afterwards (as a refresh interval would)."""
        batch = []
        for row in rows:
            self.lsn += 10
            src = SourceInfo(connector="postgresql", name="it", db="cdc", schema="public",
                             table="items", ts_us=1_700_000_000_000_000, lsn=self.lsn)
            batch.append(ChangeEvent("c", {key: row[key]}, None, row, src))

        async def run() -> list[Any]:
            sink = SearchIndexSink(self.settings)
            try:
                return await sink.write(batch)
            finally:
                await sink.close()

        rejected = asyncio.run(run())
        if refresh:
            self.es.post(f"/{self.name}/_refresh").raise_for_status()
        return rejected

    def get(self, key: object) -> dict[str, Any]:
        doc_id = quote(document_id({"id": key}), safe="")
        response = self.es.get(f"/{self.name}/_doc/{doc_id}")
        assert response.status_code == 200, response.text
        return dict(response.json())

    def ids(self, query: dict[str, Any]) -> set[str]:
        found = self.es.post(f"/{self.name}/_search", json={"size": 100, "query": query})
        found.raise_for_status()
        return {hit["_source"]["id"] for hit in found.json()["hits"]["hits"]}

    def concrete(self) -> list[str]:
        response = self.es.get(f"/_alias/{self.name}")
        return sorted(response.json()) if response.status_code == 200 else []

    def drop(self) -> None:
        listed = self.es.get(f"/_cat/indices/{self.prefix}*", params={"h": "index"})
        for index in listed.text.split():  # by name: wildcard deletes are refused
            self.es.delete(f"/{index}")
        self.es.close()


@pytest.fixture
def index(stack_info: Any) -> Iterator[Index]:
    idx = Index(stack_info.elasticsearch_url)
    yield idx
    idx.drop()


def test_rows_that_used_to_be_dead_lettered_are_indexed(index: Index) -> None:
    rows = [
        {"id": "", "score": 1.5, "samples": [1.5, "NaN", 2]},
        {"id": "x" * 600, "score": "NaN", "samples": ["Infinity", 3.25]},
        {"id": "inf", "score": "Infinity", "samples": ["-Infinity", "NaN"]},
        {"id": "neg", "score": "-Infinity", "samples": [0.5]},
        {"id": "plain", "score": 2.5, "samples": []},
    ]
    assert index.write(*rows) == []
    for row in rows:
        assert index.get(row["id"])["_source"] == row  # exact values, NaN text included
    # Non-finite values are in the document but not in the numeric index: no range has them.
    assert index.ids({"range": {"score": {"gte": 0}}}) == {"", "plain"}
    assert index.ids({"range": {"samples": {"gte": 3}}}) == {"x" * 600}
    assert index.ids({"term": {"id": ""}}) == {""}  # the key stays queryable


def test_decimal_column_range_queries_and_sums(index: Index) -> None:
    prices = {1: "12.50", 2: "3.10", 3: "NaN", 4: "100.00", 5: "9.999"}
    assert index.write(*({"id": k, "price": v} for k, v in prices.items())) == []
    assert index.ids({"range": {"price.num": {"gte": 9.999, "lt": 100}}}) == {1, 5}
    assert index.ids({"term": {"price": "12.50"}}) == {1}  # the exact text, not 12.5
    found = index.es.post(f"/{index.name}/_search", json={
        "size": 0, "aggs": {"total": {"sum": {"field": "price.num"}}}}).json()
    assert found["aggregations"]["total"]["value"] == pytest.approx(125.599)
    assert index.get(3)["_source"]["price"] == "NaN"


def test_column_type_change_keeps_indexing_both_old_and_new_rows(index: Index) -> None:
    assert index.write({"id": 1, "qty": 3}, {"id": 2, "qty": 40}) == []
    old_versions = {k: index.get(k)["_version"] for k in (1, 2)}
    # ALTER TABLE items ALTER COLUMN qty TYPE text: the next rows carry strings
    assert index.write({"id": 3, "qty": "a dozen"}, {"id": 4, "qty": "7"}) == []
    assert index.concrete() == [f"{index.name}_v2"]  # moved to a new version behind the alias
    assert {k: index.get(k)["_version"] for k in (1, 2)} == old_versions  # copied, versioned
    assert index.get(1)["_source"] == {"id": 1, "qty": 3}
    assert index.get(3)["_source"] == {"id": 3, "qty": "a dozen"}
    assert index.ids({"match": {"qty.text": "dozen"}}) == {3}
    assert index.ids({"term": {"qty": "3"}}) == {1}
    assert index.ids({"range": {"qty.num": {"gte": 5}}}) == {2, 4}


def test_a_migration_copies_writes_not_yet_visible_to_searches(index: Index) -> None:
    # Elasticsearch's searches (and so the scroll that copies the old version) see only
    # what a refresh made visible; the newest write of a row must not be left behind.
    assert index.write({"id": 1, "qty": 3}) == []
    assert index.write({"id": 1, "qty": 4}, refresh=False) == []
    assert index.write({"id": 2, "qty": "a dozen"}) == []
    assert index.concrete() == [f"{index.name}_v2"]
    assert index.get(1)["_source"] == {"id": 1, "qty": 4}


def test_index_from_before_aliases_keeps_working_then_migrates(index: Index) -> None:
    # An index as the sink made it before: concrete, named like the alias, dynamic mapping.
    index.es.put(f"/{index.name}").raise_for_status()
    assert index.write({"id": 1, "qty": 3}) == []
    assert index.concrete() == []  # still the concrete index, written as before
    assert index.write({"id": 2, "qty": "a dozen"}) == []
    assert index.concrete() == [f"{index.name}_v2"]
    assert index.get(1)["_source"] == {"id": 1, "qty": 3}
    assert index.get(2)["_source"] == {"id": 2, "qty": "a dozen"}
