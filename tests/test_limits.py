"""Caps and queueing (mtproxy/limits.py, per-backend `max_concurrent`): beyond the total cap a
request waits in a bounded queue, then gets 429; a full backend spills to another one."""

from __future__ import annotations

import asyncio

from mtproxy.state import PROXY

from .conftest import make_config, until

CHAT = {"model": "m1", "messages": [{"role": "user", "content": "hi"}]}


async def test_total_cap_queues_then_answers_429(runtime_factory, proxy_factory, http):
    gate = asyncio.Event()
    rt = await runtime_factory("a", models=["m1"], gate=gate)
    proxy = await proxy_factory(make_config([{"name": "a", "runtime": "vllm", "url": rt.url}],
                                            limits={"max_concurrent": 2, "max_queue": 1, "queue_timeout": 5}))
    streams = [await http.post(proxy.url + "/v1/chat/completions", json={**CHAT, "stream": True}) for _ in range(2)]
    for s in streams:
        await s.content.readuntil(b"\n\n")
    queued = asyncio.ensure_future(http.post(proxy.url + "/v1/chat/completions", json=CHAT))
    await until(lambda: len(proxy.app[PROXY].gate.waiters) == 1)
    async with http.post(proxy.url + "/v1/chat/completions", json=CHAT) as resp:  # queue full
        assert resp.status == 429
        assert resp.headers["Retry-After"] == "1"
        assert (await resp.json())["error"]["code"] == "overloaded"
    assert len(rt.requests) == 2  # the queued request has not reached the runtime
    gate.set()
    for s in streams:
        await s.read()
    resp = await queued
    assert resp.status == 200  # it got the freed slot
    await resp.read()


async def test_queue_timeout_is_429(runtime_factory, proxy_factory, http):
    rt = await runtime_factory("a", models=["m1"], gate=asyncio.Event())
    proxy = await proxy_factory(make_config([{"name": "a", "runtime": "vllm", "url": rt.url, "max_concurrent": 1}],
                                            limits={"queue_timeout": 0.3}))
    held = await http.post(proxy.url + "/v1/chat/completions", json={**CHAT, "stream": True})
    await held.content.readuntil(b"\n\n")
    async with http.post(proxy.url + "/v1/chat/completions", json=CHAT) as resp:  # the backend is full
        assert resp.status == 429
        assert "No free slot" in (await resp.json())["error"]["message"]
    held.close()


async def test_per_backend_cap_spills_to_the_other_backend(runtime_factory, proxy_factory, http):
    gate = asyncio.Event()
    a = await runtime_factory("a", models=["m1"], gate=gate)
    b = await runtime_factory("b", models=["m1"], gate=gate)
    proxy = await proxy_factory(make_config([
        {"name": "a", "runtime": "vllm", "url": a.url, "max_concurrent": 1},
        {"name": "b", "runtime": "vllm", "url": b.url, "max_concurrent": 1}]))
    s1 = await http.post(proxy.url + "/v1/chat/completions", json={**CHAT, "stream": True})
    s2 = await http.post(proxy.url + "/v1/chat/completions", json={**CHAT, "stream": True})
    assert {s1.headers["x-mtproxy-backend"], s2.headers["x-mtproxy-backend"]} == {"a", "b"}
    third = asyncio.ensure_future(http.post(proxy.url + "/v1/chat/completions", json={**CHAT, "stream": True}))
    await until(lambda: len(proxy.app[PROXY].backend_waiters) == 1)
    gate.set()
    for s in (s1, s2):
        await s.read()
    resp = await third
    assert resp.status == 200
    await resp.read()
