"""/v1/responses in front of the real llama-server (SmolLM2-135M on CPU), which serves the route
itself: the proxy relays natively (its build reports no release number, b1-<commit>: the route
itself answered the probe), completes the events to the published schema, keeps the
conversation, and measures the stream as exactly as a chat one. Driven by the openai SDK."""

from __future__ import annotations

import json

import openai

from mtproxy.state import POOL

from .conftest import MODEL
from .helpers import MAX_TOKENS, STORY, backend, metrics, start_proxy, value
from .test_end_to_end import predicted_total


def client(proxy, strict: bool = True) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key="unused", max_retries=0, timeout=300,
                              _strict_response_validation=strict)


async def test_native_responses_create_stream_and_continue(llama_server, proxy_factory):
    proxy = await start_proxy(proxy_factory, backend("real", "llamacpp", llama_server.url))
    assert "responses" in proxy.app[POOL].backends[0].native
    labels = {"backend": "real", "runtime": "llamacpp", "model": MODEL, "endpoint": "responses"}
    predicted = predicted_total(llama_server)
    async with client(proxy) as c:
        first = await c.responses.create(model=MODEL, input=STORY, max_output_tokens=MAX_TOKENS, temperature=0)
        assert first.output_text.strip() and first.usage.output_tokens == MAX_TOKENS
        assert first.usage.input_tokens > 10

        # raw iteration, as responses.create(stream=True) gives it
        stream = await c.responses.create(model=MODEL, input=STORY, max_output_tokens=MAX_TOKENS, temperature=0,
                                          stream=True)
        events = [e async for e in stream]
        assert [e.sequence_number for e in events] == list(range(len(events)))
        assert events[0].type == "response.created" and events[-1].type == "response.completed"
        timings = events[-1].model_extra["timings"]  # llama-server's own: relayed natively
        assert timings["predicted_n"] == MAX_TOKENS
        text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
        assert text == events[-1].response.output_text and text.strip()

        # the strict stream reader, continuing the first answer
        async with c.responses.stream(model=MODEL, input="Go on.", previous_response_id=first.id,
                                      max_output_tokens=MAX_TOKENS, temperature=0) as s:
            third = await s.get_final_response()
        assert third.previous_response_id == first.id and third.output_text.strip()
        # the runtime saw the whole conversation: the first turn's prompt and answer, then this input
        assert third.usage.input_tokens > first.usage.input_tokens + MAX_TOKENS
        assert (await c.responses.retrieve(third.id)).output_text == third.output_text

    s = await metrics(proxy)
    assert value(s, "mtproxy_requests_total", status="200", stream="false", **labels) == 1
    assert value(s, "mtproxy_requests_total", status="200", stream="true", **labels) == 2
    # counters exactly as the runtime counted: its usage, its /metrics
    assert value(s, "mtproxy_completion_tokens_total", **labels) == 3 * MAX_TOKENS
    assert predicted_total(llama_server) - predicted == 3 * MAX_TOKENS
    assert value(s, "mtproxy_prompt_tokens_total", stream="false", **labels) == first.usage.input_tokens
    streamed = {"stream": "true", **labels}
    assert value(s, "mtproxy_time_to_first_token_seconds_count", **streamed) == 2
    assert value(s, "mtproxy_tokens_per_step_count", **streamed) == 2
    assert value(s, "mtproxy_decode_tokens_per_second_count", **streamed) == 2
    # one text delta per token but the last (llama-server sends no text for the end of generation)
    chunks = value(s, "mtproxy_inter_token_latency_seconds_count", **streamed) + 2
    assert 2 * (MAX_TOKENS - 1) <= chunks <= 2 * MAX_TOKENS


async def test_what_llama_server_would_lose_is_translated(llama_server, proxy_factory):
    """text.format: llama-server's /v1/responses drops it; through chat completions it holds."""
    proxy = await start_proxy(proxy_factory, backend("real", "llamacpp", llama_server.url))
    schema = {"type": "object", "properties": {"colour": {"type": "string", "enum": ["red", "blue"]}},
              "required": ["colour"], "additionalProperties": False}
    async with client(proxy) as c:
        resp = await c.responses.create(model=MODEL, input="Pick a colour.", max_output_tokens=20, temperature=0,
                                        text={"format": {"type": "json_schema", "name": "c", "schema": schema,
                                                         "strict": True}})
    assert json.loads(resp.output_text) in ({"colour": "red"}, {"colour": "blue"})
    assert len(resp.id) == len("resp_") + 32  # the proxy's own id: translated
