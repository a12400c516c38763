"""The relay through real sockets: fake runtimes on loopback, raw aiohttp as the client."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from .conftest import make_config

CHAT = "/v1/chat/completions"


def chat_body(model: str = "m1", **extra) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}


def sse_events(raw: bytes) -> list[bytes]:
    assert raw.endswith(b"\n\n"), raw[-80:]
    return [e for e in raw.split(b"\n\n") if e]


async def test_non_streaming_chat_is_relayed_with_backend_headers(runtime_factory, proxy_factory, http):
    rt = await runtime_factory("a")
    proxy = await proxy_factory(make_config([{"name": "a", "runtime": "vllm", "url": rt.url}]))
    async with http.post(proxy.url + CHAT, json=chat_body()) as resp:
        assert resp.status == 200
        assert resp.headers["x-mtproxy-backend"] == "a"
        assert resp.headers["x-mtproxy-mtp"] == "off"
        data = await resp.json()
    assert data["choices"][0]["message"]["content"] == "Hello world"
    assert rt.requests[0]["messages"] == [{"role": "user", "content": "hi"}]


async def test_stream_is_relayed_chunk_by_chunk_before_upstream_finishes(runtime_factory, proxy_factory, http):
    gate = asyncio.Event()
    rt = await runtime_factory("a", gate=gate)
    proxy = await proxy_factory(make_config([{"name": "a", "runtime": "llamacpp", "url": rt.url}]))
    async with http.post(proxy.url + CHAT, json=chat_body(stream=True)) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        assert resp.headers["X-Accel-Buffering"] == "no"
        assert resp.headers["x-mtproxy-backend"] == "a"
        # the runtime is held after its first token: that token must already reach the client
        first = await asyncio.wait_for(resp.content.readuntil(b"\n\n"), 10)
        assert b'"Hel"' in first
        assert not gate.is_set()
        gate.set()
        rest = await resp.read()
    events = sse_events(first + rest)
    assert events[-1] == b"data: [DONE]"
    text = "".join(orjson.loads(e[6:])["choices"][0]["delta"].get("content") or "" for e in events[:-1])
    assert text == "Hello world"


async def test_events_split_across_reads_reach_the_client_whole(runtime_factory, proxy_factory, http):
    rt = await runtime_factory("a", split_events=True)
    proxy = await proxy_factory(make_config([{"name": "a", "runtime": "vllm", "url": rt.url}]))
    async with http.post(proxy.url + "/v1/completions", json={"model": "m1", "prompt": "x", "stream": True}) as resp:
        chunks = [c async for c in resp.content.iter_any()]
    for c in chunks:  # every read the client made ends on an event boundary
        assert c.endswith(b"\n\n")
    events = sse_events(b"".join(chunks))
    assert [orjson.loads(e[6:])["choices"][0]["text"] for e in events[:4]] == ["Hel", "lo", " wor", "ld"]
    assert events[-1] == b"data: [DONE]"


async def test_models_is_the_union_of_backends_and_aliases(runtime_factory, proxy_factory, http):
    a = await runtime_factory("a", models=["m1", "shared"])
    b = await runtime_factory("b", models=["m2", "shared"])
    cfg = make_config([
        {"name": "a", "runtime": "vllm", "url": a.url},
        {"name": "b", "runtime": "sglang", "url": b.url},
        {"name": "c", "runtime": "mlx", "url": "http://127.0.0.1:9", "models": ["configured"]},
    ], models={"m1": {"aliases": ["first"]}})
    proxy = await proxy_factory(cfg)
    async with http.get(proxy.url + "/v1/models") as resp:
        data = await resp.json()
    by_id = {m["id"]: m for m in data["data"]}
    assert set(by_id) == {"m1", "shared", "m2", "configured", "first"}
    assert by_id["shared"]["mtproxy"]["backends"] == ["a", "b"]
    assert by_id["first"]["mtproxy"]["alias_of"] == "m1"


@pytest.mark.parametrize("status, body, message, type_", [
    (400, b'{"object":"error","message":"bad temperature","type":"BadRequestError","param":null,"code":400}',
     "bad temperature", "BadRequestError"),
    (400, b'{"error":{"code":400,"message":"messages must be an array","type":"invalid_request_error"}}',
     "messages must be an array", "invalid_request_error"),
    (404, b'{"error":"model \\"x\\" not found, try pulling it first"}',
     'model "x" not found, try pulling it first', "invalid_request_error"),
    (422, b"Unprocessable: plain text", "Unprocessable: plain text", "invalid_request_error"),
    (500, b"", "backend answered HTTP 500", "server_error"),
])
async def test_upstream_errors_pass_through_normalised(runtime_factory, proxy_factory, http,
                                                        status, body, message, type_):
    rt = await runtime_factory("a", status=status, error_body=body)
    proxy = await proxy_factory(make_config([{"name": "a", "runtime": "vllm", "url": rt.url}]))
    for stream in (False, True):
        async with http.post(proxy.url + CHAT, json=chat_body(stream=stream)) as resp:
            assert resp.status == status
            assert resp.headers["x-mtproxy-backend"] == "a"
            err = (await resp.json())["error"]
        assert err["message"] == message
        assert err["type"] == type_


async def test_refused_backend_is_marked_down_and_request_retried(runtime_factory, proxy_factory, http):
    a = await runtime_factory("a")
    b = await runtime_factory("b")
    cfg = make_config([{"name": "a", "runtime": "vllm", "url": a.url},
                       {"name": "b", "runtime": "vllm", "url": b.url}], health={"interval": 3600})
    proxy = await proxy_factory(cfg)
    await a.stop()  # now refuses connections; the health loop will not notice for an hour
    pool = proxy.app[__import__("mtproxy.state").state.POOL]
    backend_a = pool.backends[0]
    for stream in (False, True, False, True):
        async with http.post(proxy.url + CHAT, json=chat_body(stream=stream)) as resp:
            assert resp.status == 200
            assert resp.headers["x-mtproxy-backend"] == "b"
            await resp.read()
    assert not backend_a.up
    assert "cannot connect" in backend_a.detail
    assert len(b.requests) == 4


async def test_503_before_first_byte_is_retried_on_the_next_candidate(runtime_factory, proxy_factory, http):
    a = await runtime_factory("a", status=503, error_body=b'{"error":{"message":"Loading model","code":503}}')
    b = await runtime_factory("b")
    proxy = await proxy_factory(make_config([{"name": "a", "runtime": "llamacpp", "url": a.url},
                                             {"name": "b", "runtime": "llamacpp", "url": b.url}]))
    for _ in range(3):
        async with http.post(proxy.url + CHAT, json=chat_body(stream=True)) as resp:
            assert resp.status == 200
            assert resp.headers["x-mtproxy-backend"] == "b"
            assert (await resp.read()).endswith(b"data: [DONE]\n\n")
    assert len(b.requests) == 3


async def test_500_before_first_byte_is_retried_on_another_backend(runtime_factory, proxy_factory, http):
    # what llama-server (and Ollama) answer when a model fails to load
    a = await runtime_factory("a", status=500, error_body=b'{"error":{"code":500,"message":'
                              b'"failed to load model","type":"server_error"}}')
    b = await runtime_factory("b")
    proxy = await proxy_factory(make_config([{"name": "a", "runtime": "llamacpp", "url": a.url},
                                             {"name": "b", "runtime": "llamacpp", "url": b.url}]))
    for stream in (False, True, False, True):
        async with http.post(proxy.url + CHAT, json=chat_body(stream=stream)) as resp:
            assert resp.status == 200
            assert resp.headers["x-mtproxy-backend"] == "b"
            await resp.read()
    assert a.requests and len(b.requests) == 4  # a was tried, each request at most once there


async def test_a_500_the_adapter_calls_the_clients_mistake_is_not_retried(runtime_factory, proxy_factory, http):
    # llama-cpp-python answers a request failing validation with 500; its adapter makes it a 400
    from pathlib import Path
    body = (Path(__file__).parent / "data" / "llama-cpp-python" / "error_validation.body").read_bytes()
    routes = {"/openapi.json": {"info": {"version": "0.3.16"}}}
    a = await runtime_factory("a", status=500, error_body=body, routes=routes)
    b = await runtime_factory("b", routes=routes)
    proxy = await proxy_factory(make_config([{"name": "a", "runtime": "llama-cpp-python", "url": a.url},
                                             {"name": "b", "runtime": "llama-cpp-python", "url": b.url}]))
    answers = []
    for _ in range(2):  # ties rotate: one of them lands on a
        async with http.post(proxy.url + CHAT, json=chat_body()) as resp:
            answers.append((resp.headers["x-mtproxy-backend"], resp.status))
    assert sorted(answers) == [("a", 400), ("b", 200)]
    assert len(b.requests) == 1


async def test_only_candidate_503_is_passed_through(runtime_factory, proxy_factory, http):
    a = await runtime_factory("a", status=503, error_body=b'{"error":{"message":"Loading model","code":503}}')
    proxy = await proxy_factory(make_config([{"name": "a", "runtime": "llamacpp", "url": a.url}]))
    async with http.post(proxy.url + CHAT, json=chat_body()) as resp:
        assert resp.status == 503
        assert (await resp.json())["error"]["message"] == "Loading model"


@pytest.mark.parametrize("behaviour, code", [
    ({"die_after": 2}, "upstream_stream_error"),
    ({"send_done": False}, "upstream_stream_error"),
])
async def test_failure_after_first_byte_becomes_sse_error_then_done(runtime_factory, proxy_factory, http,
                                                                    behaviour, code):
    rt = await runtime_factory("a", **behaviour)
    proxy = await proxy_factory(make_config([{"name": "a", "runtime": "vllm", "url": rt.url}]))
    async with http.post(proxy.url + CHAT, json=chat_body(stream=True)) as resp:
        assert resp.status == 200
        raw = await resp.read()
    events = sse_events(raw)
    assert events[-1] == b"data: [DONE]"
    assert events[-2].startswith(b"event: error\ndata: ")
    err = orjson.loads(events[-2].split(b"data: ", 1)[1])["error"]
    assert err["code"] == code
    for e in events[:-2]:  # everything before the error is a whole, parseable chunk
        orjson.loads(e[6:])


async def test_first_token_timeout_is_504(runtime_factory, proxy_factory, http):
    rt = await runtime_factory("a", first_token_delay=30)
    proxy = await proxy_factory(make_config([{"name": "a", "runtime": "vllm", "url": rt.url}],
                                            timeouts={"first_token": 0.3, "request": 0.3}))
    for stream in (True, False):
        async with http.post(proxy.url + CHAT, json=chat_body(stream=stream)) as resp:
            assert resp.status == 504
            assert (await resp.json())["error"]["code"] == "upstream_timeout"


async def test_idle_timeout_mid_stream_ends_with_error_event_and_closes_upstream(runtime_factory, proxy_factory, http):
    rt = await runtime_factory("a", gate=asyncio.Event())  # never opened: silence after one token
    proxy = await proxy_factory(make_config([{"name": "a", "runtime": "vllm", "url": rt.url}],
                                            timeouts={"idle": 0.3}))
    async with http.post(proxy.url + CHAT, json=chat_body(stream=True)) as resp:
        raw = await resp.read()
    events = sse_events(raw)
    assert b'"Hel"' in events[0]
    assert b"upstream_timeout" in events[-2]
    assert events[-1] == b"data: [DONE]"
    await asyncio.wait_for(rt.closed_early.wait(), 10)


async def test_client_disconnect_mid_stream_closes_upstream(runtime_factory, proxy_factory, http):
    rt = await runtime_factory("a", gate=asyncio.Event())
    proxy = await proxy_factory(make_config([{"name": "a", "runtime": "vllm", "url": rt.url}]))
    pool = proxy.app[__import__("mtproxy.state").state.POOL]
    resp = await http.post(proxy.url + CHAT, json=chat_body(stream=True))
    await resp.content.readuntil(b"\n\n")
    assert pool.backends[0].outstanding == 1
    resp.close()  # the client goes away mid-stream
    await asyncio.wait_for(rt.closed_early.wait(), 10)
    for _ in range(100):
        if pool.backends[0].outstanding == 0:
            break
        await asyncio.sleep(0.02)
    assert pool.backends[0].outstanding == 0


async def test_client_disconnect_before_first_token_closes_upstream(runtime_factory, proxy_factory, http):
    rt = await runtime_factory("a", first_token_delay=30)
    proxy = await proxy_factory(make_config([{"name": "a", "runtime": "vllm", "url": rt.url}]))
    task = asyncio.ensure_future(http.post(proxy.url + CHAT, json=chat_body(stream=True)))
    await asyncio.wait_for(rt.stream_started.wait(), 10)
    task.cancel()
    await asyncio.wait_for(rt.closed_early.wait(), 10)


async def test_api_keys(runtime_factory, proxy_factory, http):
    rt = await runtime_factory("a")
    cfg = make_config([{"name": "a", "runtime": "vllm", "url": rt.url, "api_key": "upstream-secret"}],
                      server={"api_keys": ["k1", "k2"]})
    proxy = await proxy_factory(cfg)
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic k1"}):
        async with http.post(proxy.url + CHAT, json=chat_body(), headers=headers) as resp:
            assert resp.status == 401
            body = await resp.text()
            assert orjson.loads(body)["error"]["code"] == "invalid_api_key"
            assert "k1" not in body and "upstream-secret" not in body
    for headers in ({"Authorization": "Bearer k2"}, {"x-api-key": "k1"}):
        async with http.post(proxy.url + CHAT, json=chat_body(), headers=headers) as resp:
            assert resp.status == 200
    # the client's key never travels upstream; the backend's own key does
    assert [h["Authorization"] for h in rt.headers] == ["Bearer upstream-secret"] * 2
    async with http.get(proxy.url + "/health") as resp:
        assert resp.status == 200
    async with http.get(proxy.url + "/v1/models") as resp:
        assert resp.status == 401


async def test_a_stream_slower_than_the_idle_timeout_in_total_but_not_between_chunks_completes(
        runtime_factory, proxy_factory, http):
    # 12 chunks 0.1 s apart: 1.2 s in all, 0.5 s idle timeout; the idle watch re-arms on every chunk
    rt = await runtime_factory("a", tokens=[f"t{i} " for i in range(12)], rate=10.0)
    proxy = await proxy_factory(make_config([{"name": "a", "runtime": "vllm", "url": rt.url}],
                                            timeouts={"idle": 0.5}))
    async with http.post(proxy.url + CHAT, json=chat_body(stream=True)) as resp:
        raw = await resp.read()
    events = sse_events(raw)
    assert events[-1] == b"data: [DONE]"
    assert not any(b"upstream_timeout" in e for e in events)
    assert sum(b'"t' in e for e in events) == 12
