from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from bench.fake_runtime import Behaviour, FakeRuntime
from mtproxy.app import create_app
from mtproxy.config import Config
from mtproxy.server import start


def make_config(backends: list[dict[str, Any]], **extra: Any) -> Config:
    data: dict[str, Any] = {"backends": backends, "health": {"interval": 0.2, "timeout": 1}}
    data.update(extra)
    return Config.model_validate(data)


async def until(predicate: Callable[[], bool], seconds: float = 10.0) -> None:
    """Wait until ``predicate()`` holds, at most ``seconds``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not predicate():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


class Proxy:
    def __init__(self, app, runner, port: int) -> None:
        self.app = app
        self.runner = runner
        self.port = port
        self.url = f"http://127.0.0.1:{port}"


@pytest.fixture
async def runtime_factory() -> AsyncIterator[Callable[..., Awaitable[FakeRuntime]]]:
    started: list[FakeRuntime] = []

    async def factory(name: str = "fake", **behaviour: Any) -> FakeRuntime:
        rt = await FakeRuntime(name, Behaviour(**behaviour)).start()
        started.append(rt)
        return rt

    yield factory
    for rt in started:
        await rt.stop()


@pytest.fixture
async def proxy_factory() -> AsyncIterator[Callable[[Config], Awaitable[Proxy]]]:
    started: list[Proxy] = []

    async def factory(config: Config) -> Proxy:
        app = create_app(config)
        runner, port = await start(app, "127.0.0.1", 0, shutdown_grace=2)
        proxy = Proxy(app, runner, port)
        started.append(proxy)
        return proxy

    yield factory
    for p in started:
        await p.runner.cleanup()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session
