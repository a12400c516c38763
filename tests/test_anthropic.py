"""The official anthropic client, unchanged but for base_url and key, against the proxy: the
Messages API translated to chat completions (fake OpenAI runtimes) and relayed to a runtime that
serves it itself (a fake llama-server replaying its recorded bytes); the golden event sequences
of the SDK's own fixtures; errors in Anthropic's shape; the same metrics as the OpenAI path."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import anthropic
import openai
import orjson
import pytest

from bench.fake_runtime import Behaviour
from mtproxy.state import POOL

from .conftest import make_config
from .fake_messages import MESSAGE_STREAM, Extra, MessagesRuntime
from .promtext import scrape, value
from .transcripts import RUNTIMES, meta, replay

GOLDEN = Path(__file__).parent / "data" / "anthropic"
KEY = "sk-test"
HI = [{"role": "user", "content": "hi"}]

TOOL_SCRIPT = [
    {"content": "I"},
    {"content": "'ll check the current weather in Paris for you."},
    {"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                     "function": {"name": "get_weather", "arguments": ""}}]},
    {"tool_calls": [{"index": 0, "function": {"arguments": '{"locati'}}]},
    {"tool_calls": [{"index": 0, "function": {"arguments": 'on": "P'}}]},
    {"tool_calls": [{"index": 0, "function": {"arguments": 'ar'}}]},
    {"tool_calls": [{"index": 0, "function": {"arguments": 'is"}'}}]},
]
WEATHER = {"name": "get_weather", "description": "Get the current weather in a given location",
           "input_schema": {"type": "object", "properties": {"location": {"type": "string"}},
                            "required": ["location"]}}


def golden_without_caller(golden: list[tuple[str, dict]]) -> list[tuple[str, dict]]:
    """The tool fixture without the two fields only Anthropic's service can fill (both optional):
    the tool_use block's `caller` (for its server tools) and the usage's `service_tier`."""
    out = []
    for name, data in golden:
        block = data.get("content_block")
        if block is not None and "caller" in block:
            data = {**data, "content_block": {k: v for k, v in block.items() if k != "caller"}}
        message = data.get("message")
        if message is not None:
            usage = {k: v for k, v in message["usage"].items() if k != "service_tier"}
            data = {**data, "message": {**message, "usage": usage}}
        out.append((name, data))
    return out


@pytest.fixture
async def start(proxy_factory) -> AsyncIterator[Callable[..., Awaitable[Any]]]:
    """start(runtime, extra=Extra(...), **behaviour) -> (proxy, fake runtime); model "m1"."""
    fakes: list[MessagesRuntime] = []

    async def factory(runtime: str = "vllm", extra: Extra | None = None, keys: bool = True, **behaviour: Any):
        behaviour.setdefault("models", ["m1"])
        rt = await MessagesRuntime("a", Behaviour(**behaviour), extra or Extra()).start()
        fakes.append(rt)
        cfg = make_config([{"name": "a", "runtime": runtime, "url": rt.url}], models={"m1": {"aliases": ["one"]}},
                          **({"server": {"api_keys": [KEY]}} if keys else {}))
        return await proxy_factory(cfg), rt

    yield factory
    for rt in fakes:
        await rt.stop()


def client(proxy, **kw: Any) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=proxy.url, api_key=KEY, max_retries=0, **kw)


async def events(proxy, http, body: dict[str, Any], **headers: str) -> list[tuple[str, dict[str, Any]]]:
    """(event name, data) of a raw streamed answer."""
    async with http.post(proxy.url + "/v1/messages", json={"stream": True, **body},
                         headers={"x-api-key": KEY, **headers}) as resp:
        assert resp.status == 200, await resp.text()
        text = await resp.read()
    return parse_sse(text)


def parse_sse(text: bytes) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for block in text.split(b"\n\n"):
        if not block.strip():
            continue
        lines = dict(line.split(b": ", 1) for line in block.split(b"\n"))
        out.append((lines[b"event"].decode(), orjson.loads(lines[b"data"])))
    return out


def covers(mine: Any, theirs: Any) -> bool:
    """Whether ``mine`` has every field of ``theirs``, nested, with a value of the same JSON type
    (and the same ``type`` tag); ids, texts and counts may differ, optional extras are allowed."""
    if isinstance(theirs, dict):
        return isinstance(mine, dict) and all(
            k in mine and (mine[k] == v if k == "type" else covers(mine[k], v)) for k, v in theirs.items())
    if isinstance(theirs, list):
        return isinstance(mine, list) and all(covers(a, b) for a, b in zip(mine, theirs))
    return type(mine) is type(theirs) or (theirs is None and mine is None)


def same_sequence(ours: list[tuple[str, dict]], golden: list[tuple[str, dict]]) -> None:
    """The same events in the same order (a ping may stand anywhere), each event's name its data's
    type, each covering the golden event's fields."""
    mine = [e for e in ours if e[0] != "ping"]
    theirs = [e for e in golden if e[0] != "ping"]
    assert [n for n, _ in mine] == [n for n, _ in theirs]
    assert all(n == d["type"] for n, d in ours)
    for (_, a), (_, b) in zip(mine, theirs):
        assert covers(a, b), (a, b)


