"""The webhook sink: each batch POSTed as JSON to a URL, signed with HMAC-SHA256.

Body: ``{"events": [{"key": {...}, "value": <Debezium envelope>}, ...]}``. Headers:

    X-CDC-Timestamp   Unix seconds when the request was signed
    X-CDC-Signature   sha256=<hex HMAC-SHA256 of "<timestamp>.<body>" with the secret>
    Idempotency-Key   sha256 of the batch's change identities: the same batch, retried or
                      replayed, carries the same key, so the receiver can drop repeats

A receiver verifies the signature over the timestamp and the raw body (and may refuse old
timestamps). 2xx confirms the batch; 408, 429, 5xx, redirects and transport errors are
retried with backoff; 401, 403 and 407 are refused credentials (``secret``, ``headers``,
``username``/``password``): permanent, the worker stops with the reason; another 4xx is bad
data: the batch is retried event by event so only the events the receiver refuses go to the
dead-letter topic, with the receiver's answer.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Sequence

import httpx
import orjson
from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from pipeline.config import credentials_out_of_url
from pipeline.errors import PermanentError, SinkRejectedError, SinkUnavailableError
from pipeline.events import ChangeEvent, encode_value
from pipeline.sinks.base import Rejection


class WebhookSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    #: Credentials written into it (``https://user:password@host``) move to
    #: username/password (HTTP basic auth), so the URL can be logged.
    url: str = Field(pattern=r"^https?://")
    username: str | None = None
    password: SecretStr | None = None
    #: Shared secret for the signature; without it requests are unsigned.
    secret: SecretStr | None = None
    timeout_s: float = Field(default=10.0, gt=0)
    #: Extra request headers; every value is a secret (they often carry Authorization).
    headers: dict[str, SecretStr] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _url_credentials(cls, data: object) -> object:
        return credentials_out_of_url(data, "webhook")


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    """The X-CDC-Signature value for a body sent at ``timestamp``."""
    digest = hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def idempotency_key(batch: Sequence[ChangeEvent]) -> str:
    ids = b"\n".join(
        orjson.dumps([e.source.name, e.table_id, e.key, e.op, e.version]) for e in batch
    )
    return hashlib.sha256(ids).hexdigest()


class WebhookSink:
    """POSTs batches of change events to one URL."""

    Settings = WebhookSettings

    def __init__(self, name: str, settings: WebhookSettings,
                 client: httpx.AsyncClient | None = None) -> None:
        self.name = name
        self.settings = settings
        self.auth: httpx.BasicAuth | None = None
        explicit = any(k.lower() == "authorization" for k in settings.headers)
        if not explicit and (settings.username is not None or settings.password is not None):
            password = settings.password.get_secret_value() if settings.password else ""
            self.auth = httpx.BasicAuth(settings.username or "", password)
        self.client = client or httpx.AsyncClient(timeout=settings.timeout_s)

    async def close(self) -> None:
        await self.client.aclose()

    async def write(self, batch: Sequence[ChangeEvent]) -> list[Rejection]:
        if not batch:
            return []
        response = await self._post(batch)
        if response.status_code < 300:
            return []
        if len(batch) == 1:
            return [Rejection(0, SinkRejectedError(
                f"webhook {self.settings.url} refused the event with HTTP "
                f"{response.status_code}: {response.text[:300]}", sink=self.name))]
        rejected: list[Rejection] = []
        for i, event in enumerate(batch):  # find the events the receiver refuses
            for rejection in await self.write([event]):
                rejected.append(Rejection(i, rejection.error))
        return rejected

    async def _post(self, batch: Sequence[ChangeEvent]) -> httpx.Response:
        body = b'{"events":[' + b",".join(
            b'{"key":' + orjson.dumps(e.key) + b',"value":' + encode_value(e) + b"}"
            for e in batch
        ) + b"]}"
        timestamp = str(int(time.time()))
        headers = {
            **{k: v.get_secret_value() for k, v in self.settings.headers.items()},
            "Content-Type": "application/json",
            "X-CDC-Timestamp": timestamp,
            "Idempotency-Key": idempotency_key(batch),
        }
        if self.settings.secret is not None:
            secret = self.settings.secret.get_secret_value().encode()
            headers["X-CDC-Signature"] = sign(secret, timestamp, body)
        try:
            response = await self.client.post(self.settings.url, content=body, headers=headers,
                                              auth=self.auth or httpx.USE_CLIENT_DEFAULT)
        except httpx.HTTPError as exc:
            raise SinkUnavailableError(f"webhook {self.settings.url} unreachable: {exc!r}") from exc
        if response.status_code in (408, 429) or response.status_code >= 500:
            raise SinkUnavailableError(
                f"webhook {self.settings.url} answered {response.status_code}"
            )
        if response.status_code in (401, 403, 407):
            raise PermanentError(
                f"webhook {self.settings.url} refused the credentials (HTTP "
                f"{response.status_code}): check the sink's username/password or headers"
            )
        if 300 <= response.status_code < 400:
            raise SinkUnavailableError(
                f"webhook {self.settings.url} redirected ({response.status_code}); "
                "configure the final URL"
            )
        return response
