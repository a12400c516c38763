"""llama-cpp-python's server as it really behaves (0.3.36, with the FastAPI its [server] extra
installs), and what the proxy must absorb. The plain requests are in test_end_to_end.py; here:
errors, and the server's single model lock, which its own /v1/models takes too.

Each of these was a proxy bug found against the real server, and is fixed.
"""

from __future__ import annotations

import asyncio

import aiohttp

from .conftest import MODEL
from .helpers import STORY, backend, client, get_json, start_proxy

EOS = "2"  # SmolLM2's <|im_end|>: banned below, so a generation runs to max_tokens


async def test_malformed_body_is_answered_by_the_proxy(llama_cpp_python, proxy_factory):
    proxy = await start_proxy(proxy_factory, backend("lcp", "llama-cpp-python", llama_cpp_python.url))
    async with aiohttp.ClientSession() as http:
        # llama-cpp-python itself answers this with a text/plain 500
        async with http.post(llama_cpp_python.url + "/v1/chat/completions", data=b'{"model": "x", bad',
                             headers={"Content-Type": "application/json"}) as resp:
            assert resp.status == 500
        async with http.post(proxy.url + "/v1/chat/completions", data=b'{"model": "x", bad',
                             headers={"Content-Type": "application/json"}) as resp:
            assert resp.status == 400
            assert "x-mtproxy-backend" not in resp.headers  # never sent upstream
            err = (await resp.json())["error"]
            assert err["type"] == "invalid_request_error" and "JSON" in err["message"]


async def test_validation_error_becomes_400(llama_cpp_python, proxy_factory):
    proxy = await start_proxy(proxy_factory, backend("lcp", "llama-cpp-python", llama_cpp_python.url))
    body = {"model": MODEL, "messages": "not a list"}
    async with aiohttp.ClientSession() as http:
        async with http.post(llama_cpp_python.url + "/v1/chat/completions", json=body) as resp:
            assert resp.status == 500  # the runtime's own answer
            assert "validation error" in (await resp.json())["error"]["message"]
        async with http.post(proxy.url + "/v1/chat/completions", json=body) as resp:
            err = (await resp.json())["error"]
            assert resp.status == 400, err
            assert err["type"] == "invalid_request_error"


async def test_stream_survives_health_probes(llama_cpp_python, proxy_factory):
    proxy = await start_proxy(proxy_factory, backend("lcp", "llama-cpp-python", llama_cpp_python.url),
                              health={"interval": 0.2, "timeout": 30})
    async with client(proxy) as c:
        stream = await c.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": STORY}], max_tokens=150, temperature=0,
            stream=True, logit_bias={EOS: -100})
        finish = None
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].finish_reason:
                finish = chunk.choices[0].finish_reason
    assert finish == "length"


async def test_backend_stays_up_during_a_long_request(llama_cpp_python, proxy_factory):
    proxy = await start_proxy(proxy_factory, backend("lcp", "llama-cpp-python", llama_cpp_python.url),
                              health={"interval": 0.2, "timeout": 0.5})
    async with client(proxy) as c:
        task = asyncio.create_task(c.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": STORY}], max_tokens=150, temperature=0,
            logit_bias={EOS: -100}))
        up = []
        while not task.done():
            state = await get_json(proxy.url + "/mtproxy/backends")
            up.append(state["backends"][0]["up"])
            await asyncio.sleep(0.2)
        resp = await task
    assert resp.choices[0].finish_reason == "length"
    assert up and all(up), f"backend seen down {up.count(False)} times of {len(up)} while it was generating"