# --- translated: an OpenAI runtime behind ----------------------------------------------------------

async def test_create_translated(start):
    proxy, rt = await start("vllm")
    async with client(proxy) as c:
        msg = await c.messages.create(model="m1", max_tokens=64, messages=HI, system="Be brief.",
                                      stop_sequences=["END"], metadata={"user_id": "u1"},
                                      extra_body={"temperature": 0.2, "top_k": 5})  # older SDKs' fields
    assert msg.content[0].text == "Hello world"
    assert (msg.stop_reason, msg.usage.input_tokens, msg.usage.output_tokens) == ("end_turn", 5, 4)
    assert msg.id.startswith("msg_") and msg.model == "m1" and msg.role == "assistant"
    sent = rt.requests[-1]
    assert rt.paths == ["/v1/chat/completions"]
    assert sent["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    assert (sent["max_tokens"], sent["temperature"], sent["top_k"], sent["stop"], sent["user"]) == \
        (64, 0.2, 5, ["END"], "u1")


async def test_stream_translated_strict(start):
    proxy, rt = await start("vllm")
    async with client(proxy, _strict_response_validation=True) as c:
        async with c.messages.stream(model="one", max_tokens=64, messages=HI) as stream:
            texts = [t async for t in stream.text_stream]
            msg = await stream.get_final_message()
    assert texts == ["Hel", "lo", " wor", "ld"]
    assert msg.content[0].text == "Hello world"
    assert (msg.stop_reason, msg.usage.input_tokens, msg.usage.output_tokens) == ("end_turn", 5, 4)
    assert rt.requests[-1]["stream_options"] == {"include_usage": True}


async def test_translated_stream_matches_the_golden_text_sequence(start, http):
    """The SDK's own fixture (a streamed text answer) and ours for the same text: the same events
    in the same order, each of the same shape (ping may stand anywhere: after message_start here)."""
    golden = parse_sse((GOLDEN / "basic_response.txt").read_bytes())
    proxy, _ = await start("vllm", tokens=["Hello", " there", "!"])
    ours = await events(proxy, http, {"model": "m1", "max_tokens": 16, "messages": HI})
    same_sequence(ours, golden)
    assert "".join(d["delta"]["text"] for n, d in ours if n == "content_block_delta") == "Hello there!"


async def test_translated_tool_stream_matches_the_golden_tool_sequence(start, http):
    golden = parse_sse((GOLDEN / "tool_use_response.txt").read_bytes())
    proxy, _ = await start("vllm", Extra(script=TOOL_SCRIPT, finish="tool_calls"))
    ours = await events(proxy, http, {"model": "m1", "max_tokens": 64, "messages": HI, "tools": [WEATHER]})
    same_sequence(ours, golden_without_caller(golden))
    blocks = [d for n, d in ours if n == "content_block_start"]
    assert [b["index"] for b in blocks] == [0, 1]
    assert blocks[1]["content_block"] == {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {}}
    fragments = [d["delta"]["partial_json"] for n, d in ours if n == "content_block_delta" and d["index"] == 1]
    assert "".join(fragments) == '{"location": "Paris"}'
    assert ours[-2][1]["delta"] == {"stop_reason": "tool_use", "stop_sequence": None}


async def test_tools_round_trip_translated(start):
    proxy, rt = await start("vllm", Extra(script=TOOL_SCRIPT, finish="tool_calls"))
    async with client(proxy, _strict_response_validation=True) as c:
        async with c.messages.stream(model="m1", max_tokens=64, messages=HI, tools=[WEATHER],
                                     tool_choice={"type": "tool", "name": "get_weather",
                                                  "disable_parallel_tool_use": True}) as stream:
            msg = await stream.get_final_message()
        assert msg.stop_reason == "tool_use"
        text, call = msg.content
        assert text.text.startswith("I'll check")
        assert (call.type, call.id, call.name, call.input) == ("tool_use", "call_1", "get_weather",
                                                               {"location": "Paris"})
        sent = rt.requests[-1]
        assert sent["tools"] == [{"type": "function", "function": {
            "name": "get_weather", "parameters": WEATHER["input_schema"], "description": WEATHER["description"]}}]
        assert sent["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
        assert sent["parallel_tool_calls"] is False
        # the result goes back: tool_use -> tool_calls, tool_result -> a tool message
        again = await c.messages.create(model="m1", max_tokens=64, tools=[WEATHER], messages=[
            *HI, {"role": "assistant", "content": msg.content},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_1", "content": "18 C"},
                                         {"type": "text", "text": "and tomorrow?"}]}])
    assert again.stop_reason == "tool_use" and again.content[1].input == {"location": "Paris"}
    history = rt.requests[-1]["messages"]
    assert history[1] == {"role": "assistant", "content": text.text, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"location":"Paris"}'}}]}
    assert history[2:] == [{"role": "tool", "tool_call_id": "call_1", "content": "18 C"},
                           {"role": "user", "content": "and tomorrow?"}]


