"""Routing (mtproxy/router.py): model name or alias → the backends serving it → the healthy one
with the fewest outstanding requests; none healthy is a 503 that says why. MTP-aware routing is
in test_mtp.py, per-backend caps in test_limits.py."""

from __future__ import annotations

import asyncio

from .conftest import make_config

CHAT = "/v1/chat/completions"


def chat_body(model: str = "m1", **extra) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}


async def test_alias_is_rewritten_to_the_served_model(runtime_factory, proxy_factory, http):
    rt = await runtime_factory("a", models=["deepseek-v3"])
    cfg = make_config([{"name": "a", "runtime": "vllm", "url": rt.url}],
                      models={"deepseek-v3": {"aliases": ["dsv3"]}})
    proxy = await proxy_factory(cfg)
    async with http.post(proxy.url + CHAT, json=chat_body("dsv3", temperature=0)) as resp:
        assert resp.status == 200
    assert rt.requests[0]["model"] == "deepseek-v3"
    assert rt.requests[0]["temperature"] == 0


async def test_least_outstanding_backend_is_chosen(runtime_factory, proxy_factory, http):
    gate = asyncio.Event()
    a = await runtime_factory("a", gate=gate)
    b = await runtime_factory("b", gate=gate)
    proxy = await proxy_factory(make_config([
        {"name": "a", "runtime": "vllm", "url": a.url}, {"name": "b", "runtime": "vllm", "url": b.url}]))

    async def one():
        resp = await http.post(proxy.url + CHAT, json=chat_body(stream=True))
        await resp.content.readuntil(b"\n\n")
        return resp.headers["x-mtproxy-backend"], asyncio.ensure_future(resp.read())

    first, rest1 = await one()
    second, rest2 = await one()  # the first backend has one stream open: the other one is chosen
    assert {first, second} == {"a", "b"}
    gate.set()
    for rest in await asyncio.gather(rest1, rest2):
        assert rest.endswith(b"data: [DONE]\n\n")


async def test_no_healthy_backend_is_503(runtime_factory, proxy_factory, http):
    rt = await runtime_factory("a", healthy=False)
    proxy = await proxy_factory(make_config([{"name": "a", "runtime": "vllm", "url": rt.url, "models": ["m1"]}]))
    async with http.post(proxy.url + CHAT, json=chat_body()) as resp:
        assert resp.status == 503
        err = (await resp.json())["error"]
    assert err["code"] == "no_backend_available"
    assert "a: down (/health answered HTTP 503)" in err["message"]
    async with http.get(proxy.url + "/ready") as resp:
        assert resp.status == 503
    async with http.get(proxy.url + "/health") as resp:
        assert resp.status == 200
    rt.b.healthy = True  # the background health check brings it back
    for _ in range(100):
        async with http.get(proxy.url + "/ready") as resp:
            if resp.status == 200:
                break
        await asyncio.sleep(0.05)
    async with http.post(proxy.url + CHAT, json=chat_body()) as resp:
        assert resp.status == 200
