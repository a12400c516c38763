"""/v1/responses through the proxy with the official openai client (base_url + key only):
translated to chat completions in front of every kind of fake runtime, relayed natively to a
runtime that serves the route (llama-server's own captures replayed), the golden event sequences
of the API checked and replayed, the response store (memory and a real redis-server), errors and
the metrics of the endpoint."""

from __future__ import annotations

from typing import Any

import aiohttp
import openai
import orjson
import pytest

from mtproxy.config import ConfigError, load_config_text
from mtproxy.front.response_store import MemoryStore

from .conftest import make_config, until
from .promtext import scrape, value
from .redis_server import RedisServer
from .responses_fakes import DATA, Scripted, golden, sse_events
from .transcripts import RUNTIMES, meta, replay

WEATHER = {"type": "function", "name": "get_weather", "strict": False,
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


def client(proxy, *, strict: bool = False) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key="k", max_retries=0,
                              _strict_response_validation=strict)


@pytest.fixture
async def scripted():
    started: list[Scripted] = []

    async def factory(*args: Any, **kw: Any) -> Scripted:
        rt = await Scripted(*args, **kw).start()
        started.append(rt)
        return rt

    yield factory
    for rt in started:
        await rt.stop()


@pytest.fixture
async def serve(scripted, proxy_factory):
    """(runtime, proxy) for a Scripted runtime as `runtime` (vllm: translated; llamacpp with
    native bodies: relayed natively)."""

    async def factory(*args: Any, runtime: str = "vllm", responses: dict | None = None, **kw: Any):
        rt = await scripted(*args, **kw)
        extra = {"responses": responses} if responses else {}
        proxy = await proxy_factory(make_config([{"name": "b", "runtime": runtime, "url": rt.url}], **extra))
        return rt, proxy

    return factory