async def test_thinking_becomes_thinking_blocks(start):
    script = [{"reasoning_content": "Let me"}, {"reasoning_content": " think."}, {"content": "Four."}]
    proxy, rt = await start("vllm", Extra(script=script))
    async with client(proxy, _strict_response_validation=True) as c:
        async with c.messages.stream(model="m1", max_tokens=64, messages=HI,
                                     thinking={"type": "enabled", "budget_tokens": 1024}) as stream:
            msg = await stream.get_final_message()
        unary = await c.messages.create(model="m1", max_tokens=64, messages=HI)
    assert [(b.type, getattr(b, "thinking", None) or getattr(b, "text", None)) for b in msg.content] == \
        [("thinking", "Let me think."), ("text", "Four.")]
    assert [b.type for b in unary.content] == ["thinking", "text"]
    assert rt.requests[0]["chat_template_kwargs"] == {"enable_thinking": True}


async def test_images_and_system_blocks(start):
    proxy, rt = await start("vllm")
    async with client(proxy) as c:
        await c.messages.create(model="m1", max_tokens=8, system=[{"type": "text", "text": "A"},
                                                                   {"type": "text", "text": "B"}], messages=[
            {"role": "user", "content": [{"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                                                      "data": "iVBORw0KGgo="}},
                                         {"type": "text", "text": "what is it?"}]}])
    assert rt.requests[-1]["messages"] == [
        {"role": "system", "content": "A\nB"},
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
                                     {"type": "text", "text": "what is it?"}]}]


async def test_length_and_stop_sequence_stop_reasons(start, http):
    proxy, _ = await start("vllm", Extra(script=[{"content": "a"}], finish="length"))
    async with client(proxy) as c:
        assert (await c.messages.create(model="m1", max_tokens=1, messages=HI)).stop_reason == "max_tokens"
    ours = await events(proxy, http, {"model": "m1", "max_tokens": 1, "messages": HI})
    assert ours[-2][1]["delta"]["stop_reason"] == "max_tokens"


