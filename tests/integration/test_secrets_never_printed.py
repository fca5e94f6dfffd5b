"""Issue 9, item 4: planted credentials appear in no command's output and in no log.

Every credential-bearing setting gets a recognisable secret; the pipeline runs with them
(capture, the supervised workers with a webhook that is down, so its retries are logged),
then `cdc config`, `cdc status` and `cdc dlq list` run, and every output, log and metrics
snapshot is searched for the secrets.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from pipeline.harness import wait_until
from tests.integration.scenario import Scenario

pytestmark = pytest.mark.integration

SECRETS = ("pgPl4nted", "esPl4nted", "redisPl4nted", "hookPl4nted", "hmacPl4nted",
           "bearerPl4nted")


def _run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args],
                          env={**os.environ, **env}, capture_output=True, text=True, timeout=120)


def test_planted_secrets_never_appear(scenario: Scenario) -> None:
    sc = scenario
    es = sc.es_url.replace("http://", "http://elastic:esPl4nted@")
    redis_host = sc.settings.redis.url.get_secret_value().rsplit(":", 1)[0]  # type: ignore[union-attr]
    sc.env.update({
        # trust authentication: PostgreSQL accepts the connection and ignores the password
        "CDC_POSTGRES__DSN": sc.dsn + " password=pgPl4nted",
        # security is off in the local Elasticsearch: it ignores the credentials
        "CDC_ELASTICSEARCH__URL": es,
        # nothing listens on port 1: the cache sink retries (and logs) for the whole test
        "CDC_REDIS__URL": redis_host.replace("redis://", "redis://:redisPl4nted@") + ":1/0",
        "CDC_SINKS__AUDIT__TYPE": "webhook",
        "CDC_SINKS__AUDIT__URL": "http://hook:hookPl4nted@127.0.0.1:1/hook",
        "CDC_SINKS__AUDIT__SECRET": "hmacPl4nted",
        "CDC_SINKS__AUDIT__HEADERS": "{Authorization: Bearer bearerPl4nted}",
        "CDC_WORKER__RETRY_MAX_MS": "300",
    })
    config = _run(sc.env, "config")
    assert config.returncode == 0, config.stderr
    outputs = [config]
    capture = sc.start("capture")
    worker = sc.start("worker")
    sc.execute("INSERT INTO items VALUES (1, 'a', 1, 1.5), (2, 'b', 2, 2.5)")
    assert sc.converged(120), worker.tail()  # the search sink works with the url credentials
    # Let the webhook and cache sinks fail and retry a while, logging each attempt.
    assert wait_until(lambda: "unreachable" in worker.tail(400)
                      and "Redis unavailable" in worker.tail(400), 60), worker.tail()
    time.sleep(3)
    outputs += [_run(sc.env, "status"), _run(sc.env, "dlq", "list")]
    capture.stop()
    worker.stop()

    texts = {f"cdc {' '.join(done.args[3:])}": done.stdout + done.stderr for done in outputs}
    for log in sc.work.rglob("*"):
        if log.is_file() and log.suffix in (".log", ".json", ".out"):
            texts[str(log)] = log.read_text(errors="replace")
    assert len(texts) >= 5, sorted(texts)
    leaks = {(name, s) for name, text in texts.items() for s in SECRETS if s in text}
    assert not leaks, leaks
    shown = json.loads(config.stdout)
    assert shown["sinks"]["audit"]["url"] == "http://127.0.0.1:1/hook"
    assert "http://127.0.0.1:1/hook" in worker.tail(400)  # logged, without its userinfo
