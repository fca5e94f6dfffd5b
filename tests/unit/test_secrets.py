"""Issue 9, item 4: no credential reaches the output of `cdc config` or a log line."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from pipeline.cli import main
from pipeline.config import ElasticsearchSettings, load_settings, without_userinfo
from pipeline.errors import ConfigError, PermanentError, SinkUnavailableError
from pipeline.events import ChangeEvent, SourceInfo
from pipeline.sinks.webhook import WebhookSettings, WebhookSink

PLANTED = ("pgPl4nted", "esUrlPl4nted", "esPl4nted", "redisPl4nted", "saslPl4nted",
           "hookUrlPl4nted", "hmacPl4nted", "BearerPl4nted", "tokenPl4nted", "customUrlPl4nted")

CONFIG = """
postgres:
  dsn: host=127.0.0.1 user=postgres password=pgPl4nted dbname=cdc
  tables: [public.items]
kafka:
  producer: {linger.ms: 5}
  client:
    security_protocol: SASL_PLAINTEXT
    sasl_mechanism: SCRAM-SHA-256
    sasl_username: cdc
    sasl_password: saslPl4nted
elasticsearch:
  url: http://elastic:esUrlPl4nted@127.0.0.1:9200
redis:
  url: redis://:redisPl4nted@127.0.0.1:6379/0
sinks:
  audit:
    type: webhook
    url: https://hook:hookUrlPl4nted@receiver.example/hook
    secret: hmacPl4nted
    headers: {Authorization: Bearer BearerPl4nted}
  other:
    type: "no_such_module:Sink"
    api_token: tokenPl4nted
    endpoint: http://u:customUrlPl4nted@elsewhere/x
"""


def test_cdc_config_prints_no_planted_secret(tmp_path: Path) -> None:
    config = tmp_path / "cdc.yaml"
    config.write_text(CONFIG)
    result = CliRunner().invoke(main, ["-c", str(config), "config"])
    assert result.exit_code == 0, result.output
    for secret in PLANTED:
        assert secret not in result.output, secret
    shown = json.loads(result.output)
    # The URLs are still there to read, without their credentials.
    assert shown["elasticsearch"]["url"] == "http://127.0.0.1:9200"
    assert shown["elasticsearch"]["username"] == "elastic"
    assert shown["sinks"]["audit"]["url"] == "https://receiver.example/hook"
    assert shown["sinks"]["audit"]["headers"] == {"Authorization": "**********"}
    assert shown["sinks"]["other"]["endpoint"] == "http://elsewhere/x"


def test_credentials_move_out_of_the_elasticsearch_url() -> None:
    es = ElasticsearchSettings(url="https://el%40stic:p%3Ass@search.example:9243/prefix")
    assert es.url == "https://search.example:9243/prefix"
    assert es.username == "el@stic"
    assert es.password is not None and es.password.get_secret_value() == "p:ss"
    assert "p:ss" not in repr(es)


def test_credentials_in_the_url_and_as_settings_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "cdc.yaml"
    config.write_text("postgres: {tables: [public.items]}\n"
                      "elasticsearch: {url: 'http://a:b@h:9200', username: c}\n")
    with pytest.raises(ConfigError, match="either in the url or as username/password"):
        load_settings(config, environ={})


def test_without_userinfo() -> None:
    assert without_userinfo("http://u:p@h:1/x?y=1") == "http://h:1/x?y=1"
    assert without_userinfo("http://h:1/x") == "http://h:1/x"
    assert without_userinfo("redis://:p@[::1]:6379/0") == "redis://[::1]:6379/0"


def _event() -> ChangeEvent:
    src = SourceInfo("postgresql", "cdc", "db", "public", "items", ts_us=1_000_000, lsn=100)
    return ChangeEvent("c", {"id": 1}, None, {"id": 1}, src)


def _webhook(handler: object) -> WebhookSink:
    settings = WebhookSettings.model_validate({
        "url": "http://hook:hookUrlPl4nted@receiver/hook",
        "headers": {"Authorization": "Bearer BearerPl4nted"},
    })
    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))  # type: ignore[arg-type]
    return WebhookSink("audit", settings, client)


def test_webhook_retry_messages_carry_no_credentials() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    with pytest.raises(SinkUnavailableError) as caught:
        asyncio.run(_webhook(refuse).write([_event()]))
    assert "hookUrlPl4nted" not in str(caught.value)
    assert "http://receiver/hook" in str(caught.value)


def test_webhook_sends_the_url_credentials_as_basic_auth_and_headers_as_given() -> None:
    seen: list[httpx.Request] = []

    def accept(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(204)

    assert asyncio.run(_webhook(accept).write([_event()])) == []
    assert str(seen[0].url) == "http://receiver/hook"
    assert seen[0].headers["Authorization"] == "Bearer BearerPl4nted"  # explicit header wins


def test_webhook_basic_auth_from_url() -> None:
    seen: list[httpx.Request] = []

    def accept(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(204)

    settings = WebhookSettings.model_validate({"url": "http://hook:s%40cret@receiver/hook"})
    client = httpx.AsyncClient(transport=httpx.MockTransport(accept))
    asyncio.run(WebhookSink("audit", settings, client).write([_event()]))
    expected = "Basic " + base64.b64encode(b"hook:s@cret").decode()
    assert seen[0].headers["Authorization"] == expected


@pytest.mark.parametrize("status", [401, 403])
def test_webhook_refusing_credentials_is_permanent_not_bad_data(status: int) -> None:
    with pytest.raises(PermanentError, match=f"HTTP {status}"):
        asyncio.run(_webhook(lambda request: httpx.Response(status)).write([_event()]))