async def test_stop_sequence_named_by_the_runtime(start, http):
    proxy, _ = await start("vllm", Extra(script=[{"content": "a"}], stop_reason="END"))
    async with client(proxy) as c:
        msg = await c.messages.create(model="m1", max_tokens=8, messages=HI, stop_sequences=["END"])
        assert (msg.stop_reason, msg.stop_sequence) == ("stop_sequence", "END")
        async with c.messages.stream(model="m1", max_tokens=8, messages=HI, stop_sequences=["END"]) as stream:
            final = await stream.get_final_message()
        assert (final.stop_reason, final.stop_sequence) == ("stop_sequence", "END")
        other = await c.messages.create(model="m1", max_tokens=8, messages=HI, stop_sequences=["STOP"])
        assert (other.stop_reason, other.stop_sequence) == ("end_turn", None)


async def test_native_mid_stream_error_event_is_relayed(start):
    broken = MESSAGE_STREAM.split(b"\n\n")
    stream = b"\n\n".join(broken[:4]) + (b'\n\nevent: error\ndata: {"type":"error","error":'
                                          b'{"type":"overloaded_error","message":"Overloaded"}}\n\n')
    proxy, _ = await start("llamacpp", Extra(native=True, native_stream=stream))
    async with client(proxy) as c:
        with pytest.raises(anthropic.APIStatusError) as exc:
            async with c.messages.stream(model="m1", max_tokens=8, messages=HI) as s:
                await s.get_final_message()
    assert "Overloaded" in str(exc.value)


async def test_mid_stream_failure_is_an_error_event(start):
    proxy, _ = await start("vllm", die_after=2)
    async with client(proxy) as c:
        with pytest.raises(anthropic.APIStatusError) as exc:
            async with c.messages.stream(model="m1", max_tokens=8, messages=HI) as stream:
                async for _ in stream:
                    pass
    assert "failed mid-stream" in str(exc.value)


# --- native: a runtime that serves /v1/messages itself -----------------------------------------------

async def test_native_relay_unary_and_stream(start, http):
    proxy, rt = await start("llamacpp", Extra(native=True))
    async with client(proxy, _strict_response_validation=True) as c:
        msg = await c.messages.create(model="one", max_tokens=20, messages=HI, system="Be brief.")
        async with c.messages.stream(model="one", max_tokens=20, messages=HI) as stream:
            final = await stream.get_final_message()
    assert msg.content[0].text == "The three primary colours are: red, blue, and yellow."
    assert final.content[0].text == msg.content[0].text
    assert (final.usage.input_tokens, final.usage.cache_read_input_tokens, final.usage.output_tokens) == (1, 20, 14)
    assert rt.paths == ["/v1/messages", "/v1/messages"]
    # the client's own body, but for the served name of the model it asked for by alias
    assert rt.requests[0] == {"model": "m1", "max_tokens": 20, "messages": HI, "system": "Be brief."}
    async with http.post(proxy.url + "/v1/messages?beta=true", headers={"x-api-key": KEY},
                         json={"model": "m1", "max_tokens": 20, "messages": HI, "stream": True}) as resp:
        assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/event-stream")
        assert await resp.read() == MESSAGE_STREAM  # relayed byte for byte


@pytest.mark.parametrize("name", ["basic_response.txt", "tool_use_response.txt"])
async def test_native_golden_streams_replayed(start, name):
    proxy, _ = await start("llamacpp", Extra(native=True, native_stream=(GOLDEN / name).read_bytes()))
    async with client(proxy, _strict_response_validation=True) as c:
        async with c.messages.stream(model="m1", max_tokens=20, messages=HI) as stream:
            msg = await stream.get_final_message()
    if name == "basic_response.txt":
        assert msg.content[0].text == "Hello there!" and msg.usage.output_tokens == 6
    else:
        assert msg.content[1].input == {"location": "Paris"} and msg.stop_reason == "tool_use"


async def test_native_translates_what_the_runtime_would_lose(start):
    """llama-server's converter turns tool_choice {"type":"tool"} into "required": translated."""
    proxy, rt = await start("llamacpp", Extra(native=True, script=TOOL_SCRIPT, finish="tool_calls"))
    async with client(proxy) as c:
        msg = await c.messages.create(model="m1", max_tokens=8, messages=HI, tools=[WEATHER],
                                      tool_choice={"type": "tool", "name": "get_weather"})
        await c.messages.create(model="m1", max_tokens=8, messages=HI, tools=[WEATHER])
    assert msg.content[1].name == "get_weather"
    assert rt.paths == ["/v1/chat/completions", "/v1/messages"]


