"""A sink added through configuration alone receives the events, signed."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from pipeline.harness import wait_until
from tests.integration.scenario import Scenario

pytestmark = pytest.mark.integration

SECRET = "webhook-secret"


class Receiver:
    """A real HTTP server on loopback that checks signatures like a user's service would."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.bad_signatures = 0
        self.fail_next = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if receiver.fail_next:
                    receiver.fail_next -= 1
                    self.send_response(503)
                    self.end_headers()
                    return
                stamp = self.headers["X-CDC-Timestamp"]
                expected = "sha256=" + hmac.new(
                    SECRET.encode(), stamp.encode() + b"." + body, hashlib.sha256
                ).hexdigest()
                if not hmac.compare_digest(expected, self.headers["X-CDC-Signature"]):
                    receiver.bad_signatures += 1
                    self.send_response(401)
                else:
                    receiver.events.extend(json.loads(body)["events"])
                    self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.server.shutdown()


def test_webhook_sink_from_configuration_only(scenario: Scenario, receiver: Receiver) -> None:
    sc = scenario
    sc.env.update({
        "CDC_SINKS__AUDIT__TYPE": "webhook",
        "CDC_SINKS__AUDIT__URL": receiver.url,
        "CDC_SINKS__AUDIT__SECRET": SECRET,
    })
    receiver.fail_next = 2  # the receiver is briefly down: retried, not dead-lettered
    sc.start("capture")
    sc.start("worker")
    sc.execute("INSERT INTO items VALUES (1, 'a', 1, 1), (2, 'b', 2, 2)")
    sc.execute("UPDATE items SET qty = 10 WHERE id = 1")
    sc.execute("DELETE FROM items WHERE id = 2")

    assert wait_until(lambda: len(receiver.events) >= 4, 90), sc.processes["worker"].tail()
    ops = sorted((e["value"]["op"], e["key"]["id"]) for e in receiver.events)
    assert ops == [("c", 1), ("c", 2), ("d", 2), ("u", 1)]
    update = next(e for e in receiver.events if e["value"]["op"] == "u")
    assert update["value"]["after"]["qty"] == 10
    assert update["value"]["source"]["table"] == "items"
    assert receiver.bad_signatures == 0
    assert sc.converged(30)  # the built-in sinks go on working beside it
    assert sc.counter("cdc_dead_letters_total") == 0
