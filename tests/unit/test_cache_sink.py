"""CacheInvalidationSink with a fake async Redis: keys from templates, truncate via SCAN."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis import exceptions as redis_errors

from pipeline.config import RedisSettings
from pipeline.errors import PermanentError, SinkRejectedError, SinkUnavailableError
from pipeline.events import UNAVAILABLE_VALUE, ChangeEvent, SourceInfo
from pipeline.sinks.cache import CacheInvalidationSink, KeyTemplate


def redis_glob(pattern: str) -> re.Pattern[str]:
    """Redis MATCH semantics: * ? [...] and backslash escapes."""
    out, i = "", 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\" and i + 1 < len(pattern):
            out += re.escape(pattern[i + 1])
            i += 2
            continue
        if c == "*":
            out += ".*"
        elif c == "?":
            out += "."
        elif c == "[":
            end = pattern.find("]", i + 1)
            if end == -1:
                out += re.escape(c)
            else:
                body = pattern[i + 1 : end]
                out += "[" + ("^" + body[1:] if body.startswith("^") else body) + "]"
                i = end
        else:
            out += re.escape(c)
        i += 1
    return re.compile(out + r"\Z", re.S)


class FakePipeline:
    def __init__(self, redis: FakeRedis) -> None:
        self.redis = redis
        self.queued: list[tuple[str, ...]] = []

    async def __aenter__(self) -> FakePipeline:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.queued = []

    def unlink(self, *keys: str) -> FakePipeline:
        self.queued.append(keys)
        return self

    async def execute(self) -> list[int]:
        self.redis.check()
        self.redis.round_trips += 1
        return [await self.redis.unlink(*keys) for keys in self.queued]


class FakeRedis:
    """The handful of redis.asyncio.Redis methods the sink uses."""

    def __init__(self, keys: set[str] | None = None, fail: BaseException | None = None) -> None:
        self.store = set(keys or ())
        self.fail = fail
        self.unlinked: list[str] = []
        self.published: list[tuple[str, bytes]] = []
        self.scans: list[str] = []
        self.round_trips = 0

    def check(self) -> None:
        if self.fail is not None:
            raise self.fail

    def pipeline(self, transaction: bool = True) -> FakePipeline:
        assert transaction is False
        return FakePipeline(self)

    async def unlink(self, *keys: str) -> int:
        self.check()
        self.unlinked.extend(keys)
        removed = len(self.store & set(keys))
        self.store -= set(keys)
        return removed

    async def scan_iter(self, match: str, count: int | None = None) -> AsyncIterator[str]:
        self.check()
        self.scans.append(match)
        regex = redis_glob(match)
        for key in sorted(self.store):
            if regex.match(key):
                yield key

    async def publish(self, channel: str, message: bytes) -> int:
        self.check()
        self.published.append((channel, message))
        return 1

    async def aclose(self) -> None:
        pass


def _event(
    op: str, before: dict | None, after: dict | None, table: str = "products"
) -> ChangeEvent:
    src = SourceInfo(connector="postgresql", name="shop", db="shop", schema="public",
                     table=table, ts_us=1, lsn=10)
    row = after if after is not None else before
    key = None if row is None else {"id": row.get("id")}
    return ChangeEvent(op, key, before, after, src)


KEYS = {"public.products": ("product:{id}", "sku:{sku}")}


def _sink(redis: FakeRedis, keys: dict[str, tuple[str, ...]] = KEYS, channel: str | None = None):
    return CacheInvalidationSink(RedisSettings(keys=keys, channel=channel), client=redis)  # type: ignore[arg-type]


# --- templates ---------------------------------------------------------------------------

def test_template_render() -> None:
    t = KeyTemplate("product:{id}:{locale}")
    assert t.fields == ("id", "locale")
    assert t.render({"id": 42, "locale": "de", "other": 1}) == "product:42:de"


def test_template_render_missing_null_or_placeholder_gives_no_key() -> None:
    t = KeyTemplate("sku:{sku}")
    assert t.render({"id": 1}) is None
    assert t.render({"sku": None}) is None
    assert t.render({"sku": UNAVAILABLE_VALUE}) is None


def test_template_pattern() -> None:
    assert KeyTemplate("product:{id}").pattern == "product:*"
    assert KeyTemplate("p:{a}:{b}:v1").pattern == "p:*:*:v1"
    assert KeyTemplate("odd*name:{id}").pattern == r"odd\*name:*"


def test_template_pattern_escapes_all_glob_specials() -> None:
    t = KeyTemplate("user:[{id}]")
    key = t.render({"id": 42})
    assert key == "user:[42]"
    assert redis_glob(t.pattern).match(key)


def test_pattern_matches_what_render_produces() -> None:
    for text in ("product:{id}", "a*b:{x}", "{x}-{y}", "plain:{id}:tail"):
        t = KeyTemplate(text)
        key = t.render({"id": 7, "x": "q", "y": 9})
        assert key is not None and redis_glob(t.pattern).match(key)


# --- keys --------------------------------------------------------------------------------

def test_keys_from_before_and_after_images() -> None:
    sink = _sink(FakeRedis())
    moved = _event("u", {"id": 1, "sku": "OLD-1"}, {"id": 1, "sku": "NEW-1"})
    assert sink.keys_for(moved) == {"product:1", "sku:OLD-1", "sku:NEW-1"}


def test_keys_of_delete_with_key_only_before_image() -> None:
    sink = _sink(FakeRedis())
    # REPLICA IDENTITY DEFAULT: non-key columns of the old image are NULL
    assert sink.keys_for(_event("d", {"id": 1, "sku": None}, None)) == {"product:1"}


def test_placeholder_value_produces_no_key() -> None:
    sink = _sink(FakeRedis())
    event = _event("u", None, {"id": 1, "sku": UNAVAILABLE_VALUE})
    assert sink.keys_for(event) == {"product:1"}


def test_table_without_templates_touches_nothing() -> None:
    sink = _sink(FakeRedis())
    assert sink.keys_for(_event("c", None, {"id": 1}, table="orders")) == set()


def test_template_naming_unknown_column_is_rejected() -> None:
    redis = FakeRedis({"product:2"})
    sink = _sink(redis, keys={"public.products": ("product:{id}", "ean:{ean}")})
    batch = [
        _event("c", None, {"id": 1, "sku": "A"}),
    ]
    rejected = asyncio.run(sink.write(batch))
    assert [r.index for r in rejected] == [0]
    assert isinstance(rejected[0].error, SinkRejectedError)
    assert rejected[0].error.sink == "cache"
    assert "ean" in str(rejected[0].error)


def test_rejection_does_not_stop_other_events() -> None:
    redis = FakeRedis({"product:1", "product:2", "order:5"})
    keys = {"public.products": ("product:{id}",), "public.orders": ("order:{order_no}",)}
    sink = _sink(redis, keys=keys)
    batch = [
        _event("u", None, {"id": 1}),
        _event("u", None, {"id": 5, "number": 5}, table="orders"),  # no order_no column
        _event("d", {"id": 2}, None),
    ]
    rejected = asyncio.run(sink.write(batch))
    assert [r.index for r in rejected] == [1]
    assert redis.store == {"order:5"}


# --- write -------------------------------------------------------------------------------

def test_write_unlinks_all_keys_in_one_round_trip() -> None:
    redis = FakeRedis({"product:1", "sku:A", "product:2", "sku:B", "product:3"})
    sink = _sink(redis)
    batch = [
        _event("u", {"id": 1, "sku": "A"}, {"id": 1, "sku": "A2"}),
        _event("d", {"id": 2, "sku": "B"}, None),
    ]
    assert asyncio.run(sink.write(batch)) == []
    assert redis.store == {"product:3"}
    assert set(redis.unlinked) == {"product:1", "sku:A", "sku:A2", "product:2", "sku:B"}
    assert redis.round_trips == 1


def test_replay_is_harmless() -> None:
    redis = FakeRedis({"product:1"})
    sink = _sink(redis)
    batch = [_event("u", None, {"id": 1, "sku": "A"})]
    assert asyncio.run(sink.write(batch)) == []
    assert asyncio.run(sink.write(batch)) == []
    assert redis.store == set()


def test_truncate_scans_and_unlinks_matching_keys() -> None:
    redis = FakeRedis({"product:1", "product:2", "sku:A", "order:1", "productx"})
    sink = _sink(redis)
    assert asyncio.run(sink.write([_event("t", None, None)])) == []
    assert sorted(redis.scans) == ["product:*", "sku:*"]
    assert redis.store == {"order:1", "productx"}


def test_truncate_of_other_table_leaves_keys() -> None:
    redis = FakeRedis({"product:1"})
    asyncio.run(_sink(redis).write([_event("t", None, None, table="orders")]))
    assert redis.store == {"product:1"}
    assert redis.scans == []


def test_channel_publish() -> None:
    redis = FakeRedis()
    sink = _sink(redis, channel="cache-invalidations")
    asyncio.run(sink.write([_event("u", {"id": 1, "sku": "A"}, {"id": 1, "sku": "B"})]))
    ((channel, message),) = redis.published
    assert channel == "cache-invalidations"
    assert sorted(json.loads(message)) == ["product:1", "sku:A", "sku:B"]


def test_no_channel_no_publish() -> None:
    redis = FakeRedis()
    asyncio.run(_sink(redis).write([_event("u", None, {"id": 1, "sku": "A"})]))
    assert redis.published == []


@pytest.mark.parametrize(
    "error",
    [redis_errors.ConnectionError("Connection refused"), redis_errors.TimeoutError("timeout"),
     ConnectionResetError("reset"),
     redis_errors.BusyLoadingError("Redis is loading the dataset in memory"),
     redis_errors.ReadOnlyError("You can't write against a read only replica."),
     redis_errors.OutOfMemoryError("command not allowed when used memory > 'maxmemory'"),
     redis_errors.ResponseError("BUSY Redis is busy running a script")],
)
def test_redis_down_is_unavailable(error: BaseException) -> None:
    sink = _sink(FakeRedis(fail=error))
    with pytest.raises(SinkUnavailableError):
        asyncio.run(sink.write([_event("u", None, {"id": 1, "sku": "A"})]))


def test_redis_down_during_truncate_is_unavailable() -> None:
    sink = _sink(FakeRedis(fail=redis_errors.ConnectionError("down")))
    with pytest.raises(SinkUnavailableError):
        asyncio.run(sink.write([_event("t", None, None)]))


@pytest.mark.parametrize("error", [
    redis_errors.AuthenticationError("invalid password"),
    redis_errors.NoPermissionError("this user has no permissions to run the 'unlink' command"),
    redis_errors.ResponseError("ERR unknown command 'UNLINK'"),
])
def test_redis_refusing_us_is_permanent_never_bad_data(error: BaseException) -> None:
    # Nothing Redis answers to UNLINK depends on the rows: no good row may be dead-lettered.
    sink = _sink(FakeRedis(fail=error))
    with pytest.raises(PermanentError):
        asyncio.run(sink.write([_event("u", None, {"id": 1, "sku": "A"})]))


def test_a_template_that_fails_on_one_row_rejects_that_row_only() -> None:
    # "{id:05d}" cannot format a text id: an exception the sink does not expect; the retrying
    # wrapper isolates the row instead of retrying the batch forever.
    from pipeline.metrics import Metrics
    from pipeline.sinks.base import RetryingSink

    redis = FakeRedis()
    sink = RetryingSink(_sink(redis, keys={"public.products": ("product:{id:05d}",)}),
                        initial_s=0.01, max_s=0.01, metrics=Metrics("t"))
    batch = [_event("u", None, {"id": 1}), _event("u", None, {"id": "x"}),
             _event("u", None, {"id": 3})]
    rejected = asyncio.run(sink.write(batch))
    assert [r.index for r in rejected] == [1]
    assert "ValueError" in str(rejected[0].error)
    assert sorted(redis.unlinked) == ["product:00001", "product:00003"]


def test_many_keys_are_chunked() -> None:
    from pipeline.sinks.cache import UNLINK_CHUNK

    n = UNLINK_CHUNK + 5
    redis = FakeRedis({f"product:{i}" for i in range(n)})
    sink = _sink(redis, keys={"public.products": ("product:{id}",)})
    batch: list[Any] = [_event("d", {"id": i}, None) for i in range(n)]
    asyncio.run(sink.write(batch))
    assert redis.store == set()
    assert redis.round_trips == 1


def test_truncate_is_published_on_channel() -> None:
    redis = FakeRedis({"product:1", "sku:A"})
    sink = _sink(redis, channel="cache-invalidations")
    asyncio.run(sink.write([_event("t", None, None)]))
    assert redis.store == set()
    published = b" ".join(message for _, message in redis.published)
    assert b"product:1" in published or b"product:*" in published
