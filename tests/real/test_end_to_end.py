"""The proxy in front of REAL runtimes, driven by the official openai client.

llama.cpp's llama-server, the embedded runtime (llama.cpp's server from the xllamacpp wheel) and
llama-cpp-python's server, each serving SmolLM2-135M on CPU (fixtures in conftest.py); the proxy
runs in-process, as in the other tests. Every backend is configured without `models`, so model
discovery is exercised by every test.
"""

from __future__ import annotations

import asyncio
import importlib.metadata

import aiohttp
import openai
import pytest

from .conftest import MODEL, RealServer, get_text
from .conftest import get_json as get_json_sync
from .helpers import MAX_TOKENS, STORY, backend, client, get_json, labels_of, metrics, start_proxy, value

# test id: (fixture, the backend's `runtime`); the embedded runtime is a llama.cpp server to the proxy
RUNTIMES = {"llamacpp": ("llama_server", "llamacpp"), "embedded": ("embedded_server", "llamacpp"),
            "llama-cpp-python": ("llama_cpp_python", "llama-cpp-python")}
LLAMA_SERVERS = ["llama_server", "embedded_server"]  # the two llama.cpp servers, for tests of both
CASES = [  # endpoint, stream, include_usage (None: not asked at all)
    ("chat", False, None),
    ("chat", True, None),
    ("chat", True, False),
    ("chat", True, True),
    ("completions", False, None),
    ("completions", True, None),
    ("completions", True, True),
]


@pytest.fixture(params=list(RUNTIMES))
def runtime(request) -> tuple[str, RealServer]:
    fixture, kind = RUNTIMES[request.param]
    return kind, request.getfixturevalue(fixture)


@pytest.fixture(params=LLAMA_SERVERS)
def llama(request) -> RealServer:
    """Each llama.cpp server in turn: the built llama-server and the embedded runtime."""
    return request.getfixturevalue(request.param)


async def ask(c: openai.AsyncOpenAI, endpoint: str, stream: bool, include_usage: bool | None, **extra):
    """One request; returns (text, finish_reason, usage or None, the raw response/chunks)."""
    kwargs = dict(model=MODEL, max_tokens=MAX_TOKENS, temperature=0, stream=stream, **extra)
    if include_usage is not None:
        kwargs["stream_options"] = {"include_usage": include_usage}
    if endpoint == "chat":
        kwargs["messages"] = [{"role": "user", "content": STORY}]
        call = c.chat.completions.create
    else:
        kwargs["prompt"] = STORY + "\n\nOnce upon a time,"
        call = c.completions.create
    if not stream:
        resp = await call(**kwargs)
        choice = resp.choices[0]
        text = choice.message.content if endpoint == "chat" else choice.text
        return text, choice.finish_reason, resp.usage, resp
    chunks = [chunk async for chunk in await call(**kwargs)]
    text, finish = "", None
    for chunk in chunks:
        for choice in chunk.choices:
            text += (choice.delta.content or "") if endpoint == "chat" else (choice.text or "")
            finish = choice.finish_reason or finish
    usage = [chunk.usage for chunk in chunks if chunk.usage]
    assert len(usage) <= 1
    return text, finish, usage[0] if usage else None, chunks


