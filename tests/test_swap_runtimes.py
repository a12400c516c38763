"""Swapping runtimes mtproxy did not launch through their own APIs (Runtime.load / unload /
loaded): llama.cpp's router mode, Ollama, vLLM's sleep mode, each adapter against the fake of
that API (bench/fake_swap.py) on 127.0.0.1, the failures quoted, a load cut short by the caller."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from bench.fake_runtime import FakeRuntime
from mtproxy.runtimes import ADAPTERS, BackendHTTP, runtime_for
from mtproxy.runtimes.base import SwapFailed
from tests.conftest import until

MTPROXY = str(Path(__file__).resolve().parents[1] / "mtproxy")
Factory = Callable[..., Awaitable[FakeRuntime]]


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def backend(session: aiohttp.ClientSession, rt: FakeRuntime) -> BackendHTTP:
    return BackendHTTP(session, URL(rt.url), {}, 5)


def test_which_runtimes_swap() -> None:
    assert {name for name, cls in ADAPTERS.items() if cls.swaps} == {"llamacpp", "ollama", "vllm"}


async def test_others_cannot(runtime_factory: Factory, session: aiohttp.ClientSession) -> None:
    http = backend(session, await runtime_factory())
    sglang = runtime_for("sglang")
    assert await sglang.loaded(http, ("m1",)) is None
    with pytest.raises(NotImplementedError):
        await sglang.load(http, ("m1",))


# --- llama.cpp's router mode -------------------------------------------------------------------------

async def test_router_loads_and_unloads(runtime_factory: Factory, session: aiohttp.ClientSession) -> None:
    rt = await runtime_factory(models=["a", "b"], swap="llamacpp", load_seconds=0.3)
    http, llamacpp = backend(session, rt), runtime_for("llamacpp")
    assert await llamacpp.loaded(http, ("a",)) is False
    await llamacpp.load(http, ("a", "b"))
    assert rt.swapper is not None and rt.swapper.status == {"a": "loaded", "b": "loaded"}
    assert await llamacpp.loaded(http, ("a", "b")) is True
    await llamacpp.load(http, ("a",))  # loaded already: the router's 400 "model is already running"
    await llamacpp.unload(http, ("a",))
    assert rt.swapper.status == {"a": "unloaded", "b": "loaded"}
    assert await llamacpp.loaded(http, ("a", "b")) is False
    await llamacpp.unload(http, ("a",))  # unloaded already: 400 "model is not running"
    assert rt.swapper.calls == [("load", "a"), ("load", "b"), ("load", "a"), ("unload", "a"), ("unload", "a")]


async def test_router_load_failure_is_quoted(runtime_factory: Factory, session: aiohttp.ClientSession) -> None:
    rt = await runtime_factory(models=["good", "bad"], swap="llamacpp", fail_load=["bad"])
    with pytest.raises(SwapFailed, match=r"could not load bad: its process exited with code 1") as failed:
        await runtime_for("llamacpp").load(backend(session, rt), ("bad",))
    assert "failed" in failed.value.message


async def test_router_unknown_model(runtime_factory: Factory, session: aiohttp.ClientSession) -> None:
    rt = await runtime_factory(models=["a"], swap="llamacpp")
    with pytest.raises(SwapFailed, match=r"does not list nope .*HTTP 404: model is not found"):
        await runtime_for("llamacpp").load(backend(session, rt), ("nope",))


async def test_single_model_llama_server_refuses(runtime_factory: Factory, session: aiohttp.ClientSession) -> None:
    rt = await runtime_factory(models=["a"])  # no /models/load: llama-server started with -m
    http, llamacpp = backend(session, rt), runtime_for("llamacpp")
    with pytest.raises(SwapFailed, match=r"not in router mode.*--models-dir.*POST /models/load answered HTTP 404"):
        await llamacpp.load(http, ("a",))
    with pytest.raises(SwapFailed, match="not in router mode"):
        await llamacpp.unload(http, ("a",))
    assert await llamacpp.loaded(http, ("a",)) is None


async def test_router_fake_loads_on_request(runtime_factory: Factory, http: aiohttp.ClientSession) -> None:
    chat = {"model": "a", "messages": [{"role": "user", "content": "hi"}]}
    rt = await runtime_factory(models=["a"], swap="llamacpp", load_seconds=0.05)
    async with http.post(f"{rt.url}/v1/chat/completions", json=chat) as resp:
        assert resp.status == 200
    assert rt.swapper is not None and rt.swapper.status == {"a": "loaded"}
    off = await runtime_factory(models=["a"], swap="llamacpp", autoload=False)  # --no-models-autoload
    async with http.post(f"{off.url}/v1/chat/completions", json=chat) as resp:
        assert resp.status == 400 and (await resp.json())["error"]["message"] == "model is not loaded"


# --- Ollama ------------------------------------------------------------------------------------------------

async def test_ollama_loads_and_unloads(runtime_factory: Factory, session: aiohttp.ClientSession) -> None:
    rt = await runtime_factory(models=["llama3.2:latest", "qwen3:0.6b"], swap="ollama", load_seconds=0.2)
    http, ollama = backend(session, rt), runtime_for("ollama")
    assert await ollama.loaded(http, ("llama3.2",)) is False
    await ollama.load(http, ("llama3.2", "qwen3:0.6b"))  # /api/ps names it with its tag
    assert await ollama.loaded(http, ("llama3.2", "qwen3:0.6b")) is True
    assert rt.requests == [] and rt.swapper is not None
    await ollama.unload(http, ("llama3.2",))  # returns once /api/ps no longer lists it
    assert rt.swapper.status == {"llama3.2:latest": "unloaded", "qwen3:0.6b": "loaded"}
    assert await ollama.loaded(http, ("llama3.2",)) is False
    assert rt.swapper.calls == [("load", "llama3.2:latest"), ("load", "qwen3:0.6b"), ("unload", "llama3.2:latest")]


async def test_ollama_keeps_the_model_until_unloaded(session: aiohttp.ClientSession) -> None:
    sent: list[dict[str, Any]] = []

    async def generate(request: web.Request) -> web.Response:
        sent.append(await request.json())
        return web.json_response({"model": "m", "done": True, "done_reason": "load"})

    app = web.Application()
    app.router.add_post("/api/generate", generate)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        port = runner.addresses[0][1]
        await runtime_for("ollama").load(BackendHTTP(session, URL(f"http://127.0.0.1:{port}"), {}, 5), ("m",))
    finally:
        await runner.cleanup()
    # -1 (a number): loaded for good; Ollama refuses the string "-1" (no unit)
    assert sent == [{"model": "m", "keep_alive": -1, "stream": False}]


async def test_ollama_failures_are_quoted(runtime_factory: Factory, session: aiohttp.ClientSession) -> None:
    rt = await runtime_factory(models=["m:latest"], swap="ollama", fail_load=["m:latest"])
    http, ollama = backend(session, rt), runtime_for("ollama")
    with pytest.raises(SwapFailed, match=r"Ollama could not load m: .*HTTP 500: llama runner process has terminated"):
        await ollama.load(http, ("m",))
    with pytest.raises(SwapFailed, match=r"could not unload other: .*HTTP 404: model 'other' not found"):
        await ollama.unload(http, ("other",))


# --- vLLM's sleep mode ---------------------------------------------------------------------------------

async def test_vllm_sleeps_and_wakes(runtime_factory: Factory, session: aiohttp.ClientSession) -> None:
    rt = await runtime_factory(models=["m"], swap="vllm", load_seconds=0.2)
    http, vllm = backend(session, rt), runtime_for("vllm")
    assert await vllm.loaded(http, ("m",)) is True
    await vllm.unload(http, ("m",))
    assert await vllm.loaded(http, ("m",)) is False
    await vllm.load(http, ("m",))
    assert await vllm.loaded(http, ("m",)) is True
    assert rt.swapper is not None and rt.swapper.calls == [("sleep", "1"), ("wake_up", "")]


async def test_vllm_without_dev_mode(runtime_factory: Factory, session: aiohttp.ClientSession) -> None:
    rt = await runtime_factory(models=["m"])  # no /sleep: VLLM_SERVER_DEV_MODE unset
    http, vllm = backend(session, rt), runtime_for("vllm")
    with pytest.raises(SwapFailed, match=r"no POST /sleep: start it with VLLM_SERVER_DEV_MODE=1 .*--enable-sleep-mode"):
        await vllm.unload(http, ("m",))
    with pytest.raises(SwapFailed, match="VLLM_SERVER_DEV_MODE=1"):
        await vllm.load(http, ("m",))
    assert await vllm.loaded(http, ("m",)) is None


async def test_vllm_fake_holds_requests_while_asleep(runtime_factory: Factory, session: aiohttp.ClientSession,
                                                     http: aiohttp.ClientSession) -> None:
    rt = await runtime_factory(models=["m"], swap="vllm")
    vllm, backend_http = runtime_for("vllm"), backend(session, rt)
    await vllm.unload(backend_http, ("m",))
    chat = http.post(f"{rt.url}/v1/chat/completions", json={"model": "m", "messages": []})
    pending = asyncio.ensure_future(chat)
    await until(lambda: len(rt.requests) == 1)
    assert not pending.done()  # held by the paused scheduler
    await vllm.load(backend_http, ("m",))
    async with await pending as resp:
        assert resp.status == 200


# --- a load the caller cuts short --------------------------------------------------------------------------

@pytest.mark.parametrize("runtime", ["llamacpp", "ollama", "vllm"])
async def test_a_load_that_never_ends_is_cancelled(runtime: str, runtime_factory: Factory,
                                                   session: aiohttp.ClientSession) -> None:
    rt = await runtime_factory(models=["m:latest"], swap=runtime, load_seconds=None)
    http, adapter = backend(session, rt), runtime_for(runtime)
    if runtime == "vllm":
        await adapter.unload(http, ("m:latest",))
    assert await adapter.loaded(http, ("m:latest",)) is False
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.5):
            await adapter.load(http, ("m:latest",))

    def left_behind() -> list[asyncio.Task[Any]]:  # tasks running mtproxy's code
        return [t for t in asyncio.all_tasks() if not t.done()
                and getattr(t.get_coro(), "cr_code", None) is not None
                and t.get_coro().cr_code.co_filename.startswith(MTPROXY)]  # type: ignore[union-attr]

    await until(lambda: not left_behind())
    assert await adapter.loaded(http, ("m:latest",)) is False  # the session still serves