async def test_native_error_in_anthropic_shape(start, http):
    proxy, _ = await start("llamacpp", Extra(native=True, native_status=400))
    async with client(proxy) as c:
        with pytest.raises(anthropic.BadRequestError) as exc:
            await c.messages.create(model="m1", max_tokens=8, messages=HI)
    assert exc.value.body == {"type": "error", "error": {"type": "invalid_request_error", "message": "bad request"}}


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("runtime", RUNTIMES)
async def test_every_runtime_translated(proxy_factory, runtime, stream):
    """Every runtime's golden chat transcripts, through the Anthropic client. llama-server's
    transcripts come from a fake without /v1/messages: its 404 there turns the backend to
    translation (the first request is sent again, translated; the next goes straight there)."""
    rt = await replay(runtime).start()
    try:
        proxy = await proxy_factory(make_config([{"name": "a", "runtime": runtime, "url": rt.url}]))
        m = meta(runtime)
        async with anthropic.AsyncAnthropic(base_url=proxy.url, api_key="x", max_retries=0,
                                            _strict_response_validation=True) as c:
            for _ in range(2):
                if stream:
                    async with c.messages.stream(model=m["model"], max_tokens=64, messages=HI) as s:
                        msg = await s.get_final_message()
                else:
                    msg = await c.messages.create(model=m["model"], max_tokens=64, messages=HI)
        assert msg.content[0].text == m["text"] and msg.stop_reason in ("end_turn", "max_tokens")
        usage = m["usage"]
        if not stream or m.get("stream_usage", True):
            assert msg.usage.input_tokens + msg.usage.cache_read_input_tokens == usage["prompt_tokens"]
            assert msg.usage.output_tokens == usage["completion_tokens"]
        assert [path for path, _ in rt.requests] == ["/api/chat" if runtime == "ollama" else "/v1/chat/completions"] * 2
        assert "messages" not in proxy.app[POOL].backends[0].native  # llama-server's 404: no longer tried
    finally:
        await rt.stop()


@pytest.mark.parametrize("runtime", RUNTIMES)
async def test_every_runtime_error_in_anthropic_shape(proxy_factory, runtime):
    rt = await replay(runtime, fail=True).start()
    try:
        proxy = await proxy_factory(make_config([{"name": "a", "runtime": runtime, "url": rt.url}]))
        async with anthropic.AsyncAnthropic(base_url=proxy.url, api_key="x", max_retries=0) as c:
            with pytest.raises(anthropic.APIStatusError) as exc:
                await c.messages.create(model=meta(runtime)["model"], max_tokens=8, messages=HI)
        status = meta(runtime)["error_status"]
        assert exc.value.status_code == status
        assert exc.value.body["type"] == "error" and set(exc.value.body["error"]) == {"type", "message"}
    finally:
        await rt.stop()


# --- count_tokens, models, errors, auth --------------------------------------------------------------

async def test_count_tokens(start):
    native, rt = await start("llamacpp", Extra(native=True))
    vllm, rt2 = await start("vllm", Extra(tokenize=True))
    mlx, _ = await start("mlx")
    async with client(native) as c:
        assert (await c.messages.count_tokens(model="one", messages=HI, system="Be brief.")).input_tokens == 21
    assert rt.paths == ["/v1/messages/count_tokens"]
    assert rt.requests[0] == {"model": "m1", "messages": HI, "system": "Be brief."}
    async with client(vllm) as c:
        assert (await c.messages.count_tokens(model="m1", messages=HI)).input_tokens == 4
    assert rt2.requests[0] == {"model": "m1", "messages": HI, "add_generation_prompt": True}
    async with client(mlx) as c:
        with pytest.raises(anthropic.APIStatusError) as exc:  # no tokenizer route: 501, not retried
            await c.messages.count_tokens(model="m1", messages=HI)
    assert exc.value.status_code == 501
    assert exc.value.body["error"]["type"] == "api_error"
    assert "cannot count tokens" in exc.value.body["error"]["message"]


