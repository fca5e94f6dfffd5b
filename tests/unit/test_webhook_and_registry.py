from __future__ import annotations

import asyncio
import hashlib
import hmac

import httpx
import orjson
import pytest

from pipeline.config import load_settings
from pipeline.errors import ConfigError, PermanentError, SinkRejectedError, SinkUnavailableError
from pipeline.events import ChangeEvent, SourceInfo
from pipeline.sinks.registry import build_configured, select_sink, sink_names
from pipeline.sinks.webhook import WebhookSettings, WebhookSink


def _event(key: int, op: str = "c") -> ChangeEvent:
    src = SourceInfo("postgresql", "cdc", "db", "public", "items", ts_us=1_000_000, lsn=100 + key)
    return ChangeEvent(op, {"id": key}, None, {"id": key, "name": f"n{key}"}, src)


def _sink(handler: object, secret: str | None = "s3cret") -> WebhookSink:
    settings = WebhookSettings(url="http://receiver/hook", secret=secret)
    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))  # type: ignore[arg-type]
    return WebhookSink("audit", settings, client)


def test_batch_is_signed_over_timestamp_and_body() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(204)

    assert asyncio.run(_sink(handler).write([_event(1), _event(2)])) == []
    request = seen[0]
    stamp = request.headers["X-CDC-Timestamp"]
    expected = hmac.new(b"s3cret", stamp.encode() + b"." + request.content, hashlib.sha256)
    assert request.headers["X-CDC-Signature"] == "sha256=" + expected.hexdigest()
    body = orjson.loads(request.content)
    assert [e["key"] for e in body["events"]] == [{"id": 1}, {"id": 2}]
    assert body["events"][0]["value"]["op"] == "c"


def test_same_batch_has_same_idempotency_key() -> None:
    keys: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        keys.append(request.headers["Idempotency-Key"])
        return httpx.Response(200)

    sink = _sink(handler)
    asyncio.run(sink.write([_event(1)]))
    asyncio.run(sink.write([_event(1)]))
    asyncio.run(sink.write([_event(2)]))
    assert keys[0] == keys[1] != keys[2]


def test_unsigned_without_secret() -> None:
    seen: list[httpx.Request] = []
    sink = _sink(lambda r: seen.append(r) or httpx.Response(200), secret=None)
    asyncio.run(sink.write([_event(1)]))
    assert "X-CDC-Signature" not in seen[0].headers


def test_refused_batch_is_split_to_find_the_bad_events() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        ids = [e["key"]["id"] for e in orjson.loads(request.content)["events"]]
        return httpx.Response(422 if 2 in ids else 200)

    rejected = asyncio.run(_sink(handler).write([_event(1), _event(2), _event(3)]))
    assert [r.index for r in rejected] == [1]
    assert isinstance(rejected[0].error, SinkRejectedError)
    assert "422" in str(rejected[0].error)


@pytest.mark.parametrize("status", [408, 429, 500, 503, 302])
def test_overload_errors_and_redirects_are_retriable(status: int) -> None:
    with pytest.raises(SinkUnavailableError):
        asyncio.run(_sink(lambda r: httpx.Response(status)).write([_event(1)]))


def test_refusal_carries_the_receivers_answer() -> None:
    sink = _sink(lambda r: httpx.Response(400, text="field 'sku' is required"))
    (rejection,) = asyncio.run(sink.write([_event(1)]))
    assert "HTTP 400: field 'sku' is required" in str(rejection.error)


def test_unauthorized_is_permanent_not_bad_data() -> None:
    # A wrong secret must not send every (good) event to the dead-letter topic.
    with pytest.raises(PermanentError):
        asyncio.run(_sink(lambda r: httpx.Response(401)).write([_event(1), _event(2)]))


def test_transport_error_is_retriable() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused")

    with pytest.raises(SinkUnavailableError):
        asyncio.run(_sink(handler).write([_event(1)]))


BASE = {"CDC_POSTGRES__TABLES": "[public.items]"}


def test_configured_sink_is_built_with_its_settings() -> None:
    settings = load_settings(None, {**BASE, "CDC_SINKS__AUDIT__TYPE": "webhook",
                                    "CDC_SINKS__AUDIT__URL": "https://example.test/h"})
    sinks = build_configured(settings)
    assert list(sinks) == ["audit"]
    assert sinks["audit"].settings.url == "https://example.test/h"  # type: ignore[attr-defined]
    assert sink_names(settings) == ["audit"]


@pytest.mark.parametrize(
    ("env", "setting", "problem"),
    [
        ({"CDC_SINKS__AUDIT__URL": "x"}, "sinks.audit.type", "is required"),
        ({"CDC_SINKS__AUDIT__TYPE": "kafka-magic"}, "sinks.audit.type", "neither a built-in"),
        ({"CDC_SINKS__AUDIT__TYPE": "nosuch.module:Sink"}, "sinks.audit.type", "cannot import"),
        ({"CDC_SINKS__AUDIT__TYPE": "webhook", "CDC_SINKS__AUDIT__URL": "ftp://x"},
         "sinks.audit.url", "match pattern"),
        ({"CDC_SINKS__AUDIT__TYPE": "webhook", "CDC_SINKS__AUDIT__URL": "http://x",
          "CDC_SINKS__AUDIT__RETRIES": "3"}, "sinks.audit.retries", "unknown setting"),
        ({"CDC_SINKS__SEARCH__TYPE": "webhook"}, "sinks.search", "built-in sink"),
    ],
)
def test_bad_sink_entries_name_the_setting(env: dict[str, str], setting: str, problem: str) -> None:
    settings = load_settings(None, {**BASE, **env})
    with pytest.raises(ConfigError) as info:
        build_configured(settings)
    assert info.value.setting == setting
    assert problem in info.value.problem


def test_worker_sink_selection() -> None:
    settings = load_settings(None, {**BASE, "CDC_REDIS__URL": "redis://x",
                                    "CDC_SINKS__AUDIT__TYPE": "webhook",
                                    "CDC_SINKS__AUDIT__URL": "http://x"})
    assert select_sink(settings, "audit") == "audit"
    with pytest.raises(ConfigError, match="2 sinks configured"):
        select_sink(settings, None)
    with pytest.raises(ConfigError, match="no sink named 'nope'"):
        select_sink(settings, "nope")
    only_cache = load_settings(None, {**BASE, "CDC_REDIS__URL": "redis://x"})
    assert select_sink(only_cache, None) == "cache"
