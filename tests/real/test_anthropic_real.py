"""The official anthropic client through the proxy in front of REAL llama.cpp servers (the built
llama-server b1-0c1e570 and the embedded runtime b11549), which serve /v1/messages themselves:
the proxy relays their answers (native: ids are llama-server's `chatcmpl-…`; a translated answer
would carry the proxy's `msg_…`), measures them as exactly as an OpenAI stream, and translates a
request whose capability llama-server's converter would lose (tool_choice {"type":"tool"}).

SmolLM2's template has no tool support (the servers run without --jinja): the tools round trip is
checked as far as the runtime goes (tool_use and tool_result history accepted and answered);
the streamed tool calls themselves are checked on fakes (tests/test_anthropic.py).
"""

from __future__ import annotations

import anthropic
import pytest

from .conftest import MODEL, RealServer, get_text
from .helpers import MAX_TOKENS, STORY, backend, metrics, start_proxy, value

LLAMA_SERVERS = ["llama_server", "embedded_server"]
ASK = [{"role": "user", "content": STORY}]
GREEDY = {"temperature": 0}  # a field the newest SDK no longer names, sent as older SDKs and agents do


@pytest.fixture(params=LLAMA_SERVERS)
def llama(request) -> RealServer:
    return request.getfixturevalue(request.param)


def client(proxy) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=proxy.url, api_key="unused", max_retries=0, timeout=300,
                                    _strict_response_validation=True)


def runtime_counters(server: RealServer) -> dict[str, float]:
    out = {}
    for line in get_text(server.url + "/metrics").splitlines():
        if line.startswith("llamacpp:") and " " in line:
            name, number = line.split(" ", 1)
            out[name] = float(number)
    return out


async def test_native_create_and_stream(llama, proxy_factory):
    proxy = await start_proxy(proxy_factory, backend("real", "llamacpp", llama.url))
    async with client(proxy) as c:
        msg = await c.messages.create(model=MODEL, max_tokens=MAX_TOKENS, messages=ASK, system="Be brief.",
                                      extra_body=GREEDY)
        async with c.messages.stream(model=MODEL, max_tokens=MAX_TOKENS, messages=ASK, system="Be brief.",
                                     extra_body=GREEDY) as stream:
            texts = [t async for t in stream.text_stream]
            final = await stream.get_final_message()
    assert msg.id.startswith("chatcmpl-") and final.id.startswith("chatcmpl-")  # relayed, not translated
    assert (msg.stop_reason, msg.usage.output_tokens) == ("max_tokens", MAX_TOKENS)
    assert (final.stop_reason, final.usage.output_tokens) == ("max_tokens", MAX_TOKENS)
    assert msg.content[0].text and "".join(texts) == final.content[0].text


async def test_native_stream_metrics_equal_the_runtime_counters(llama, proxy_factory):
    """Counters exactly as the runtime counts: its /metrics before and after one stream."""
    proxy = await start_proxy(proxy_factory, backend("real", "llamacpp", llama.url))
    before = runtime_counters(llama)
    async with client(proxy) as c:
        async with c.messages.stream(model=MODEL, max_tokens=MAX_TOKENS, messages=ASK, extra_body=GREEDY) as stream:
            deltas = [e async for e in stream if e.type == "content_block_delta"]
            final = await stream.get_final_message()
    after = runtime_counters(llama)
    s = await metrics(proxy)
    labels = {"backend": "real", "endpoint": "messages", "stream": "true"}
    predicted = after["llamacpp:tokens_predicted_total"] - before["llamacpp:tokens_predicted_total"]
    prompt = (after["llamacpp:prompt_tokens_total"] - before["llamacpp:prompt_tokens_total"]
              + after["llamacpp:prompt_tokens_cached_total"] - before["llamacpp:prompt_tokens_cached_total"])
    assert value(s, "mtproxy_completion_tokens_total", **labels) == predicted == final.usage.output_tokens
    assert value(s, "mtproxy_prompt_tokens_total", **labels) == prompt == \
        final.usage.input_tokens + final.usage.cache_read_input_tokens
    assert value(s, "mtproxy_tokens_per_chunk_sum", **labels) == pytest.approx(predicted / len(deltas))
    assert value(s, "mtproxy_inter_token_latency_seconds_count", **labels) >= 1
    assert value(s, "mtproxy_time_to_first_token_seconds_count", **labels) == 1
    assert value(s, "mtproxy_decode_tokens_per_second_count", **labels) == 1


async def test_native_count_tokens(llama, proxy_factory):
    proxy = await start_proxy(proxy_factory, backend("real", "llamacpp", llama.url))
    async with client(proxy) as c:
        counted = await c.messages.count_tokens(model=MODEL, messages=ASK, system="Be brief.")
        msg = await c.messages.create(model=MODEL, max_tokens=1, messages=ASK, system="Be brief.", extra_body=GREEDY)
    assert counted.input_tokens == msg.usage.input_tokens + msg.usage.cache_read_input_tokens > 0


async def test_tool_history_native_and_named_tool_translated(llama, proxy_factory):
    proxy = await start_proxy(proxy_factory, backend("real", "llamacpp", llama.url))
    weather = {"name": "get_weather", "description": "Get the weather in a city",
               "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
    history = [{"role": "user", "content": "What is the weather in Paris?"},
               {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "get_weather",
                                                  "input": {"city": "Paris"}}]},
               {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "18 C, sunny"}]}]
    async with client(proxy) as c:
        native = await c.messages.create(model=MODEL, max_tokens=MAX_TOKENS, tools=[weather], messages=history,
                                         extra_body=GREEDY)
        named = await c.messages.create(model=MODEL, max_tokens=MAX_TOKENS, tools=[weather], messages=history,
                                        tool_choice={"type": "tool", "name": "get_weather"}, extra_body=GREEDY)
    assert native.id.startswith("chatcmpl-") and native.content
    assert named.id.startswith("msg_") and named.content  # llama-server's converter would drop the name
    assert named.usage.output_tokens > 0


async def test_errors_from_the_runtime_in_anthropic_shape(llama, proxy_factory):
    proxy = await start_proxy(proxy_factory, backend("real", "llamacpp", llama.url))
    async with client(proxy) as c:
        with pytest.raises(anthropic.NotFoundError) as exc:
            await c.messages.create(model="no-such-model", max_tokens=8, messages=ASK)
        assert exc.value.body["error"]["type"] == "not_found_error"
        with pytest.raises(anthropic.BadRequestError) as exc:  # too long for the 2048-token context
            await c.messages.create(model=MODEL, max_tokens=8, messages=[{"role": "user", "content": "word " * 5000}])
        assert exc.value.body["type"] == "error" and exc.value.body["error"]["type"] == "invalid_request_error"
