"""Typed application state: the AppKeys every module reads the app's objects through."""

from __future__ import annotations

import asyncio

from aiohttp import web

from .backends import BackendPool
from .metrics.instruments import Metrics
from .metrics.scrape import RuntimeMetrics
from .middleware.auth import Keys
from .proxy import Proxy

POOL = web.AppKey("pool", BackendPool)
PROXY = web.AppKey("proxy", Proxy)
DRAINING = web.AppKey("draining", asyncio.Event)
METRICS = web.AppKey("metrics", Metrics)
RUNTIME_METRICS = web.AppKey("runtime_metrics", RuntimeMetrics)  # the backends' own, on /metrics
KEYS = web.AppKey("keys", Keys)
CONFIG_PATH: web.AppKey[str | None] = web.AppKey("config_path")
RELOADING = web.AppKey("reloading", asyncio.Lock)  # one reload at a time (reload.py)