async def test_count_tokens_while_the_backend_is_at_its_cap(proxy_factory):
    """Counting takes no generation slot: it is answered while the one slot streams."""
    gate = asyncio.Event()
    rt = await MessagesRuntime("a", Behaviour(models=["m1"], gate=gate), Extra(native=True)).start()
    try:
        proxy = await proxy_factory(make_config([{"name": "a", "runtime": "llamacpp", "url": rt.url,
                                                  "max_concurrent": 1}]))
        async with client(proxy) as c:
            held = asyncio.create_task(_held_stream(proxy))
            await rt.stream_started.wait()
            assert (await c.messages.count_tokens(model="m1", messages=HI)).input_tokens == 21
            gate.set()
            await held
    finally:
        await rt.stop()


async def _held_stream(proxy) -> None:
    async with openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key=KEY, max_retries=0) as o:
        stream = await o.chat.completions.create(model="m1", messages=HI, stream=True)
        [_ async for _ in stream]


async def test_count_tokens_on_a_llama_server_without_the_native_route(start):
    """A build without /v1/messages: its 404 there, then the chat template applied and the text
    tokenized (an approximation: README), and no native count tried again."""
    proxy, rt = await start("llamacpp", Extra(tokenize=True))
    async with client(proxy) as c:
        for _ in range(2):
            counted = await c.messages.count_tokens(model="m1", messages=HI, system="Be brief.")
            assert counted.input_tokens == 3  # the fake template and tokenizer: "<system>Be", "brief.", "<user>hi"
    assert rt.paths == ["/apply-template", "/tokenize"] * 2


async def test_models_in_anthropic_shape(start, http):
    proxy, _ = await start("vllm")
    async with client(proxy, _strict_response_validation=True) as c:
        assert [m.id async for m in c.models.list()] == ["m1", "one"]
        assert (await c.models.retrieve("one")).display_name == "one"
        page = await c.models.list(limit=1)
        assert [m.id for m in page.data] == ["m1"] and page.has_more
        with pytest.raises(anthropic.NotFoundError) as exc:
            await c.models.retrieve("zzz")
        assert exc.value.body["error"]["type"] == "not_found_error"
    async with openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key=KEY, max_retries=0) as o:
        assert [m.id async for m in o.models.list()] == ["m1", "one"]  # no anthropic-version: OpenAI's


async def test_errors_in_anthropic_shape(start, http):
    proxy, _ = await start("vllm")
    async with client(proxy) as c:
        with pytest.raises(anthropic.NotFoundError) as exc:
            await c.messages.create(model="nope", max_tokens=8, messages=HI)
        assert exc.value.body["type"] == "error" and exc.value.body["error"]["type"] == "not_found_error"
    async with anthropic.AsyncAnthropic(base_url=proxy.url, api_key="wrong", max_retries=0) as bad:
        with pytest.raises(anthropic.AuthenticationError) as exc:
            await bad.messages.create(model="m1", max_tokens=8, messages=HI)
        assert exc.value.body["error"]["type"] == "authentication_error"
    cases = [({"model": "m1", "messages": HI}, "max_tokens: Field required"),
             ({"model": "m1", "max_tokens": 8}, "messages: Field required"),
             ({"model": "m1", "max_tokens": 8, "messages": "oops"}, "messages: Input should be a valid list"),
             ({"model": "m1", "max_tokens": 8, "messages": [{"role": "system", "content": "x"}]}, "messages.0.role"),
             ({"max_tokens": 8, "messages": HI}, "model: Field required"),
             ({"model": "m1", "max_tokens": 8, "messages": HI, "stream": "yes"}, "`stream` must be a boolean")]
    for body, message in cases:
        async with http.post(proxy.url + "/v1/messages", json=body, headers={"x-api-key": KEY}) as resp:
            got = await resp.json()
            assert resp.status == 400, got
            assert got["type"] == "error" and got["error"]["type"] == "invalid_request_error"
            assert message in got["error"]["message"]
    async with http.post(proxy.url + "/v1/messages", data=b"{", headers={"x-api-key": KEY}) as resp:
        assert resp.status == 400 and (await resp.json())["error"]["type"] == "invalid_request_error"


