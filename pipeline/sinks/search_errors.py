"""What an Elasticsearch answer means: the one place that tells a document Elasticsearch
refuses (bad data) from backpressure and from an outage.

Whole request (``raise_for_status``)::

    2xx              answered (a ``_bulk`` still has a result per document)
    400, other 4xx   refused as sent: ElasticsearchRefused (bad data). A ``_bulk`` is split
                     until the refusing document is alone, and that one is dead-lettered.
    413              too large: RequestTooLarge (bad data too): a ``_bulk`` is split in halves;
                     one document over ``http.max_content_length`` is dead-lettered
    401, 403         credentials or rights: PermanentError
    408, 429         backpressure: SinkUnavailableError, retried with backoff
    404, 3xx, 5xx    an outage (or a proxy in the way): SinkUnavailableError
    (transport errors and timeouts are translated to SinkUnavailableError where sent)

Bulk item (``item_outcome``): 2xx, 409 (a stale write: the stored external version is
newer) and 404 on delete are applied; 429/408 are throttled (sent again); 5xx, a write
block and a vanished index are an outage; 401/403 are permanent; any other 4xx is bad data.
"""

from __future__ import annotations

import enum
from typing import Any

import httpx
import orjson

from pipeline.errors import PermanentError, SinkRejectedError, SinkUnavailableError

SINK = "search"


class ElasticsearchRefused(SinkRejectedError):
    """Elasticsearch refused a request as it was sent (HTTP 4xx): bad data."""

    def __init__(self, status: int, kind: str, reason: str, what: str) -> None:
        self.status = status
        self.kind = kind
        self.reason = reason
        super().__init__(f"Elasticsearch refused {what} (HTTP {status}) {kind}: {reason}",
                         sink=SINK)


class RequestTooLarge(ElasticsearchRefused):
    """HTTP 413: the request is over ``http.max_content_length``; send less at a time."""


def shorten(text: str, limit: int = 1000) -> str:
    """``text``, its middle cut out if longer than ``limit`` (Elasticsearch quotes the
    refused value first and explains last: "id [...] is too long, must be no longer...")."""
    if len(text) <= limit:
        return text
    return f"{text[:limit // 2]}...{text[-(limit // 2):]}"


def refusal(response: httpx.Response) -> tuple[str, str]:
    """The error type and reason of an Elasticsearch error answer (or its text)."""
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        return str(error.get("type", response.status_code)), shorten(str(error.get("reason", "")))
    if isinstance(error, str):
        return str(response.status_code), shorten(error)
    return str(response.status_code), shorten(response.text) or response.reason_phrase


def raise_for_status(response: httpx.Response, what: str) -> None:
    """Raise what an answer other than 2xx means (see the module docstring)."""
    status = response.status_code
    if status < 300:
        return
    kind, reason = refusal(response)
    if status in (401, 403):
        raise PermanentError(
            f"Elasticsearch refused the credentials or rights (elasticsearch.username/password)"
            f" for {what}: {kind}: {reason}")
    if status in (408, 429) or status == 404 or status < 400 or status >= 500:
        raise SinkUnavailableError(
            f"Elasticsearch answered {status} to {what}: {kind}: {reason}")
    if status == 413:
        raise RequestTooLarge(status, kind, reason, what)
    raise ElasticsearchRefused(status, kind, reason, what)


class Outcome(enum.Enum):
    APPLIED = "applied"
    THROTTLED = "throttled"
    UNAVAILABLE = "unavailable"
    INDEX_GONE = "index gone"
    FORBIDDEN = "forbidden"
    REFUSED = "refused"


def item_outcome(action: str, result: dict[str, Any]) -> Outcome:
    """What one ``_bulk`` item's result means."""
    status = int(result.get("status", 500))
    kind = (result.get("error") or {}).get("type")
    if status < 300 or status == 409 or (action == "delete" and status == 404):
        return Outcome.APPLIED  # applied, or stale (a newer version is stored), or gone
    if status in (408, 429):
        return Outcome.THROTTLED
    if status >= 500 or kind == "cluster_block_exception":
        # cluster_block: the index is read-only while it moves to a new version
        return Outcome.UNAVAILABLE
    if status == 404 and kind == "index_not_found_exception":
        return Outcome.INDEX_GONE
    if status in (401, 403):
        return Outcome.FORBIDDEN
    return Outcome.REFUSED
