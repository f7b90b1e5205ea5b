"""The online store: entity states in Redis hashes (layout in docs/features.md), read and written in pipelines.

Key: ``<prefix>:feat:v<FEATURE_VERSION>:<entity>:<id>`` — one hash per card, terminal, merchant or symbol;
each top-level part of the state (``raw``, ``tiles``, ``anchor`` ...) is a JSON field, plus ``updated_at``
(ms) and ``batch`` (the stream's query id and batch id that wrote it). Every write refreshes the TTL
(``features.ttl_days``). ``<prefix>:feat:v<N>:meta`` holds the stream's progress.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable

import redis

from features.online import NEW_STATE
from lakehouse.config import Settings
from lakehouse.feature_definitions import FEATURE_VERSION

Key = tuple[str, str]
UNAVAILABLE = (redis.ConnectionError, redis.TimeoutError)


class OnlineStoreUnavailable(RuntimeError):
    """The online store could not be reached (the caller decides: retry, fail the batch or degrade)."""


class OnlineStore:
    def __init__(self, settings: Settings, timeout_s: float | None = None):
        self.prefix = f"{settings.online_store.key_prefix}:feat:v{FEATURE_VERSION}"
        self.ttl_s = settings.features.ttl_days * 86_400
        self.client = redis.Redis.from_url(
            settings.online_store.url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
        )

    def key(self, entity: str, key: str) -> str:
        return f"{self.prefix}:{entity}:{key}"

    def load(self, keys: Iterable[Key]) -> dict[Key, dict | None]:
        """The states of ``keys`` (None for an entity the store does not know), in one round trip."""
        keys = list(keys)
        try:
            with self.client.pipeline(transaction=False) as pipe:
                for entity, key in keys:
                    pipe.hgetall(self.key(entity, key))
                replies = pipe.execute()
        except UNAVAILABLE as exc:
            raise OnlineStoreUnavailable(f"online store {self.client.connection_pool}: {exc}") from exc
        out: dict[Key, dict | None] = {}
        for (entity, key), h in zip(keys, replies, strict=True):
            if not h:
                out[(entity, key)] = None
                continue
            state = NEW_STATE[entity]()
            for field in state:
                if field.encode() in h:
                    state[field] = json.loads(h[field.encode()])
            out[(entity, key)] = state
        return out

    def save(self, states: dict[Key, dict], batch: str) -> None:
        """Write ``states`` (whole hashes, TTL refreshed) in one pipelined transaction."""
        now = str(int(time.time() * 1000))
        try:
            with self.client.pipeline(transaction=True) as pipe:
                for (entity, key), state in states.items():
                    name = self.key(entity, key)
                    fields = {f: json.dumps(v, separators=(",", ":")) for f, v in state.items() if f[0] != "_"}
                    pipe.hset(name, mapping={**fields, "updated_at": now, "batch": batch})
                    pipe.expire(name, self.ttl_s)
                pipe.hset(f"{self.prefix}:meta", mapping={"batch": batch, "updated_at": now})
                pipe.execute()
        except UNAVAILABLE as exc:
            raise OnlineStoreUnavailable(f"online store: {exc}") from exc

    def meta(self) -> dict[str, str]:
        return {k.decode(): v.decode() for k, v in self.client.hgetall(f"{self.prefix}:meta").items()}

    def clear(self) -> int:
        """Delete every key of this feature version (tests, and a rebuild after a definition change)."""
        n = 0
        for name in self.client.scan_iter(f"{self.prefix}:*", count=1000):
            n += self.client.delete(name)
        return n