@pytest.mark.parametrize("endpoint, stream, include_usage", CASES)
async def test_requests_usage_and_metrics(runtime, proxy_factory, endpoint, stream, include_usage):
    kind, server = runtime
    proxy = await start_proxy(proxy_factory, backend("real", kind, server.url))
    async with client(proxy) as c:
        text, finish, usage, raw = await ask(c, endpoint, stream, include_usage)
    assert text.strip() and finish == "length"
    s = await metrics(proxy)
    labels = {"backend": "real", "runtime": kind, "model": MODEL, "stream": str(stream).lower()}
    assert value(s, "mtproxy_requests_total", status="200", **labels) == 1
    usage_in_stream = kind == "llamacpp"  # llama-cpp-python never reports usage in streams

    if not stream:
        assert usage is not None
        assert usage.completion_tokens == MAX_TOKENS
        assert usage.prompt_tokens > 10 and usage.total_tokens == usage.prompt_tokens + MAX_TOKENS
        if kind == "llamacpp":  # llama-server's own timings reach the client untouched
            timings = raw.model_extra["timings"]
            assert timings["predicted_n"] == MAX_TOKENS and timings["prompt_n"] + timings["cache_n"] == usage.prompt_tokens
            assert "draft_n" not in timings
        assert value(s, "mtproxy_completion_tokens_total", **labels) == MAX_TOKENS
        assert value(s, "mtproxy_prompt_tokens_total", **labels) == usage.prompt_tokens
        assert value(s, "gen_ai_client_token_usage_sum", gen_ai_token_type="output",
                     gen_ai_provider_name=kind) == MAX_TOKENS
        assert value(s, "mtproxy_request_duration_seconds_count", **labels) == 1
        return

    # streams: the usage chunk only when the client asked for it, and only with real counts
    if include_usage and usage_in_stream:
        assert usage is not None and usage.completion_tokens == MAX_TOKENS and usage.prompt_tokens > 10
        assert raw[-1].usage is not None  # on the last chunk
        if endpoint == "chat":
            assert raw[-1].choices == []  # a chunk of its own (llama-server's /v1/completions puts
            # usage on its finish chunk instead, and the proxy relays that shape as it is)
    else:
        assert usage is None  # not asked for, or the runtime does not know: none invented
    assert value(s, "mtproxy_time_to_first_token_seconds_count", **labels) == 1
    assert value(s, "mtproxy_inter_token_latency_seconds_count", **labels) >= MAX_TOKENS // 2
    if usage_in_stream:
        # the proxy always asks upstream for usage, so the counts exist whatever the client asked
        assert value(s, "mtproxy_completion_tokens_total", **labels) == MAX_TOKENS
        assert value(s, "mtproxy_prompt_tokens_total", **labels) > 10
        rate = value(s, "mtproxy_decode_tokens_per_second_sum", **labels)
        assert value(s, "mtproxy_decode_tokens_per_second_count", **labels) == 1 and 0.5 < rate < 5000
        assert value(s, "mtproxy_tokens_per_chunk_sum", **labels) == pytest.approx(1, abs=0.2)
        assert value(s, "mtproxy_tokens_per_step_count", **labels) == 1
        assert not value(s, "mtproxy_spec_decode_draft_tokens_total", **labels)  # no speculation here
    else:
        # unknown counts stay unknown: nothing is counted or derived from them (absent, or a
        # pre-bound series at 0: see test_unknown_counts_are_not_exported)
        for name in ("mtproxy_completion_tokens_total", "mtproxy_prompt_tokens_total",
                     "mtproxy_decode_tokens_per_second_count", "mtproxy_tokens_per_step_count",
                     "mtproxy_time_per_output_token_seconds_count", "mtproxy_tokens_per_chunk_count"):
            assert not value(s, name, **labels), name


async def test_unknown_counts_are_not_exported(llama_cpp_python, proxy_factory):
    proxy = await start_proxy(proxy_factory, backend("real", "llama-cpp-python", llama_cpp_python.url))
    async with client(proxy) as c:
        text, _, usage, _ = await ask(c, "chat", True, True)
    assert text and usage is None
    s = await metrics(proxy)
    labels = {"backend": "real", "stream": "true"}
    assert value(s, "mtproxy_time_to_first_token_seconds_count", **labels) == 1  # what is known is there
    for name in ("mtproxy_completion_tokens_total", "mtproxy_prompt_tokens_total",
                 "mtproxy_decode_tokens_per_second_count", "mtproxy_tokens_per_step_count"):
        assert value(s, name, **labels) is None, f"{name} exported for a stream whose counts are unknown"


async def test_version_probing_and_model_discovery(runtime, proxy_factory):
    kind, server = runtime
    if kind == "llamacpp" and server.name.startswith("embedded"):
        # xllamacpp reports b0-unknown; its release number carries the llama.cpp build
        status, props = get_json_sync(server.url + "/props")
        assert status == 200 and props["build_info"] == "b0-unknown"
        release = importlib.metadata.version("xllamacpp")  # e.g. 2026.10.11549
        expected = f"b{release.split('.')[2]} (xllamacpp {release})"
    elif kind == "llamacpp":
        status, props = get_json_sync(server.url + "/props")
        assert status == 200
        expected = props["build_info"]  # e.g. b1-0c1e570
        assert expected.startswith("b")
    else:
        expected = importlib.metadata.version("llama_cpp_python")
        assert expected == "0.3.36"
    proxy = await start_proxy(proxy_factory, backend("real", kind, server.url))
    state = await get_json(proxy.url + "/mtproxy/backends")
    [b] = state["backends"]
    assert b["runtime"] == kind and b["up"] is True
    assert b["version"] == expected
    assert [m["name"] for m in b["models"]] == [MODEL]
    models = await get_json(proxy.url + "/v1/models")
    assert MODEL in [m["id"] for m in models["data"]]
    s = await metrics(proxy)
    assert value(s, "mtproxy_backend_up", backend="real") == 1
    assert {"backend": "real", "runtime": kind, "version": expected}.items() <= \
        labels_of(s, "mtproxy_backend_info")[0].items()


