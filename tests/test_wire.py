"""Requests the proxy refuses (mtproxy/wire.py, the body limit): OpenAI errors naming the field,
and nothing reaches the runtime. Generated hostile input is in test_hostile_input.py."""

from __future__ import annotations

import orjson
import pytest

from .conftest import make_config

CHAT = "/v1/chat/completions"


def chat_body(model: str = "m1", **extra) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}


@pytest.mark.parametrize("body, status, param", [
    (b"{not json", 400, None),
    (b"[1, 2]", 400, None),
    (orjson.dumps({"messages": []}), 400, "model"),
    (orjson.dumps({"model": 7}), 400, "model"),
    (orjson.dumps({"model": "m1", "stream": "yes"}), 400, "stream"),
    (orjson.dumps({"model": "nope"}), 404, "model"),
])
async def test_bad_requests_get_openai_errors(runtime_factory, proxy_factory, http, body, status, param):
    rt = await runtime_factory("a")
    proxy = await proxy_factory(make_config([{"name": "a", "runtime": "vllm", "url": rt.url}]))
    async with http.post(proxy.url + CHAT, data=body, headers={"Content-Type": "application/json"}) as resp:
        assert resp.status == status
        err = (await resp.json())["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["param"] == param
    if status == 404:
        assert err["code"] == "model_not_found"
    assert rt.requests == []


async def test_too_large_body_is_413_and_unknown_route_is_404(runtime_factory, proxy_factory, http):
    rt = await runtime_factory("a")
    proxy = await proxy_factory(make_config([{"name": "a", "runtime": "vllm", "url": rt.url}],
                                            server={"max_body_bytes": 1000}))
    async with http.post(proxy.url + CHAT, json=chat_body(pad="x" * 5000)) as resp:
        assert resp.status == 413
        assert (await resp.json())["error"]["code"] == "request_too_large"
    async with http.get(proxy.url + "/v1/nothing") as resp:
        assert resp.status == 404
        assert "error" in await resp.json()