async def test_auth_by_x_api_key_or_bearer(start, http):
    proxy, _ = await start("vllm")
    body = {"model": "m1", "max_tokens": 8, "messages": HI}
    for headers in ({"x-api-key": KEY}, {"Authorization": f"Bearer {KEY}"}):
        async with http.post(proxy.url + "/v1/messages", json=body,
                             headers={**headers, "anthropic-version": "2023-06-01",
                                      "anthropic-beta": "tools-2024-04-04"}) as resp:
            assert resp.status == 200
    async with http.post(proxy.url + "/v1/messages", json=body) as resp:
        assert resp.status == 401
        assert (await resp.json())["error"]["type"] == "authentication_error"


# --- metrics: the same figures as the OpenAI path -----------------------------------------------------

async def test_metrics_equal_the_openai_path(start, http):
    """The same paced fake stream asked for as OpenAI chat and as Anthropic Messages: the same
    counts under endpoint="chat" and endpoint="messages", and for both the decode rate within
    5 % of the rate at which the runtime really wrote its chunks (test_metrics.py's tolerance)."""
    proxy, rt = await start("vllm", keys=False, tokens=[f"t{i}" for i in range(12)], rate=50.0,
                            models=["m1", "warm-up"])
    truth = {}
    async with openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key="x", max_retries=0) as o, \
            anthropic.AsyncAnthropic(base_url=proxy.url, api_key="x", max_retries=0) as c:
        for endpoint in ("warm-up", "chat", "messages"):
            if endpoint != "messages":
                model = "m1" if endpoint == "chat" else "warm-up"
                stream = await o.chat.completions.create(model=model, messages=HI, stream=True)
                [_ async for _ in stream]
            else:
                async with c.messages.stream(model="m1", max_tokens=16, messages=HI) as s:
                    await s.get_final_message()
            truth[endpoint] = (len(rt.write_times) - 1) / (rt.write_times[-1] - rt.write_times[0])
    async with http.get(proxy.url + "/metrics") as resp:
        samples = scrape(await resp.text())
    chat = {"backend": "a", "model": "m1", "stream": "true", "endpoint": "chat"}
    messages = {**chat, "endpoint": "messages"}
    for name in ("mtproxy_completion_tokens_total", "mtproxy_prompt_tokens_total", "mtproxy_tokens_per_chunk_sum",
                 "mtproxy_inter_token_latency_seconds_count",
                 "mtproxy_time_to_first_token_seconds_count"):
        assert value(samples, name, **messages) == value(samples, name, **chat), name
    assert value(samples, "mtproxy_completion_tokens_total", **messages) == 12
    assert value(samples, "mtproxy_decode_tokens_per_second_sum", **messages) == pytest.approx(truth["messages"],
                                                                                             rel=0.05)
    # steps from the chunks' arrival: one chunk per step at 50 tokens/s, two reads may merge on a busy machine
    assert value(samples, "mtproxy_tokens_per_step_sum", **messages) == pytest.approx(1.0, abs=0.1)


async def test_native_stream_metrics(start, http):
    """A relayed Anthropic stream is counted as exactly: 13 content chunks, the usage's tokens
    (prompt = input + cache read, as the runtime's own prompt count)."""
    proxy, _ = await start("llamacpp", Extra(native=True, event_delay=0.002), keys=False)
    async with anthropic.AsyncAnthropic(base_url=proxy.url, api_key="x", max_retries=0) as c:
        async with c.messages.stream(model="m1", max_tokens=20, messages=HI) as s:
            await s.get_final_message()
    async with http.get(proxy.url + "/metrics") as resp:
        samples = scrape(await resp.text())
    labels = {"backend": "a", "model": "m1", "stream": "true", "endpoint": "messages"}
    assert value(samples, "mtproxy_completion_tokens_total", **labels) == 14
    assert value(samples, "mtproxy_prompt_tokens_total", **labels) == 21
    assert value(samples, "mtproxy_tokens_per_chunk_sum", **labels) == pytest.approx(14 / 13)
    assert value(samples, "mtproxy_inter_token_latency_seconds_count", **labels) == 12


# --- the tap on a relayed Anthropic stream -------------------------------------------------------------

NATIVE_STREAMS = [Path(__file__).parent / "data" / "llamacpp" / "messages_stream.txt",
                  GOLDEN / "basic_response.txt", GOLDEN / "tool_use_response.txt"]


