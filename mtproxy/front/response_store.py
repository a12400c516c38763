"""Where /v1/responses keeps its responses: previous_response_id, GET, DELETE, input_items.

One small async protocol, two stores: :class:`MemoryStore` (the default: this process only,
bounded by count and age, oldest first out; a restart loses every response) and
:class:`RedisStore` (Redis or Valkey through the official ``redis`` client's asyncio API, shared
by every replica behind one Service; keys expire after ``max_age_seconds``, the count is kept
under ``max_items`` by an index of ids by time). A record is opaque bytes to both.
:class:`StoreSlot` holds the app's store, which a reload replaces when the ``responses:``
section changes.
"""

from __future__ import annotations

import contextlib
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

from ..config import ConfigError, ResponsesConfig
from ..errors import ProxyError

MAX_ID = 256  # longer ids are not looked up: no store key grows with what a client sends


class StoreUnavailable(ProxyError):
    status = 503
    type = "server_error"
    code = "response_store_unavailable"


class ResponseStore(Protocol):
    async def get(self, rid: str) -> bytes | None: ...

    async def put(self, rid: str, record: bytes) -> None: ...

    async def delete(self, rid: str) -> bool: ...

    async def close(self) -> None: ...


class MemoryStore:
    """Records in insertion order: the front is the oldest, evicted first by count and age."""

    def __init__(self, max_items: int, max_age: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_items = max_items
        self.max_age = max_age
        self.clock = clock
        self._items: OrderedDict[str, tuple[float, bytes]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def _expire(self) -> None:
        items, limit = self._items, self.clock() - self.max_age
        while items:
            rid, (at, _) = next(iter(items.items()))
            if at > limit and len(items) <= self.max_items:
                break
            del items[rid]

    async def get(self, rid: str) -> bytes | None:
        self._expire()
        found = self._items.get(rid)
        return None if found is None else found[1]

    async def put(self, rid: str, record: bytes) -> None:
        self._items.pop(rid, None)
        self._items[rid] = (self.clock(), record)
        self._expire()

    async def delete(self, rid: str) -> bool:
        self._expire()
        return self._items.pop(rid, None) is not None

    async def close(self) -> None:
        self._items.clear()


class RedisStore:
    """Records under ``<prefix><id>`` with a TTL, and a sorted set ``<prefix>index`` of ids by
    time that keeps their count under ``max_items`` (the oldest deleted first)."""

    PREFIX = "mtproxy:responses:"

    def __init__(self, url: str, max_items: int, max_age: float, *, timeout: float = 5.0) -> None:
        try:
            import redis.asyncio as redis_asyncio  # optional: pip install 'mtproxy[redis]'
            from redis.exceptions import RedisError
        except ImportError:
            raise RuntimeError("responses.store is a Redis URL but the `redis` package is not installed "
                               "(pip install 'mtproxy[redis]')") from None
        self._errors: tuple[type[BaseException], ...] = (RedisError, OSError, TimeoutError)
        self.client: Any = redis_asyncio.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        self.max_items = max_items
        self.max_age = max_age
        self.index = self.PREFIX + "index"

    def _key(self, rid: str) -> str:
        return self.PREFIX + "r:" + rid

    def _unavailable(self, exc: BaseException) -> StoreUnavailable:
        # the client's message names the host, never the password of the URL
        return StoreUnavailable(f"The response store (Redis) is unavailable: {type(exc).__name__}")

    async def get(self, rid: str) -> bytes | None:
        try:
            return await self.client.get(self._key(rid))
        except self._errors as exc:
            raise self._unavailable(exc) from None

    async def put(self, rid: str, record: bytes) -> None:
        now = time.time()
        try:
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.set(self._key(rid), record, px=max(1, int(self.max_age * 1000)))
                pipe.zadd(self.index, {rid: now})
                pipe.zremrangebyscore(self.index, "-inf", now - self.max_age)
                pipe.zcard(self.index)
                *_, count = await pipe.execute()
            over = count - self.max_items
            if over > 0:
                oldest = await self.client.zpopmin(self.index, over)
                if oldest:
                    await self.client.delete(*(self._key(r.decode() if isinstance(r, bytes) else r) for r, _ in oldest))
        except self._errors as exc:
            raise self._unavailable(exc) from None

    async def delete(self, rid: str) -> bool:
        try:
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.delete(self._key(rid))
                pipe.zrem(self.index, rid)
                deleted, _ = await pipe.execute()
        except self._errors as exc:
            raise self._unavailable(exc) from None
        return bool(deleted)

    async def check(self) -> None:
        """Ask the server for a PONG; ConfigError naming why it did not answer."""
        try:
            await self.client.ping()
        except self._errors as exc:  # redis-py's messages name the host, never the password
            raise ConfigError(f"responses.store: the Redis server did not answer: {type(exc).__name__}: {exc}") \
                from None

    async def close(self) -> None:
        await self.client.aclose()


def open_store(config: ResponsesConfig) -> ResponseStore:
    if config.store == "memory":
        return MemoryStore(config.max_items, config.max_age_seconds)
    return RedisStore(config.store, config.max_items, config.max_age_seconds)


async def open_checked(config: ResponsesConfig) -> ResponseStore:
    """A store for a reloaded config, checked before it takes over: a missing ``redis`` package
    or a Redis that does not answer is a ConfigError (the reload is rejected, the old store stays).
    At start-up the store is opened unchecked: lookups answer 503 until Redis is there."""
    try:
        store = open_store(config)
    except RuntimeError as exc:
        raise ConfigError(f"responses.store: {exc}") from None
    if isinstance(store, RedisStore):
        try:
            await store.check()
        except ConfigError:
            await store.close()
            raise
    return store


class StoreSlot:
    """The app's response store and the ``responses:`` config it was opened for. A reload that
    changes the section puts a new store in (:meth:`reopen`, then :meth:`replace`); new requests
    get the new one, a request holds the store it began with (:meth:`use`) until it ends, and a
    replaced store is closed when the last request holding it ends. The memory store stays when
    only its limits change: it takes them, and keeps what it holds."""

    def __init__(self, config: ResponsesConfig, store: ResponseStore) -> None:
        self.config = config
        self.store = store
        self._users: dict[int, int] = {}  # id(store) -> requests holding it

    @contextlib.asynccontextmanager
    async def use(self) -> AsyncIterator[ResponseStore]:
        store, key = self.store, id(self.store)
        self._users[key] = self._users.get(key, 0) + 1
        try:
            yield store
        finally:
            left = self._users.pop(key) - 1
            if left:
                self._users[key] = left
            elif store is not self.store:  # replaced while in use: its last request closes it
                await store.close()

    async def reopen(self, config: ResponsesConfig) -> ResponseStore | None:
        """The store a reloaded ``responses:`` section needs, opened and checked (ConfigError
        when it cannot be); None when this one stays (the section unchanged, or memory still)."""
        if config == self.config or config.store == self.config.store == "memory":
            return None
        return await open_checked(config)

    async def replace(self, config: ResponsesConfig, store: ResponseStore | None) -> None:
        """Take a reloaded ``responses:`` section with the store :meth:`reopen` gave for it."""
        old, self.config = self.store, config
        if store is None:
            if isinstance(old, MemoryStore):
                old.max_items, old.max_age = config.max_items, config.max_age_seconds
            return
        self.store = store
        if id(old) not in self._users:
            await old.close()

    async def close(self) -> None:
        await self.store.close()
