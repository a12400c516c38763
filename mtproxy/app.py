"""The one app factory. Typed state lives in AppKeys; resources are owned by ``cleanup_ctx``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry, ProcessCollector

from . import front, handlers, ui
from .backends import BackendPool
from .config import Config
from .metrics.export import metrics_handler
from .metrics.instruments import Metrics
from .metrics.scrape import RuntimeMetrics, names
from .metrics.window import TokenWindow
from .middleware import Keys, add_cors, front_door
from .proxy import Proxy
from .state import CONFIG_PATH, DRAINING, KEYS, METRICS, POOL, PROXY, RELOADING, RUNTIME_METRICS

log = logging.getLogger("mtproxy")


def create_app(config: Config, *, registry: CollectorRegistry | None = None,
               config_path: str | None = None) -> web.Application:
    """The proxy as an aiohttp app. prometheus_client's metrics go to ``registry`` (a fresh one
    by default, so apps and tests never share state through a module global), the request
    families to a registry of their own (metrics/lean.py), and ``/metrics`` serves both; the
    metrics read the backend pool handed to them here. ``config_path`` is what a reload
    (SIGHUP, ``POST /mtproxy/reload``) reads again."""
    app = web.Application(middlewares=[front_door(_keys, _cors_origins, front.error_shape)],
                          client_max_size=config.server.max_body_bytes)
    app[CONFIG_PATH] = config_path
    app[RELOADING] = asyncio.Lock()
    app[KEYS] = Keys(config)
    app[POOL] = BackendPool(config)
    if registry is None:
        registry = CollectorRegistry()
        ProcessCollector(registry=registry)
    app[METRICS] = metrics = Metrics(registry, app[POOL], TokenWindow(config.metrics.window_seconds))
    app[RUNTIME_METRICS] = RuntimeMetrics(app[POOL], metrics.runtime_errors,
                                          reserved=(n for m in metrics.lean.describe() for n in names(m)))
    app[DRAINING] = asyncio.Event()
    app.cleanup_ctx.append(_client_session)
    app.cleanup_ctx.append(_health_checks)
    app.cleanup_ctx.append(front.responses.store_context)  # /v1/responses' store
    ui.setup(app)  # the page at /ui: its hub hears of every finished request (proxy.observer)
    app.on_shutdown.append(_start_draining)
    handlers.add_routes(app)
    app.router.add_get("/metrics", metrics_handler(app[METRICS], app[RUNTIME_METRICS]))
    front.add_routes(app)
    add_cors(app, _cors_origins)
    return app


def _keys(app: web.Application) -> Keys:
    return app[KEYS]


def _cors_origins(app: web.Application) -> list[str]:
    return app[POOL].config.server.cors_origins


async def _client_session(app: web.Application) -> AsyncIterator[None]:
    t = app[POOL].config.timeouts
    connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, enable_cleanup_closed=True)
    session = aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=t.connect),
        skip_auto_headers=("User-Agent", "Accept-Encoding"),
        raise_for_status=False,
        # one session serves every client: a cookie a backend sets must not ride along with the
        # next client's requests
        cookie_jar=aiohttp.DummyCookieJar(),
    )
    app[PROXY] = Proxy(app[POOL].config, app[POOL], session, app[METRICS])
    app[RUNTIME_METRICS].session = session
    try:
        yield
    finally:
        await app[RUNTIME_METRICS].close()  # its reads in flight use the session
        await session.close()


async def _health_checks(app: web.Application) -> AsyncIterator[None]:
    pool, session = app[POOL], app[PROXY].session
    pool.start_managed(session, app[METRICS].swaps)  # its tasks are the pool's, cancelled by stop_managed
    await pool.probe_all(session)
    health = asyncio.create_task(pool.run(session), name="mtproxy-health")
    try:
        yield
    finally:
        health.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await health
        await pool.stop_managed()  # children never outlive the proxy


async def _start_draining(app: web.Application) -> None:
    app[DRAINING].set()