@pytest.mark.parametrize("path", NATIVE_STREAMS, ids=lambda p: p.name)
@pytest.mark.parametrize("read_size", [7, 200, 1 << 20])
def test_anthropic_decoder_relays_the_bytes_and_counts_every_delta(path, read_size):
    """In arbitrary reads: the same bytes out, one content chunk per non-empty delta (the events
    parsed one by one say the same), the usage read (prompt = input + cache reads)."""
    from mtproxy.runtimes import runtime_for
    from mtproxy.stream.anthropic import delta_count
    from mtproxy.stream.events import Report
    from mtproxy.wire import CHAT, Native, from_payload

    raw = path.read_bytes()
    req = from_payload({"model": "m", "stream": True}, CHAT)
    req.native, req.relayed = Native("messages", "/v1/messages", {}, b"{}"), True
    report = Report()
    decoder = runtime_for("llamacpp").stream_decoder(req, report)
    batches = [decoder.feed(raw[i:i + read_size]) for i in range(0, len(raw), read_size)] + [decoder.flush()]
    batches = [b for b in batches if b is not None]
    assert b"".join(b.raw for b in batches) == raw
    parsed = [orjson.loads(block.split(b"data: ", 1)[1]) for block in raw.split(b"\n\n") if block.strip()]
    assert sum(b.content for b in batches) == sum(delta_count(obj) for obj in parsed) > 0
    start = parsed[0]["message"]["usage"]
    end = parsed[-2]["usage"]
    assert report.prompt_tokens == start["input_tokens"] + start.get("cache_read_input_tokens", 0) + \
        start.get("cache_creation_input_tokens", 0)
    assert report.completion_tokens == end["output_tokens"]


def test_anthropic_decoder_counts_no_empty_delta():
    from mtproxy.stream.anthropic import AnthropicSSEDecoder
    from mtproxy.stream.events import Report

    decoder = AnthropicSSEDecoder(lambda obj, report: None, Report())
    delta = (b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
             b'"delta":{"type":"text_delta","text":%s}}\n\n')
    batch = decoder.feed(delta % b'"a"' + delta % b'""' + delta % b'"say \\"hi\\""' + delta % b'"b"')
    assert batch is not None and batch.content == 3


async def test_texts_moved_from_their_bytes_keep_every_escape(start):
    """Plain chunks are rewritten without parsing: quotes, backslashes, newlines, non-ASCII and
    escaped unicode arrive as sent, in a text and in a thinking block."""
    tokens = ['He said "hi"', "\n", "\\", "ü€", "\u2028", "</s>", "\t{}"]
    proxy, _ = await start("vllm", tokens=tokens)
    async with client(proxy, _strict_response_validation=True) as c:
        async with c.messages.stream(model="m1", max_tokens=8, messages=HI) as stream:
            assert (await stream.get_final_text()) == "".join(tokens)
    script = [{"reasoning_content": t} for t in tokens] + [{"content": t} for t in tokens]
    proxy, _ = await start("vllm", Extra(script=script))
    async with client(proxy, _strict_response_validation=True) as c:
        async with c.messages.stream(model="m1", max_tokens=8, messages=HI) as stream:
            msg = await stream.get_final_message()
    assert [(b.type, getattr(b, "thinking", None) or b.text) for b in msg.content] == \
        [("thinking", "".join(tokens)), ("text", "".join(tokens))]


async def test_a_long_run_read_at_once_keeps_every_escape(start):
    """A long run of plain chunks read at once, which the decoder cuts into its texts (no quote
    in any): every escape, non-ASCII and astral character arrives as sent, one delta a chunk."""
    tokens = ["He", "\n", "\\", "ü€", "\u2028", "</s>", "\t{}", " 🦊", "\\n", " %s"] * 40
    proxy, _ = await start("vllm", tokens=tokens, steps=[(0.0, len(tokens))])  # in one write
    async with client(proxy, _strict_response_validation=True) as c:
        async with c.messages.stream(model="m1", max_tokens=len(tokens), messages=HI) as stream:
            deltas = [e.delta.text async for e in stream if e.type == "content_block_delta"]
            assert (await stream.get_final_text()) == "".join(tokens)
    assert deltas == tokens