async def test_both_runtimes_behind_one_proxy(llama_server, llama_cpp_python, proxy_factory):
    """Two real runtimes discovered serving the same model: requests spread over both."""
    proxy = await start_proxy(proxy_factory, backend("srv", "llamacpp", llama_server.url),
                              backend("lcp", "llama-cpp-python", llama_cpp_python.url))
    seen = set()
    async with aiohttp.ClientSession() as http:
        async def one() -> None:
            async with http.post(proxy.url + "/v1/chat/completions", json={
                    "model": MODEL, "max_tokens": 32, "messages": [{"role": "user", "content": "Hi"}]}) as resp:
                assert resp.status == 200, await resp.text()
                seen.add(resp.headers["x-mtproxy-backend"])
                assert (await resp.json())["usage"]["completion_tokens"] <= 32
        await asyncio.gather(one(), one())  # two at once: least outstanding picks both
    assert seen == {"srv", "lcp"}


async def test_mtp_probe_does_not_stall_the_proxy(llama_server, proxy_factory):
    proxy = await start_proxy(proxy_factory, backend("srv", "llamacpp", llama_server.url),
                              health={"interval": 0.2, "timeout": 60, "mtp_interval": 0.2})
    loop = asyncio.get_running_loop()
    worst = 0.0  # the longest a 50 ms poll of GET /health took, sleep included
    async with aiohttp.ClientSession() as http:
        end = prev = loop.time()
        end += 4
        while prev < end:
            async with http.get(proxy.url + "/health") as resp:
                assert resp.status == 200
            await asyncio.sleep(0.05)
            now = loop.time()
            worst, prev = max(worst, now - prev), now
    print(f"\nworst GET /health poll {worst:.2f} s")
    assert worst < 1.0, f"a GET /health poll took {worst:.1f} s while the proxy probed llama-server"


# --- a client that goes away ------------------------------------------------------------------------

def slots(server: RealServer) -> list[dict]:
    status, data = get_json_sync(server.url + "/slots")
    assert status == 200
    return data


def predicted_total(server: RealServer) -> float:
    for line in get_text(server.url + "/metrics").splitlines():
        if line.startswith("llamacpp:tokens_predicted_total "):
            return float(line.split()[1])
    raise AssertionError("llamacpp:tokens_predicted_total not in llama-server's /metrics")


async def test_client_disconnect_stops_generation(llama, proxy_factory):
    """A client that closes its stream after the first chunk: the llama.cpp server stops generating
    within seconds, instead of decoding the 2000 tokens it was asked for (~30 s here)."""
    llama_server = llama
    proxy = await start_proxy(proxy_factory, backend("srv", "llamacpp", llama_server.url))
    before = predicted_total(llama_server)
    async with client(proxy) as c:
        stream = await c.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": STORY}], stream=True, max_tokens=2000,
            temperature=0, extra_body={"ignore_eos": True})
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                break
        assert any(s["is_processing"] for s in slots(llama_server))  # it is generating now
        await stream.close()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20
    while any(s["is_processing"] for s in slots(llama_server)):
        assert loop.time() < deadline, "llama-server still generating 20 s after the client went away"
        await asyncio.sleep(0.2)
    stopped = predicted_total(llama_server)
    await asyncio.sleep(1.5)
    assert predicted_total(llama_server) == stopped  # nothing more is decoded
    assert stopped - before < 1000  # far from the 2000 tokens asked for
    s = await metrics(proxy)
    assert value(s, "mtproxy_requests_total", status="client_closed", backend="srv") == 1
    await asyncio.sleep(0)  # (leave the proxy's handler a turn to settle before cleanup)


def test_servers_still_running(llama_server, embedded_server, llama_cpp_python):
    """None of the real servers died under the tests above (a crash would show here by name)."""
    assert llama_server.running() and embedded_server.running() and llama_cpp_python.running()
