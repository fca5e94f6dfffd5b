"""The cache-invalidation sink: UNLINK the Redis keys of every changed row.

Key templates are configured per table (``product:{id}``, ``sku:{sku}``) and filled from the
row's before and after images, so a key that moved with the row (a changed ``sku``) goes
too. Unlinking is idempotent, which makes replays harmless. A truncate unlinks every key
matching the table's templates (``product:*``) with SCAN, never KEYS.

Redis refusing us (credentials, ACL rights) is permanent; a Redis that is down, loading,
read-only (a failover), out of memory or busy is unavailable and retried. Nothing Redis
answers to UNLINK depends on the rows, so no Redis error dead-letters an event.
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterable, Sequence

import orjson
import redis.asyncio as aioredis
from redis import exceptions as redis_errors

from pipeline.config import RedisSettings
from pipeline.errors import PermanentError, SinkRejectedError, SinkUnavailableError
from pipeline.events import ChangeEvent, Row, is_unavailable
from pipeline.sinks.base import Rejection

UNLINK_CHUNK = 1000
_GLOB_SPECIALS = re.compile(r"([*?\[\]\\])")


class KeyTemplate:
    """One template such as ``product:{id}``; knows the columns it needs."""

    def __init__(self, template: str) -> None:
        self.template = template
        self.fields = tuple(f for _, f, _, _ in string.Formatter().parse(template) if f)
        self.pattern = "".join(
            _GLOB_SPECIALS.sub(r"\\\1", text) + ("*" if field else "")
            for text, field, _, _ in string.Formatter().parse(template)
        )

    def render(self, row: Row) -> str | None:
        """The key for one row image, or None when the image lacks a needed value
        (a before image that only carries the primary key, an unchanged TOAST value)."""
        values = {}
        for field in self.fields:
            value = row.get(field)
            if value is None or is_unavailable(value):
                return None
            values[field] = value
        return self.template.format(**values)


class CacheInvalidationSink:
    """Unlinks cache keys derived from changed rows, pipelined, one round trip per chunk."""

    name = "cache"
    #: a pipeline's round trip is well under a millisecond: one drain of everything ready
    drains_per_partition = False

    def __init__(self, settings: RedisSettings, client: aioredis.Redis | None = None) -> None:
        self.settings = settings
        self.templates = {
            table: tuple(KeyTemplate(t) for t in templates)
            for table, templates in settings.keys.items()
        }
        self.client = client or aioredis.Redis.from_url(settings.url.get_secret_value())

    async def close(self) -> None:
        await self.client.aclose()

    def keys_for(self, event: ChangeEvent) -> set[str]:
        """Every key a change touches. Raises SinkRejectedError if a template names a
        column the table does not have (a configuration mistake shown with the event)."""
        keys: set[str] = set()
        for template in self.templates.get(event.table_id, ()):
            for image in (event.before, event.after):
                if image is None:
                    continue
                unknown = [f for f in template.fields if f not in image]
                if unknown and image is event.after:
                    raise SinkRejectedError(
                        f"redis.keys template '{template.template}' for {event.table_id} "
                        f"names columns the row does not have: {unknown}",
                        sink=self.name,
                    )
                key = template.render(image)
                if key is not None:
                    keys.add(key)
        return keys

    async def write(self, batch: Sequence[ChangeEvent]) -> list[Rejection]:
        rejected: list[Rejection] = []
        keys: set[str] = set()
        patterns: list[str] = []
        for i, event in enumerate(batch):
            if event.op == "t":
                patterns.extend(t.pattern for t in self.templates.get(event.table_id, ()))
                continue
            try:
                keys |= self.keys_for(event)
            except SinkRejectedError as exc:
                rejected.append(Rejection(i, exc))
        try:
            await self._unlink(sorted(keys))
            for pattern in patterns:
                keys |= await self._unlink_matching(pattern)
            if self.settings.channel and keys:
                await self.client.publish(self.settings.channel, orjson.dumps(sorted(keys)))
        except (redis_errors.AuthenticationError, redis_errors.AuthorizationError,
                redis_errors.NoPermissionError) as exc:
            raise PermanentError(f"Redis refused the credentials or ACL rights of redis.url "
                                 f"(UNLINK, SCAN, PUBLISH are needed): {exc}") from exc
        except (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError,
                redis_errors.ReadOnlyError, redis_errors.OutOfMemoryError,
                redis_errors.TryAgainError, redis_errors.ClusterDownError) as exc:
            raise SinkUnavailableError(f"Redis unavailable: {exc!r}") from exc
        except redis_errors.ResponseError as exc:
            if str(exc).startswith("BUSY"):  # a long script runs: wait for it
                raise SinkUnavailableError(f"Redis busy: {exc!r}") from exc
            raise PermanentError(f"Redis refused a command: {exc}") from exc
        return rejected

    async def _unlink(self, keys: Iterable[str]) -> None:
        chunk: list[str] = []
        async with self.client.pipeline(transaction=False) as pipe:
            for key in keys:
                chunk.append(key)
                if len(chunk) == UNLINK_CHUNK:
                    pipe.unlink(*chunk)
                    chunk = []
            if chunk:
                pipe.unlink(*chunk)
            await pipe.execute()

    async def _unlink_matching(self, pattern: str) -> set[str]:
        """Unlink every key matching a pattern; returns them (for the channel)."""
        removed: set[str] = set()
        batch: list[str] = []
        async for key in self.client.scan_iter(match=pattern, count=1000):
            batch.append(key.decode() if isinstance(key, bytes) else key)
            if len(batch) >= UNLINK_CHUNK:
                await self.client.unlink(*batch)
                removed.update(batch)
                batch = []
        if batch:
            await self.client.unlink(*batch)
            removed.update(batch)
        return removed
