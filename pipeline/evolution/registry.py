"""A Confluent-API schema registry, through ``confluent_kafka.schema_registry``.

``SchemaRegistry`` is the one place that client is called: it registers a value schema under
a subject (capture) and fetches the schema of an id (workers), caches both (an id never
changes its schema, so a cache entry never goes stale), and translates the client's errors
into the pipeline's tree:

* the registry does not know the id (HTTP 404): ``UnknownSchemaIdError``, bad data;
* it refuses the request (another 4xx, e.g. 409 incompatible, 401 unauthorised):
  ``PermanentError`` with its message, since asking again cannot help;
* it cannot be reached or answers 5xx: ``RetriableError``. ``resolve`` retries those itself
  with the one backoff (pipeline/retry.py) until the registry answers, because a worker must
  not dead-letter good data during an outage; capture lets them reach its loop, which
  reconnects and re-reads what Kafka did not acknowledge.

Subjects follow Confluent's TopicNameStrategy, as Debezium's AvroConverter does:
``<topic>-value``.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from pipeline.errors import PermanentError, RetriableError
from pipeline.evolution.errors import UnknownSchemaIdError
from pipeline.retry import Backoff

log = logging.getLogger(__name__)

SETTING = "kafka.schema_registry_url"


def value_subject(topic: str) -> str:
    """The subject of a topic's value schemas (Confluent's TopicNameStrategy)."""
    return f"{topic}-value"


class SchemaRegistry:
    """Registers and fetches Avro schemas; ``client`` defaults to confluent_kafka's."""

    def __init__(self, url: str, client: Any = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.url = url
        if client is None:
            from confluent_kafka.schema_registry import SchemaRegistryClient

            client = SchemaRegistryClient({"url": url, "timeout": 10})
        self._client = client
        self._sleep = sleep
        self._schemas: dict[int, dict[str, Any]] = {}
        self._ids: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()

    def register(self, subject: str, schema: dict[str, Any]) -> int:
        """The id of ``schema`` under ``subject``, registering it as a new version of the
        subject if the registry does not hold it yet. Cached per (subject, schema)."""
        text = json.dumps(schema, separators=(",", ":"), sort_keys=True)
        cached = self._ids.get((subject, text))
        if cached is not None:
            return cached
        from confluent_kafka.schema_registry import Schema

        schema_id = int(self._call(
            lambda: self._client.register_schema(subject, Schema(text, "AVRO")),
            f"registering a schema under subject '{subject}'"))
        self._ids[(subject, text)] = schema_id
        self._schemas.setdefault(schema_id, schema)
        return schema_id

    def schema(self, schema_id: int) -> dict[str, Any]:
        """The Avro schema (parsed JSON) of ``schema_id``; one attempt. Raises
        UnknownSchemaIdError, RetriableError or PermanentError."""
        found = self._schemas.get(schema_id)
        if found is not None:
            return found
        with self._lock:  # one fetch per id, however many callers wait for it
            found = self._schemas.get(schema_id)
            if found is not None:
                return found
            fetched = self._call(lambda: self._client.get_schema(schema_id),
                                 f"fetching schema id {schema_id}", schema_id)
            if fetched.schema_type not in (None, "AVRO"):
                raise UnknownSchemaIdError(schema_id, f"is a {fetched.schema_type} schema, "
                                                      "not Avro")
            try:
                parsed = json.loads(fetched.schema_str)
            except ValueError as exc:
                raise UnknownSchemaIdError(schema_id, f"is not JSON: {exc}") from exc
            self._schemas[schema_id] = parsed
            return parsed

    def resolve(self, schema_id: int, give_up_after_s: float | None = None) -> dict[str, Any]:
        """``schema`` retried with backoff while the registry is unreachable (a worker waits
        rather than dead-letter good data); RetriableError after ``give_up_after_s``."""
        backoff = Backoff(initial_s=0.2, max_s=10.0)
        started = time.monotonic()
        while True:
            backoff.started()
            try:
                return self.schema(schema_id)
            except RetriableError as exc:
                waited = time.monotonic() - started
                if give_up_after_s is not None and waited >= give_up_after_s:
                    raise
                delay = backoff.next_delay()
                log.warning("%s; retrying in %.1fs", exc, delay)
                self._sleep(delay)

    def _call(self, request: Callable[[], Any], doing: str,
              schema_id: int | None = None) -> Any:
        from confluent_kafka.schema_registry.error import SchemaRegistryError

        try:
            return request()
        except SchemaRegistryError as exc:
            status = exc.http_status_code
            if status == 404 and schema_id is not None:
                raise UnknownSchemaIdError(schema_id, "is not in the schema registry "
                                                      f"at {self.url}") from exc
            if status is not None and 400 <= status < 500:
                raise PermanentError(f"{doing}: the schema registry at {self.url} refused: "
                                     f"{exc.error_message} (HTTP {status}, code "
                                     f"{exc.error_code}); check {SETTING}") from exc
            raise RetriableError(f"{doing}: the schema registry at {self.url} answered "
                                 f"{exc.error_message} (HTTP {status})") from exc
        except (OSError, TimeoutError) as exc:
            raise RetriableError(f"{doing}: the schema registry at {self.url} is "
                                 f"unreachable: {exc}") from exc
        except Exception as exc:
            # httpx's transport errors (and httpx2's) are not OSErrors: anything else the
            # client raises while talking is an unreachable registry too.
            if type(exc).__module__.split(".")[0] in ("httpx", "httpx2", "httpcore",
                                                      "httpcore2"):
                raise RetriableError(f"{doing}: the schema registry at {self.url} is "
                                     f"unreachable: {type(exc).__name__}: {exc}") from exc
            raise