async def raw_events(proxy, body: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    async with aiohttp.ClientSession() as http, http.post(proxy.url + "/v1/responses", json=body) as resp:
        assert resp.status == 200, await resp.text()
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        return sse_events(await resp.read())


# --- translated, every kind of runtime ----------------------------------------------------------------

@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("runtime", RUNTIMES)
async def test_every_runtime_translated(proxy_factory, runtime, stream):
    rt = await replay(runtime).start()
    try:
        proxy = await proxy_factory(make_config([{"name": "b", "runtime": runtime, "url": rt.url}]))
        m = meta(runtime)
        async with client(proxy, strict=True) as c:
            if stream:
                async with c.responses.stream(model=rt.meta["model"], input="Repeat.") as s:
                    final = await s.get_final_response()
            else:
                final = await c.responses.create(model=rt.meta["model"], input="Repeat.")
        assert final.output_text == m["text"]
        assert final.status == "completed"
        if m["usage"] is not None and (not stream or m.get("stream_usage", True)):
            assert final.usage.input_tokens == m["usage"]["prompt_tokens"]
            assert final.usage.output_tokens == m["usage"]["completion_tokens"]
        sent = rt.requests[-1] if hasattr(rt, "requests") else None
        if isinstance(sent, dict) and "messages" in sent:
            assert sent["messages"][-1]["content"] == "Repeat."
    finally:
        await rt.stop()


async def test_raw_stream_events_are_numbered_and_strict(serve):
    rt, proxy = await serve()
    async with client(proxy, strict=True) as c:
        stream = await c.responses.create(model="m1", input="hi", stream=True)
        events = [e async for e in stream]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[0].type == "response.created" and events[-1].type == "response.completed"
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == "Hello!"
    assert events[-1].response.usage.output_tokens == 3
    assert rt.bodies("/v1/chat/completions")[-1]["stream_options"] == {"include_usage": True}


# --- the golden sequences ------------------------------------------------------------------------------

VOLATILE = {"id", "item_id", "created_at", "completed_at", "model", "usage"}


def normal(value: Any) -> Any:
    """Ids, times, model and usage blanked: what a proxy cannot reproduce byte for byte."""
    if isinstance(value, dict):
        return {k: ("*" if k in VOLATILE and v is not None else normal(v)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [normal(v) for v in value]
    return value


async def test_translated_text_stream_is_the_template_event_for_event(serve):
    """notes §4.5: the template that passes every SDK's strict reader, field for field."""
    _, proxy = await serve([{"content": "Hello"}, {"content": " there"}, {"content": "!"}])
    ours = await raw_events(proxy, {"model": "m1", "input": "hi", "stream": True, "store": False})
    assert normal(ours) == normal(golden("template_text.sse"))


async def test_translated_tool_call_stream_is_the_template_event_for_event(serve):
    deltas = [{"tool_calls": [{"index": 0, "id": "call_abc123", "type": "function",
                               "function": {"name": "get_weather", "arguments": '{"city":'}}]},
              {"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}]
    _, proxy = await serve(deltas, finish="tool_calls")
    ours = await raw_events(proxy, {"model": "m1", "input": "weather?", "stream": True, "store": False,
                                    "tools": [WEATHER]})
    template = golden("template_tool_call.sse")
    # the template echoes the tools on response.completed only; the proxy (as api.openai.com in
    # the prism capture) on response.created and .in_progress too
    for _, event in template[:2]:
        event["response"]["tools"] = template[-1][1]["response"]["tools"]
    assert normal(ours) == normal(template)


def _content(item: dict[str, Any]) -> tuple:
    """What an output item says, whatever ids and optional fields it carries."""
    if item["type"] == "function_call":
        return item["type"], item["call_id"], item["name"], item["arguments"]
    if item["type"] == "message":
        return item["type"], item["role"], tuple(p.get("text") for p in item["content"])
    return (item["type"],)


async def test_translated_streams_follow_the_recorded_api_streams(serve):
    """The sequences api.openai.com sent (dotnet/extensions, prism-php captures), the chat deltas
    derived from them: ours has the same events in the same order, each with every field the
    capture has (its optional `obfuscation` aside), and the same items."""
    tools = golden("prism_tool_calls.sse")
    deltas, calls = [], {}
    for _, e in tools:
        if e["type"] == "response.output_item.added":
            calls[e["item"]["id"]] = len(calls)
            deltas.append({"tool_calls": [{"index": calls[e["item"]["id"]], "id": e["item"]["call_id"],
                                           "function": {"name": e["item"]["name"], "arguments": ""}}]})
        elif e["type"] == "response.function_call_arguments.delta":
            deltas.append({"tool_calls": [{"index": calls[e["item_id"]], "function": {"arguments": e["delta"]}}]})
    # the text answer without its reasoning summary item (rs_…), as the notes' §4.3 says
    text = [(n, e) for n, e in golden("dotnet_reasoning_text.sse")
            if not str(e.get("item_id") or (e.get("item") or {}).get("id") or "").startswith("rs_")]
    text[-1][1]["response"]["output"] = [o for o in text[-1][1]["response"]["output"] if o["type"] != "reasoning"]
    text_deltas = [{"content": e["delta"]} for _, e in text if e["type"] == "response.output_text.delta"]
    for recorded, script, finish in ((tools, deltas, "tool_calls"), (text, text_deltas, "stop")):
        _, proxy = await serve(script, finish=finish)
        ours = await raw_events(proxy, {"model": "m1", "input": "hi", "stream": True})
        assert [e["type"] for _, e in ours] == [e["type"] for _, e in recorded]
        for (name, mine), (_, theirs) in zip(ours, recorded):
            assert name == mine["type"]
            assert set(theirs) - {"obfuscation"} <= set(mine), (mine, theirs)
            if "item" in theirs and theirs["type"] == "response.output_item.done":
                assert _content(mine["item"]) == _content(theirs["item"])
        assert [_content(o) for o in ours[-1][1]["response"]["output"]] == \
            [_content(o) for o in recorded[-1][1]["response"]["output"]]


@pytest.mark.parametrize("name", ["template_text.sse", "template_tool_call.sse", "dotnet_reasoning_text.sse",
                                  "prism_tool_calls.sse", "llamacpp_responses_stream.sse"])
async def test_golden_streams_replayed_natively_pass_the_strict_stream_reader(serve, name):
    """Each golden sequence (and llama-server's own, which is not schema-exact) served by a
    runtime that speaks /v1/responses itself: relayed natively, completed to the schema, read by
    responses.stream() with strict validation; the final output is the recorded one."""
    recorded = (DATA / name).read_bytes()
    rt, proxy = await serve(runtime="llamacpp", native_sse=recorded, native_json=b"{}")
    async with client(proxy, strict=True) as c:
        async with c.responses.stream(model="m1", input="hi") as s:
            events = [e async for e in s]
            final = await s.get_final_response()
    assert rt.bodies("/v1/chat/completions") == []  # natively relayed
    assert [e.sequence_number for e in events] == list(range(len(events)))
    theirs = [e for _, e in sse_events(recorded)]
    assert [e.type for e in events] == [e["type"] for e in theirs]
    last = theirs[-1]["response"]
    assert final.id == last["id"]
    assert [o.type for o in final.output] == [o["type"] for o in last["output"]]
    texts = ["".join(p["text"] for p in o["content"]) for o in last["output"] if o["type"] == "message"]
    assert final.output_text == "".join(texts)
    assert [(o.name, o.arguments, o.call_id) for o in final.output if o.type == "function_call"] == \
        [(o["name"], o["arguments"], o["call_id"]) for o in last["output"] if o["type"] == "function_call"]


# --- native relay ------------------------------------------------------------------------------------

async def test_native_relay_where_the_runtime_serves_the_route(serve):
    rt, proxy = await serve(runtime="llamacpp", native_sse=(DATA / "llamacpp_responses_stream.sse").read_bytes(),
                            native_json=(DATA / "llamacpp_responses.json").read_bytes())
    async with client(proxy, strict=True) as c:
        first = await c.responses.create(model="m1", input="colours?", instructions="Be brief.")
        assert first.output_text == "The three primary colours are: red, blue, and yellow."
        assert first.id == "resp_p6kG0mlmihCXc1nX0qv03d1eSIlFk8NQ"  # the runtime's own
        assert first.usage.input_tokens == 21 and first.usage.input_tokens_details.cached_tokens == 20
        sent = rt.bodies("/v1/responses")[-1]
        assert sent["input"] == "colours?" and sent["instructions"] == "Be brief."
        # continued: the runtime keeps no state, so the proxy puts the conversation in front
        stream = await c.responses.create(model="m1", input="more", previous_response_id=first.id, stream=True)
        events = [e async for e in stream]
    sent = rt.bodies("/v1/responses")[-1]
    assert "previous_response_id" not in sent
    assert [i.get("role") or i["type"] for i in sent["input"]] == ["user", "assistant", "user"]
    assert sent["input"][1]["content"][0]["text"] == first.output_text
    assert events[-1].type == "response.completed" and events[-1].response.previous_response_id == first.id
    assert rt.bodies("/v1/chat/completions") == []


async def test_what_the_native_api_would_lose_is_translated(serve):
    """text.format (llama-server's conversion drops it) and reasoning items go through chat."""
    rt, proxy = await serve(runtime="llamacpp", native_sse=b"", native_json=b"{}")
    async with client(proxy) as c:
        await c.responses.create(model="m1", input="json please", text={"format": {
            "type": "json_schema", "name": "o", "schema": {"type": "object"}, "strict": True}})
        await c.responses.create(model="m1", input=[
            {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "hm"}]},
            {"role": "user", "content": "go"}])
    chat = rt.bodies("/v1/chat/completions")
    assert chat[0]["response_format"] == {"type": "json_schema", "json_schema": {
        "name": "o", "schema": {"type": "object"}, "strict": True}}
    assert chat[1]["messages"] == [{"role": "user", "content": "go"}]
    assert [body for path, body in rt.requests if path == "/v1/responses"] == []  # none went natively


async def test_a_runtime_without_the_route_is_translated(serve):
    rt, proxy = await serve(runtime="llamacpp")  # answers /v1/responses 404
    async with client(proxy) as c:
        resp = await c.responses.create(model="m1", input="hi")
    assert resp.output_text == "Hello!"
    assert len(rt.bodies("/v1/chat/completions")) == 1


# --- the request mapped --------------------------------------------------------------------------------

async def test_request_fields_map_to_chat(serve):
    rt, proxy = await serve()
    async with client(proxy) as c:
        resp = await c.responses.create(
            model="m1", instructions="sys", max_output_tokens=7, temperature=0.2, top_p=0.5,
            parallel_tool_calls=False, tools=[WEATHER], tool_choice={"type": "function", "name": "get_weather"},
            reasoning={"effort": "low"}, metadata={"k": "v"},
            input=[{"role": "developer", "content": "dev"},
                   {"role": "user", "content": [{"type": "input_text", "text": "look"},
                                                {"type": "input_image", "image_url": "data:image/png;base64,AAAA"}]}])
    sent = rt.bodies("/v1/chat/completions")[-1]
    assert sent["messages"] == [
        {"role": "system", "content": "sys"}, {"role": "system", "content": "dev"},
        {"role": "user", "content": [{"type": "text", "text": "look"},
                                     {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]
    assert sent["max_tokens"] == 7 and sent["temperature"] == 0.2 and sent["top_p"] == 0.5
    assert sent["parallel_tool_calls"] is False and sent["reasoning_effort"] == "low"
    assert sent["tools"] == [{"type": "function", "function": {"name": "get_weather", "parameters": WEATHER["parameters"],
                                                               "strict": False}}]
    assert sent["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert "stream" not in sent
    assert resp.instructions == "sys" and resp.max_output_tokens == 7 and resp.metadata == {"k": "v"}
    assert resp.tool_choice.name == "get_weather" and resp.tools[0].name == "get_weather"


@pytest.mark.parametrize("stream", [False, True])
async def test_tool_round_trip(serve, stream):
    deltas = [{"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                               "function": {"name": "get_weather", "arguments": '{"city":'}}]},
              {"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]},
              {"tool_calls": [{"index": 1, "id": "call_2", "type": "function",
                               "function": {"name": "get_weather", "arguments": '{"city":"Rome"}'}}]}]
    rt, proxy = await serve(deltas, finish="tool_calls")
    async with client(proxy, strict=True) as c:
        if stream:
            async with c.responses.stream(model="m1", input="weather?", tools=[WEATHER]) as s:
                first = await s.get_final_response()
        else:
            first = await c.responses.create(model="m1", input="weather?", tools=[WEATHER])
        calls = [o for o in first.output if o.type == "function_call"]
        assert [(o.call_id, o.name, o.arguments) for o in calls] == [
            ("call_1", "get_weather", '{"city":"Paris"}'), ("call_2", "get_weather", '{"city":"Rome"}')]
        rt.deltas, rt.finish = [{"content": "Sunny."}], "stop"
        second = await c.responses.create(model="m1", previous_response_id=first.id, tools=[WEATHER], input=[
            {"type": "function_call_output", "call_id": "call_1", "output": "20C"},
            {"type": "function_call_output", "call_id": "call_2", "output": "25C"}])
    assert second.output_text == "Sunny."
    assert rt.bodies("/v1/chat/completions")[-1]["messages"] == [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}},
            {"id": "call_2", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Rome"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "20C"},
        {"role": "tool", "tool_call_id": "call_2", "content": "25C"}]


TRICKY = ['say "hi"', " back\\slash", " new\nline", " tab\t", " é", " 日本", " 🦊", " \u0001", " </s>", "'", " %d %s",
          "{", "}", "\\", '"']


@pytest.mark.parametrize("odd", [False, True])
@pytest.mark.parametrize("at_once", [False, True])
async def test_texts_are_copied_exactly_whatever_is_in_them(serve, at_once, odd):
    """Text deltas copied as bytes from the runtime's chunks (a block of chunks read at once) or
    parsed one by one: the same text, escapes and all; a chunk of another shape in the middle
    (another field after the text, with or without quotes) is parsed where it stands."""
    plain = [{"content": f" w{i}"} for i in range(40)]
    deltas = [*plain[:20], *({"content": t} for t in TRICKY), *([{"content": " odd", "extra": [1]}] if odd else []),
              *plain[20:30], {"content": " sly", "note": "x"}, *plain[30:]]
    _, proxy = await serve(deltas, at_once=at_once)
    want = "".join(d["content"] for d in deltas)
    async with client(proxy, strict=True) as c:
        async with c.responses.stream(model="m1", input="hi") as s:
            events = [e async for e in s]
            final = await s.get_final_response()
    assert final.output_text == want
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == want
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert (await client(proxy).responses.retrieve(final.id)).output_text == want


async def test_reasoning_and_length_map_to_items_and_incomplete(serve):
    _, proxy = await serve([{"reasoning_content": "think"}, {"content": "an"}, {"content": "swer"}], finish="length")
    async with client(proxy, strict=True) as c:
        resp = await c.responses.create(model="m1", input="hi")
        stream = await c.responses.create(model="m1", input="hi", stream=True)
        events = [e async for e in stream]
    for final in (resp, events[-1].response):
        assert [o.type for o in final.output] == ["reasoning", "message"]
        assert final.output[0].content[0].text == "think" and final.output_text == "answer"
        assert final.status == "incomplete" and final.incomplete_details.reason == "max_output_tokens"
    assert events[-1].type == "response.incomplete"
    assert [e.type for e in events if "reasoning" in e.type] == ["response.reasoning_text.delta",
                                                                  "response.reasoning_text.done"]


# --- state -----------------------------------------------------------------------------------------------

async def test_previous_response_id_continues_and_instructions_do_not_carry_over(serve):
    rt, proxy = await serve()
    async with client(proxy) as c:
        first = await c.responses.create(model="m1", input="one", instructions="first rules")
        second = await c.responses.create(model="m1", input="two", previous_response_id=first.id)
        async with c.responses.stream(model="m1", input="three", previous_response_id=second.id,
                                      instructions="new rules") as s:
            third = await s.get_final_response()
    assert third.previous_response_id == second.id
    assert rt.bodies("/v1/chat/completions")[-1]["messages"] == [
        {"role": "system", "content": "new rules"},
        {"role": "user", "content": "one"}, {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "two"}, {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "three"}]


async def test_retrieve_delete_and_input_items(serve):
    _, proxy = await serve()
    async with client(proxy) as c:
        made = await c.responses.create(model="m1", input=[{"role": "user", "content": "a"},
                                                           {"role": "user", "content": "b"},
                                                           {"role": "user", "content": "c"}])
        got = await c.responses.retrieve(made.id)
        assert got.model_dump() == made.model_dump()
        items = await c.responses.input_items.list(made.id)
        assert [i.content[0].text for i in items.data] == ["c", "b", "a"]  # newest first, as OpenAI
        asc = [i.content[0].text async for i in c.responses.input_items.list(made.id, order="asc", limit=1)]
        assert asc == ["a", "b", "c"]  # paged one by one through `after`
        await c.responses.delete(made.id)
        for call in (c.responses.retrieve(made.id), c.responses.delete(made.id),
                     c.responses.input_items.list(made.id)):
            with pytest.raises(openai.NotFoundError) as exc:
                await call
            assert exc.value.body["type"] == "invalid_request_error"
            assert made.id in exc.value.body["message"]


async def test_unknown_ids_and_store_false(serve):
    _, proxy = await serve()
    async with client(proxy) as c:
        unstored = await c.responses.create(model="m1", input="hi", store=False)
        assert unstored.store is False
        for rid in (unstored.id, "resp_nope", "x" * 5000):
            with pytest.raises(openai.NotFoundError):
                await c.responses.retrieve(rid)
        with pytest.raises(openai.NotFoundError) as exc:
            await c.responses.create(model="m1", input="hi", previous_response_id="resp_nope")
    assert exc.value.body["param"] == "previous_response_id"
    assert exc.value.body["code"] == "previous_response_not_found"


async def test_the_store_evicts_the_oldest_beyond_max_items(serve):
    _, proxy = await serve(responses={"max_items": 2})
    async with client(proxy) as c:
        made = [await c.responses.create(model="m1", input=str(i)) for i in range(3)]
        with pytest.raises(openai.NotFoundError):
            await c.responses.retrieve(made[0].id)
        with pytest.raises(openai.NotFoundError):
            await c.responses.create(model="m1", input="on", previous_response_id=made[0].id)
        assert [(await c.responses.retrieve(m.id)).id for m in made[1:]] == [m.id for m in made[1:]]


async def test_memory_store_age_and_size_bounds():
    now = [1000.0]
    store = MemoryStore(max_items=3, max_age=60, clock=lambda: now[0])
    for i in range(3):
        await store.put(f"r{i}", b"%d" % i)
        now[0] += 20
    assert await store.get("r0") is None  # 60 s old
    assert await store.get("r1") == b"1"
    await store.put("r3", b"3")
    await store.put("r4", b"4")
    assert len(store) == 3 and await store.get("r1") is None  # evicted by count, oldest first
    assert await store.delete("r4") and not await store.delete("r4")


def test_responses_config_is_checked():
    base = "backends: [{name: a, runtime: vllm, url: 'http://127.0.0.1:1'}]\n"
    assert load_config_text(base).responses.store == "memory"
    cfg = load_config_text(base + "responses: {store: 'redis://:pw@127.0.0.1:6379/2', max_items: 5}")
    assert cfg.responses.max_items == 5
    for bad, where in (("{store: 'http://x'}", "responses.store"), ("{max_items: 0}", "responses.max_items"),
                       ("{max_age_seconds: -1}", "responses.max_age_seconds"), ("{stor: memory}", "responses.stor")):
        with pytest.raises(ConfigError) as exc:
            load_config_text(base + f"responses: {bad}")
        assert str(exc.value).startswith(where), str(exc.value)
    with pytest.raises(ConfigError) as exc:
        load_config_text(base + "responses: {store: 'ftp://user:secret@h'}")
    assert "secret" not in str(exc.value)


# --- errors -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("body,param", [
    ({"model": "m1"}, "input"),
    ({"model": "m1", "input": 5}, "input"),
    ({"model": "m1", "input": [{"role": "robot", "content": "x"}]}, "input[0].role"),
    ({"model": "m1", "input": [{"type": "item_reference", "id": "x"}]}, "input[0].type"),
    ({"model": "m1", "input": [{"type": "function_call_output", "output": "x"}]}, "input[0].call_id"),
    ({"model": "m1", "input": "x", "tools": [{"type": "web_search"}]}, "tools[0].type"),
    ({"model": "m1", "input": "x", "tool_choice": {"type": "allowed_tools"}}, "tool_choice"),
    ({"model": "m1", "input": "x", "text": {"format": {"type": "yaml"}}}, "text.format.type"),
    ({"model": "m1", "input": "x", "max_output_tokens": "many"}, "max_output_tokens"),
    ({"model": "m1", "input": "x", "temperature": True}, "temperature"),
    ({"input": "x"}, "model"),
])
async def test_bad_requests_are_400_naming_the_field(serve, body, param):
    rt, proxy = await serve()
    async with aiohttp.ClientSession() as http, http.post(proxy.url + "/v1/responses", json=body) as resp:
        assert resp.status == 400
        err = (await resp.json())["error"]
    assert err["param"] == param and err["type"] == "invalid_request_error" and err["message"]
    assert rt.bodies("/v1/chat/completions") == []


async def test_errors_reach_the_client_as_openai_exceptions(serve, runtime_factory, proxy_factory):
    _, proxy = await serve(status=400)
    async with client(proxy) as c:
        with pytest.raises(openai.BadRequestError):
            await c.responses.create(model="m1", input="hi")
        with pytest.raises(openai.NotFoundError) as exc:
            await c.responses.create(model="nope", input="hi")
        assert exc.value.code == "model_not_found"
    dying = await runtime_factory("d", die_after=2)
    proxy = await proxy_factory(make_config([{"name": "d", "runtime": "vllm", "url": dying.url}]))
    async with client(proxy, strict=True) as c:
        stream = await c.responses.create(model="m1", input="hi", stream=True)
        events = [e async for e in stream]
        assert [e.type for e in events[-2:]] == ["error", "response.failed"]
        assert "failed mid-stream" in events[-2].message
        assert events[-1].response.status == "failed"
        assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == "Hello"
        assert [e.sequence_number for e in events] == list(range(len(events)))
        with pytest.raises(openai.NotFoundError):  # a failed response is not stored
            await c.responses.retrieve(events[0].response.id)


# --- metrics --------------------------------------------------------------------------------------------

async def test_metrics_of_a_responses_stream_equal_the_openai_ones(runtime_factory, proxy_factory):
    """The same paced fake stream through /v1/chat/completions and /v1/responses: the same
    counts exactly; the timing figures agree within a factor of 2 (the machine is busy)."""
    rt = await runtime_factory("p", tokens=[f"t{i} " for i in range(12)], rate=40.0)
    proxy = await proxy_factory(make_config([{"name": "p", "runtime": "vllm", "url": rt.url}]))
    async with client(proxy) as c:
        stream = await c.chat.completions.create(model="m1", messages=[{"role": "user", "content": "hi"}], stream=True)
        [chunk async for chunk in stream]
        stream = await c.responses.create(model="m1", input="hi", stream=True)
        [event async for event in stream]
        await c.responses.create(model="m1", input="hi")
        await c.chat.completions.create(model="m1", messages=[{"role": "user", "content": "hi"}])
    async with aiohttp.ClientSession() as http, http.get(proxy.url + "/metrics") as resp:
        samples = scrape(await resp.text())
    for stream in ("true", "false"):
        for name in ("mtproxy_requests_total", "mtproxy_prompt_tokens_total", "mtproxy_completion_tokens_total",
                     "mtproxy_time_to_first_token_seconds_count", "mtproxy_inter_token_latency_seconds_count",
                     "mtproxy_tokens_per_chunk_sum", "mtproxy_tokens_per_chunk_count",
                     "mtproxy_tokens_per_step_count", "mtproxy_decode_tokens_per_second_count",
                     "mtproxy_request_duration_seconds_count"):
            chat = value(samples, name, endpoint="chat", stream=stream)
            responses = value(samples, name, endpoint="responses", stream=stream)
            assert responses == chat, (name, stream, chat, responses)
    assert value(samples, "mtproxy_inter_token_latency_seconds_count", endpoint="responses") == 11
    assert value(samples, "mtproxy_completion_tokens_total", endpoint="responses", stream="true") == 12
    chat = value(samples, "mtproxy_decode_tokens_per_second_sum", endpoint="chat")
    responses = value(samples, "mtproxy_decode_tokens_per_second_sum", endpoint="responses")
    assert 0.5 < responses / chat < 2.0
    # OpenTelemetry GenAI: a Responses request is a "chat" operation, as a chat completion is
    otel = {"gen_ai_request_model": "m1", "gen_ai_provider_name": "vllm"}
    chat_tokens = value(samples, "mtproxy_completion_tokens_total", endpoint="chat")
    assert value(samples, "gen_ai_client_token_usage_sum", gen_ai_token_type="output",
                 gen_ai_operation_name="chat", **otel) == 2 * chat_tokens
    assert not [k for k in samples if ("gen_ai_operation_name", "responses") in k[1]]


async def test_native_stream_metrics_count_its_deltas_and_usage(serve):
    _, proxy = await serve(runtime="llamacpp", native_sse=(DATA / "llamacpp_responses_stream.sse").read_bytes(),
                           native_json=b"{}")
    async with client(proxy) as c:
        stream = await c.responses.create(model="m1", input="hi", stream=True)
        [e async for e in stream]
    async with aiohttp.ClientSession() as http, http.get(proxy.url + "/metrics") as resp:
        samples = scrape(await resp.text())
    labels = {"endpoint": "responses", "stream": "true", "runtime": "llamacpp"}
    assert value(samples, "mtproxy_prompt_tokens_total", **labels) == 21  # usage, not timings.prompt_n (1)
    assert value(samples, "mtproxy_completion_tokens_total", **labels) == 14
    # 13 text deltas for 14 tokens in this capture (the end-of-generation token has no text)
    assert value(samples, "mtproxy_tokens_per_chunk_sum", **labels) == 14 / 13
    assert value(samples, "mtproxy_inter_token_latency_seconds_count", **labels) == 12


# --- the shared store on a real redis-server -----------------------------------------------------------

@pytest.fixture
def redis_server(tmp_path):
    server = RedisServer(tmp_path).start()
    yield server
    server.stop()


async def test_two_replicas_continue_each_others_conversations_on_redis(scripted, proxy_factory, redis_server):
    import redis.asyncio as redis_asyncio

    rt = await scripted()
    config = make_config([{"name": "b", "runtime": "vllm", "url": rt.url}],
                         responses={"store": redis_server.url, "max_items": 3, "max_age_seconds": 120})
    one, two = await proxy_factory(config), await proxy_factory(config)
    async with client(one) as a, client(two, strict=True) as b:
        first = await a.responses.create(model="m1", input="one")
        async with b.responses.stream(model="m1", input="two", previous_response_id=first.id) as s:
            second = await s.get_final_response()
        third = await a.responses.create(model="m1", input="three", previous_response_id=second.id)
        assert (await b.responses.retrieve(third.id)).output_text == "Hello!"
        assert [i.content[0].text for i in (await b.responses.input_items.list(second.id)).data] == ["two"]
        await b.responses.delete(second.id)
        with pytest.raises(openai.NotFoundError):
            await a.responses.retrieve(second.id)
        # kept under max_items (3): the oldest go first
        for i in range(3):
            await b.responses.create(model="m1", input=str(i))
        with pytest.raises(openai.NotFoundError):
            await a.responses.retrieve(first.id)
    assert rt.bodies("/v1/chat/completions")[2]["messages"] == [
        {"role": "user", "content": "one"}, {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "two"}, {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "three"}]
    r = redis_asyncio.from_url(redis_server.url)
    try:
        keys = [k for k in await r.keys("mtproxy:responses:r:*")]
        assert len(keys) == 3
        ttl = await r.pttl(keys[0])
        assert 0 < ttl <= 120_000  # gone after max_age_seconds
    finally:
        await r.aclose()


async def test_redis_down_is_a_503_and_answers_still_go_out(scripted, proxy_factory, redis_server):
    rt = await scripted()
    proxy = await proxy_factory(make_config([{"name": "b", "runtime": "vllm", "url": rt.url}],
                                            responses={"store": redis_server.url}))
    redis_server.stop()
    async with client(proxy) as c:
        made = await c.responses.create(model="m1", input="hi")  # answered; not stored (logged)
        assert made.output_text == "Hello!"
        with pytest.raises(openai.InternalServerError) as exc:
            await c.responses.retrieve(made.id)
    assert exc.value.status_code == 503 and exc.value.body["code"] == "response_store_unavailable"


async def test_a_long_run_read_at_once_keeps_every_escape(serve):
    """A long run of plain chunks read at once, which the decoder cuts into its texts (no quote
    in any): backslashes, escaped line breaks and tabs, non-ASCII and astral characters, empty
    texts arrive as sent, one delta a chunk with a text, numbered in order."""
    texts = [" w", "\\", "\n", "\t", " é", " 🦊", "\u2028", "", " </s>", " %d", "\\n"] * 40
    _, proxy = await serve([{"content": t} for t in texts], at_once=True)
    async with client(proxy, strict=True) as c:
        async with c.responses.stream(model="m1", input="hi") as s:
            events = [e async for e in s]
            final = await s.get_final_response()
    assert final.output_text == "".join(texts)
    assert [e.delta for e in events if e.type == "response.output_text.delta"] == [t for t in texts if t]
    assert [e.sequence_number for e in events] == list(range(len(events)))


async def test_a_long_run_of_reasoning_read_at_once_stays_reasoning(serve):
    """A long run of reasoning chunks read at once, then the answer: the reasoning item holds
    the reasoning, the message the answer (the decoder cuts only a run of content texts)."""
    thinking = [f" step{i}" for i in range(200)]
    deltas = [*({"reasoning_content": t} for t in thinking), *({"content": f" a{i}"} for i in range(100))]
    _, proxy = await serve(deltas, at_once=True)
    async with client(proxy, strict=True) as c:
        async with c.responses.stream(model="m1", input="hi") as s:
            final = await s.get_final_response()
    assert [o.type for o in final.output] == ["reasoning", "message"]
    assert final.output[0].content[0].text == "".join(thinking)
    assert final.output_text == "".join(f" a{i}" for i in range(100))


# --- reload: the `responses:` section ------------------------------------------------------------------

ADMIN = {"Authorization": "Bearer admin-key"}


@pytest.fixture
async def reloadable(tmp_path):
    """Start a proxy from a config file for ``backend`` (a runtime's URL) with ``responses``;
    ``write`` puts another `responses:` section (and backend) in the file; ``reload`` posts
    /mtproxy/reload and answers (status, message)."""
    from mtproxy.app import create_app
    from mtproxy.config import load_config
    from mtproxy.server import start

    path = tmp_path / "config.yaml"
    runners = []

    def write(backend: str, responses: dict[str, Any], model: str = "m1") -> None:
        path.write_text(orjson.dumps({
            "server": {"admin_keys": ["admin-key"]}, "health": {"interval": 0.2, "timeout": 1},
            "backends": [{"name": "b", "runtime": "vllm", "url": backend, "models": [model]}],
            "responses": responses}).decode())

    async def begin(backend: str, responses: dict[str, Any]):
        write(backend, responses)
        app = create_app(load_config(path), config_path=str(path))
        runner, port = await start(app, "127.0.0.1", 0, shutdown_grace=2)
        runners.append(runner)
        return Reloadable(app, port)

    async def reload(proxy) -> tuple[int, str]:
        async with aiohttp.ClientSession() as http, \
                http.post(proxy.url + "/mtproxy/reload", headers=ADMIN) as resp:
            body = await resp.json()
            return resp.status, body.get("message") or body["error"]["message"]

    yield begin, write, reload
    for runner in runners:
        await runner.cleanup()


class Reloadable:
    def __init__(self, app, port: int) -> None:
        self.app = app
        self.url = f"http://127.0.0.1:{port}"


async def test_a_reload_applies_new_memory_store_limits_and_keeps_what_it_holds(scripted, reloadable):
    begin, write, reload = reloadable
    rt = await scripted()
    proxy = await begin(rt.url, {"max_items": 5})
    async with client(proxy) as c:
        made = [await c.responses.create(model="m1", input=str(i)) for i in range(3)]

        assert await reload(proxy) == (200, "config reloaded: 1 backends")  # unchanged: all still there
        assert [(await c.responses.retrieve(m.id)).id for m in made] == [m.id for m in made]

        write(rt.url, {"max_items": 2})
        assert (await reload(proxy))[0] == 200
        with pytest.raises(openai.NotFoundError):  # the new limit: the oldest went
            await c.responses.retrieve(made[0].id)
        assert [(await c.responses.retrieve(m.id)).id for m in made[1:]] == [m.id for m in made[1:]]
        more = await c.responses.create(model="m1", input="3")
        with pytest.raises(openai.NotFoundError):
            await c.responses.retrieve(made[1].id)
        assert (await c.responses.retrieve(more.id)).id == more.id


async def test_a_reload_to_redis_stores_new_responses_there(scripted, reloadable, redis_server):
    import redis.asyncio as redis_asyncio

    begin, write, reload = reloadable
    rt = await scripted()
    proxy = await begin(rt.url, {})
    r = redis_asyncio.from_url(redis_server.url)
    try:
        async with client(proxy) as c:
            before = await c.responses.create(model="m1", input="one")
            write(rt.url, {"store": redis_server.url, "max_age_seconds": 60})
            status, message = await reload(proxy)
            assert status == 200 and "a new response store" in message
            after = await c.responses.create(model="m1", input="two")
            assert await r.exists(f"mtproxy:responses:r:{after.id}")
            assert 0 < await r.pttl(f"mtproxy:responses:r:{after.id}") <= 60_000  # the new max_age
            assert (await c.responses.retrieve(after.id)).output_text == "Hello!"
            with pytest.raises(openai.NotFoundError):  # the memory store's responses stay behind
                await c.responses.retrieve(before.id)
    finally:
        await r.aclose()


async def test_a_request_in_flight_finishes_with_the_store_it_began_with(runtime_factory, reloadable,
                                                                          redis_server, http):
    import asyncio

    from mtproxy.front.responses import STORE

    begin, write, reload = reloadable
    gate = asyncio.Event()
    rt = await runtime_factory("a", models=["m1"], gate=gate)
    proxy = await begin(rt.url, {})
    old = proxy.app[STORE].store
    async with client(proxy) as c:
        made = await c.responses.create(model="m1", input="one")  # not streamed: not held by the gate
    stream = await http.post(proxy.url + "/v1/responses", json={"model": "m1", "input": "hi", "stream": True})
    await stream.content.readuntil(b"\n\n")  # in flight, holding the memory store
    write(rt.url, {"store": redis_server.url})
    assert (await reload(proxy))[0] == 200
    assert proxy.app[STORE].store is not old
    assert len(old) == 1 and await old.get(made.id)  # not closed while a request holds it
    gate.set()
    events = sse_events(await stream.read())
    assert events[-1][0] == "response.completed"
    await until(lambda: len(old) == 0)  # closed when that request ended


async def test_a_reload_whose_redis_does_not_answer_keeps_the_old_config(scripted, reloadable, redis_server):
    begin, write, reload = reloadable
    rt = await scripted()
    other = await scripted(models=("m2",))
    proxy = await begin(rt.url, {})
    dead = redis_server.url
    redis_server.stop()
    async with client(proxy) as c:
        made = await c.responses.create(model="m1", input="one")
        write(other.url, {"store": dead}, model="m2")  # a new backend too: it must not apply
        status, message = await reload(proxy)
        assert status == 400
        assert "the old one stays" in message and "responses.store: the Redis server did not answer" in message
        assert (await c.responses.retrieve(made.id)).id == made.id  # the memory store stays
        assert (await c.responses.create(model="m1", input="two", previous_response_id=made.id)).output_text
        with pytest.raises(openai.NotFoundError):
            await c.responses.create(model="m2", input="x")
