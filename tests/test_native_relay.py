"""The client APIs vLLM and Ollama serve themselves (``Runtime.native_apis``), through the official
anthropic and openai clients: relayed to the runtime's own /v1/messages and /v1/responses from the
release that serves them (the version its probe reports), translated to chat before it, and
translated whenever the request asks for something the runtime's own serving would lose; a
runtime that answers 404 on a declared route is translated from then on. The runtimes are the
bench's fake (bench/fake_runtime.py) standing for each, on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import anthropic
import openai
import pytest

from bench.fake_runtime import FakeRuntime
from mtproxy.runtimes.ollama import Ollama
from mtproxy.runtimes.vllm import VLLM
from mtproxy.state import POOL
from mtproxy.wire import Native

from .conftest import Proxy, make_config, until
from .promtext import scrape, value

HI = [{"role": "user", "content": "hi"}]
TEXT = "Hello world"  # the fake's tokens: "Hel", "lo", " wor", "ld"
CHAT = {"vllm": "/v1/chat/completions", "ollama": "/api/chat"}
Serve = Callable[..., Awaitable[tuple[FakeRuntime, Proxy]]]


@pytest.fixture
def serve(proxy_factory, runtime_factory) -> Serve:
    """serve(runtime, version, native=(...)) -> (fake, proxy), once the proxy has read the version."""
    async def factory(runtime: str, version: str, **behaviour: Any) -> tuple[FakeRuntime, Proxy]:
        rt = await runtime_factory("a", models=["m1"], flavour=runtime, version=version, **behaviour)
        proxy = await proxy_factory(make_config([{"name": "a", "runtime": runtime, "url": rt.url}]))
        backend = proxy.app[POOL].backends[0]
        await until(lambda: backend.version == version and "m1" in backend.models)
        return rt, proxy
    return factory


def anthropic_client(proxy: Proxy) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=proxy.url, api_key="x", max_retries=0)


def openai_client(proxy: Proxy) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key="x", max_retries=0)


async def each_api(proxy: Proxy) -> dict[str, Any]:
    """One request of each API, unary and streamed; what the clients got."""
    async with anthropic_client(proxy) as c:
        message = await c.messages.create(model="m1", max_tokens=16, messages=HI)
        async with c.messages.stream(model="m1", max_tokens=16, messages=HI) as stream:
            streamed = await stream.get_final_message()
    async with openai_client(proxy) as o:
        response = await o.responses.create(model="m1", input="hi")
        events = [e async for e in await o.responses.create(model="m1", input="hi", stream=True)]
    return {"message": message, "streamed": streamed, "response": response, "events": events}


async def metrics(proxy: Proxy) -> dict:
    async with aiohttp.ClientSession() as http, http.get(proxy.url + "/metrics") as resp:
        return scrape(await resp.text())


# --- relayed from the release that serves the API, translated before ---------------------------------

@pytest.mark.parametrize("runtime, version, relayed", [
    ("vllm", "0.11.1", {"messages", "responses"}),  # the first release serving both
    ("vllm", "0.11.0", {"responses"}),
    ("vllm", "0.10.1", set()),  # /v1/responses there streams for gpt-oss only
    ("ollama", "0.14.0", {"messages", "responses"}),
    ("ollama", "0.13.3", {"responses"}),
    ("ollama", "0.13.2", set()),
])
async def test_relayed_from_the_release_that_serves_it(serve, runtime, version, relayed):
    rt, proxy = await serve(runtime, version, native=("messages", "responses"))
    got = await each_api(proxy)
    paths = {"messages": "/v1/messages", "responses": "/v1/responses"}
    assert rt.paths == [paths["messages"] if "messages" in relayed else CHAT[runtime]] * 2 + \
        [paths["responses"] if "responses" in relayed else CHAT[runtime]] * 2
    for message in (got["message"], got["streamed"]):
        assert message.content[0].text == TEXT
        assert (message.usage.input_tokens, message.usage.output_tokens) == (5, 4)
    completed = got["events"][-1].response
    for response in (got["response"], completed):
        assert response.output_text == TEXT
        assert (response.usage.input_tokens, response.usage.output_tokens) == (5, 4)
    # the runtime's own answer, not a translation: its ids
    assert (got["message"].id == "msg_fake") == ("messages" in relayed)
    assert (response.output[0].id == "msg_fake") == ("responses" in relayed)
    if "messages" in relayed:
        assert rt.requests[0] == {"model": "m1", "max_tokens": 16, "messages": HI}  # the client's own body
    samples = await metrics(proxy)
    for endpoint in ("messages", "responses"):  # counted the same either way, under the client's API
        for stream in ("false", "true"):
            labels = {"endpoint": endpoint, "stream": stream, "runtime": runtime}
            assert value(samples, "mtproxy_prompt_tokens_total", **labels) == 5
            assert value(samples, "mtproxy_completion_tokens_total", **labels) == 4
        assert value(samples, "mtproxy_tokens_per_chunk_sum", endpoint=endpoint, stream="true") == 1.0


async def test_a_relayed_stream_is_the_runtimes_own(serve):
    """The Anthropic stream reaches the client byte for byte as vLLM wrote it."""
    rt, proxy = await serve("vllm", "0.11.1", native=("messages",))
    body = {"model": "m1", "max_tokens": 16, "messages": HI, "stream": True}
    async with aiohttp.ClientSession() as http:
        async with http.post(proxy.url + "/v1/messages", json=body) as resp:
            relayed = await resp.read()
        async with http.post(rt.url + "/v1/messages", json=body) as resp:
            own = await resp.read()
    assert relayed == own and b'"msg_fake"' in own


async def test_previous_response_id_is_supplied_by_the_proxy(serve):
    """Neither runtime keeps state for previous_response_id: the proxy's store does, and the
    earlier turns go in front of the input of the request relayed."""
    rt, proxy = await serve("vllm", "0.11.1", native=("responses",))
    async with openai_client(proxy) as o:
        first = await o.responses.create(model="m1", input="hi")
        second = await o.responses.create(model="m1", input="and again", previous_response_id=first.id)
        assert (await o.responses.retrieve(second.id)).output_text == TEXT
    assert rt.paths == ["/v1/responses"] * 2
    sent = rt.requests[1]
    assert "previous_response_id" not in sent
    assert [(item.get("role"), item.get("type")) for item in sent["input"]] == [
        ("user", "message"), ("assistant", "message"), ("user", None)]
    assert sent["input"][-1]["content"] == "and again"


# --- what the runtime's own serving would lose: translated ------------------------------------------

WEATHER = {"name": "get_weather", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}
FUNCTION = {"type": "function", "name": "get_weather", "parameters": WEATHER["input_schema"]}


@pytest.mark.parametrize("runtime, api, extra", [
    ("vllm", "messages", {"thinking": {"type": "enabled", "budget_tokens": 1024}}),  # vLLM ignores thinking
    ("vllm", "messages", {"stop_sequences": ["END"]}),  # reported as end_turn, not stop_sequence
    ("vllm", "messages", {"tools": [WEATHER], "tool_choice": {"type": "auto", "disable_parallel_tool_use": True}}),
    ("vllm", "responses", {"background": True}),  # needs vLLM's own store, off by default
    ("ollama", "messages", {"tools": [WEATHER], "tool_choice": {"type": "any"}}),  # Ollama reads no tool_choice
    ("ollama", "messages", {"thinking": {"type": "adaptive"}}),
    ("ollama", "responses", {"tools": [FUNCTION], "tool_choice": "required"}),
    ("ollama", "responses", {"parallel_tool_calls": False}),
])
async def test_what_the_runtime_would_lose_is_translated(serve, runtime, api, extra):
    rt, proxy = await serve(runtime, "0.14.0", native=("messages", "responses"))
    if api == "messages":
        async with anthropic_client(proxy) as c:
            message = await c.messages.create(model="m1", max_tokens=16, messages=HI, extra_body=extra)
        assert message.content[-1].text == TEXT
    else:
        async with openai_client(proxy) as o:
            response = await o.responses.create(model="m1", input="hi", extra_body=extra)
        assert response.output_text == TEXT
    assert rt.paths == [CHAT[runtime]]


async def test_count_tokens_never_goes_to_a_route_the_runtime_lacks(serve):
    """Ollama has no /v1/messages/count_tokens (and no tokenizer route): 501, nothing sent."""
    rt, proxy = await serve("ollama", "0.14.0", native=("messages", "responses"))
    async with anthropic_client(proxy) as c:
        with pytest.raises(anthropic.APIStatusError) as exc:
            await c.messages.count_tokens(model="m1", messages=HI)
    assert exc.value.status_code == 501 and rt.paths == []


@pytest.mark.parametrize("adapter, payload, relays", [
    (VLLM(), {"messages": [{"role": "user", "content": [{"type": "document", "source": {
        "type": "text", "media_type": "text/plain", "data": "x"}}]}]}, False),  # a 400 there
    (VLLM(), {"messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t",
                                                        "is_error": True, "content": "boom"}]}]}, False),
    (VLLM(), {"messages": [{"role": "user", "content": [{"type": "image", "source": {
        "type": "url", "url": "http://127.0.0.1/a.png"}}]}]}, True),  # vLLM takes image URLs
    (Ollama(), {"messages": [{"role": "user", "content": [{"type": "image", "source": {
        "type": "url", "url": "http://127.0.0.1/a.png"}}]}]}, False),  # Ollama: base64 only
    (Ollama(), {"messages": HI, "tool_choice": {"type": "auto"}}, True),
])
def test_messages_capabilities(adapter, payload, relays):
    assert adapter.relays(Native("messages", "/v1/messages", {"model": "m1", "max_tokens": 8, **payload}, b"")) is relays


@pytest.mark.parametrize("url, relays", [("data:image/png;base64,AAAA", True), ("https://127.0.0.1/a.png", False)])
def test_ollama_responses_take_data_urls_only(url, relays):
    payload = {"model": "m1", "input": [{"role": "user", "content": [{"type": "input_image", "image_url": url}]}]}
    assert Ollama().relays(Native("responses", "/v1/responses", payload, b"")) is relays


# --- a declared route the runtime does not serve ------------------------------------------------------

@pytest.mark.parametrize("runtime", ["vllm", "ollama"])
async def test_a_route_answering_404_is_translated_and_remembered(serve, runtime):
    rt, proxy = await serve(runtime, "0.14.0")  # a release that should serve both, serving neither
    backend = proxy.app[POOL].backends[0]
    assert backend.native == {"messages", "responses"}
    async with anthropic_client(proxy) as c:
        for _ in range(2):
            assert (await c.messages.create(model="m1", max_tokens=16, messages=HI)).content[0].text == TEXT
    async with openai_client(proxy) as o:
        for _ in range(2):
            stream = await o.responses.create(model="m1", input="hi", stream=True)
            assert [e async for e in stream][-1].response.output_text == TEXT
    assert rt.paths == [CHAT[runtime]] * 4  # the 404s are not served routes: never recorded
    assert backend.native == frozenset()
