"""Typed application state: the AppKeys every module reads the app's objects through."""

from __future__ import annotations

import asyncio

from aiohttp import web

from .backends import BackendPool
from .config import Config
from .metrics.instruments import Metrics
from .proxy import Proxy

CONFIG = web.AppKey("config", Config)
POOL = web.AppKey("pool", BackendPool)
PROXY = web.AppKey("proxy", Proxy)
DRAINING = web.AppKey("draining", asyncio.Event)
METRICS = web.AppKey("metrics", Metrics)
