"""Hostile input for /v1/responses (the helpers of test_hostile_input.py, its rules): requests
generated from the proxy's OpenAPI description, wrong types in every field, mutated and garbage
bodies, nesting past every encoder, hostile ids and queries on the stored-response routes, all
through each path (translated to a chat runtime and to Ollama, relayed to a runtime serving the
route itself); and a runtime whose own Responses stream is hostile. Every answer is a 4xx in
OpenAI's error shape or a success: never a 5xx from the proxy, never a crash."""

from __future__ import annotations

import json
import random
from urllib.parse import quote

import orjson
import pytest
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st

from mtproxy.app import create_app
from mtproxy.openapi import RESPONSES
from mtproxy.wire import MAX_DEPTH

from .conftest import make_config
from .hostile import ServedOnLoop, mutated, send, tolerant_ollama, tolerant_runtime, wrong_typed
from .responses_fakes import DATA
from .test_hostile_input import FUZZ, INSERTS, Tally, check, from_schema, nested

PATH = "/v1/responses"
MODELS = ("m1", "n1", "o1")  # translated to chat, relayed natively, translated to Ollama

# What a hostile runtime may send as its own Responses stream: each is served in turn.
HOSTILE_NATIVE: list[bytes] = [
    b'event: response.created\ndata: {"type":"response.created","response":[1]}\n\n'
    b'data: {"type":"response.output_item.added","item":"x"}\n\n'
    b'data: {"type":"response.output_text.delta","item_id":[1],"delta":7}\n\n'
    b'data: {"type":"response.completed","response":{"id":5,"output":"abc","usage":[1]}}\n\n',
    b'data: {"type":"response.output_text.delta"}\n\ndata: not json\n\ndata: [DONE]\n\n',
    b'data: {"type":"response.output_item.added","item":{"type":"message","id":"' + b"i" * 5000 + b'"}}\n\n'
    b'data: {"type":"response.content_part.added","part":5}\n\n'
    b'data: {"type":"response.completed","response":{"id":"' + b"r" * 400 + b'","output":[1,{"type":"message"}]}}\n\n',
    b'data: {"type":"error","message":"runtime says no"}\n\n',
    b'data: {"type":"response.function_call_arguments.done","item_id":"nope"}\n\n',  # then EOF: not finished
    b'data: {"type":7}\n\ndata: {"type":"response.failed","response":{"status":"failed"}}\n\n',
    b"",
]
# llama-server's own answers (a well-behaved native runtime, for every request but "hostile" ones)
NATIVE_SSE = (DATA / "llamacpp_responses_stream.sse").read_bytes()
NATIVE_JSON = (DATA / "llamacpp_responses.json").read_bytes()
HOSTILE_BODIES: list[bytes] = [b"{}", b"[]", b"null", b'{"output": 5, "usage": "x", "id": []}', b"not json",
                               b'{"status": "incomplete", "output": [{"type": "message", "content": 7}]}',
                               b'{"status": "completed", "output": [{"type": "function_call"}, {"type": "weird"}, '
                               b'{"type": "message", "role": 5, "content": "x"}, 7]}']


class Served(ServedOnLoop):
    """One upstream for every path (chat runtime m1, llama-server-like n1 serving /v1/responses
    with hostile answers, Ollama o1) and the proxy in front, on a loop of their own."""

    def __init__(self) -> None:
        self.native = 0
        super().__init__()

    async def _native(self, request: web.Request) -> web.StreamResponse:
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            body = None
        if not body:
            return web.json_response({"error": {"message": "'input' is required"}}, status=400)
        self.native += 1
        hostile = isinstance(body, dict) and body.get("input") == "hostile"
        if isinstance(body, dict) and body.get("stream") is True:
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            await resp.write(HOSTILE_NATIVE[self.native % len(HOSTILE_NATIVE)] if hostile else NATIVE_SSE)
            return resp
        body = HOSTILE_BODIES[self.native % len(HOSTILE_BODIES)] if hostile else NATIVE_JSON
        return web.Response(body=body, content_type="application/json")

    async def _start(self) -> int:
        up = web.Application()

        async def health(request: web.Request) -> web.Response:
            return web.json_response({"status": "ok"})

        async def props(request: web.Request) -> web.Response:
            return web.json_response({"build_info": "b1-0c1e570"})

        async def ollama_version(request: web.Request) -> web.Response:
            return web.json_response({"version": "0.30.0"})

        up.router.add_get("/health", health)
        up.router.add_get("/props", props)
        up.router.add_get("/api/version", ollama_version)
        up.router.add_post("/api/{kind}", tolerant_ollama)
        up.router.add_post("/v1/responses", self._native)
        up.router.add_post("/{tail:.*}", tolerant_runtime)
        url = await self.upstream(up)
        cfg = make_config([{"name": "chat", "runtime": "vllm", "url": url, "models": ["m1"]},
                           {"name": "native", "runtime": "llamacpp", "url": url, "models": ["n1"]},
                           # the hostile runtime: its broken streams get it ejected, not n1's backend
                           {"name": "hostile", "runtime": "llamacpp", "url": url, "models": ["h1"]},
                           {"name": "oll", "runtime": "ollama", "url": url, "models": ["o1"]}],
                          server={"max_body_bytes": 64 * 1024}, responses={"max_items": 50})
        return await self.proxy(create_app(cfg))


@pytest.fixture(scope="module")
def served():
    s = Served()
    yield s
    s.stop()


def stored_id(served: Served, model: str = "m1") -> str:
    status, data, _ = send(served.port, PATH, orjson.dumps({"model": model, "input": "hi"}))
    assert status == 200, data
    return orjson.loads(data)["id"]


def test_the_native_path_is_taken(served):
    before = served.native
    send(served.port, PATH, orjson.dumps({"model": "n1", "input": "hi"}))
    assert served.native == before + 1


def test_requests_generated_from_the_openapi_description(served):
    ids = [stored_id(served)]

    @FUZZ
    @given(body=from_schema(RESPONSES), model=st.sampled_from([*MODELS, "zz"]), previous=st.booleans())
    def run(body, model, previous):
        body = {**body, "model": model}
        if previous:
            body["previous_response_id"] = ids[0]
        status, data, _ = send(served.port, PATH, json.dumps(body).encode())
        check(PATH, status, data)

    run()


FULL = {
    "instructions": "sys", "max_output_tokens": 5, "temperature": 0.5, "top_p": 0.9, "parallel_tool_calls": True,
    "store": True, "metadata": {"k": "v"}, "user": "u", "truncation": "disabled",
    "tools": [{"type": "function", "name": "f", "description": "d", "parameters": {"type": "object"}, "strict": True}],
    "tool_choice": {"type": "function", "name": "f"}, "reasoning": {"effort": "low", "summary": "auto"},
    "text": {"format": {"type": "json_schema", "name": "o", "schema": {"type": "object"}, "strict": True}},
    "input": [
        {"role": "developer", "content": "dev"},
        {"type": "message", "role": "user", "content": [
            {"type": "input_text", "text": "hi"}, {"type": "input_image", "image_url": "data:image/png;base64,AAAA"}]},
        {"type": "message", "role": "assistant", "id": "msg_1", "status": "completed",
         "content": [{"type": "output_text", "text": "ok", "annotations": []}]},
        {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "t"}],
         "content": [{"type": "reasoning_text", "text": "t"}]},
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": '{"a": 1}'},
        {"type": "function_call_output", "call_id": "c1", "output": [{"type": "input_text", "text": "r"}]}],
}


@pytest.mark.parametrize("model", MODELS)
def test_wrong_types_in_every_field(served, model):
    rnd = random.Random(model)
    tally = Tally()
    ids = [stored_id(served)]
    for full in (FULL, {"input": "plain", "previous_response_id": ids[0], "text": {"format": {"type": "text"}}}):
        body = {"model": model, **full}
        status, data, _ = send(served.port, PATH, orjson.dumps(body))
        assert status < 500, data[:300]
        for at, value, wrong in wrong_typed(rnd, body):
            status, data, _ = send(served.port, PATH, orjson.dumps(wrong))
            tally.check(PATH, status, data, at, value)
    tally.done()


SEEDS = [b'{"model": "m1", "input": "hi", "stream": true, "max_output_tokens": 5}',
         b'{"model": "o1", "input": [{"role": "user", "content": "x"}], "tools": [{"type": "function", "name": "f"}]}',
         b'{"model": "n1", "input": [{"type": "function_call_output", "call_id": "c", "output": "r"}], "stream": true}',
         b'{"model": "m1", "input": "x", "text": {"format": {"type": "json_object"}}, "previous_response_id": "r"}']


def test_mutated_requests(served):
    rnd = random.Random(PATH)
    tally = Tally()
    for _ in range(1500):
        body = mutated(rnd, rnd.choice(SEEDS), INSERTS)
        status, data, _ = send(served.port, PATH, body)
        tally.check(PATH, status, data, body[:80])
    tally.done()


@FUZZ
@given(raw=st.one_of(st.binary(max_size=300), st.text(max_size=300).map(str.encode),
                     st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                                  lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
                                  max_leaves=30).map(lambda v: json.dumps(v).encode())))
def test_garbage_bodies(served, raw):
    status, data, _ = send(served.port, PATH, raw)
    check(PATH, status, data)


SITES = [b'{"model": "@model", "input": "hi", "x": @nest}',
         b'{"model": "@model", "input": [{"role": "user", "content": "hi"}], "tools": [{"type": "function", '
         b'"name": "f", "parameters": @nest}]}',
         b'{"model": "@model", "input": "hi", "text": {"format": {"type": "json_schema", "name": "o", "schema": @nest}}}',
         b'{"model": "@model", "input": [{"type": "reasoning", "summary": [], "encrypted_content": @nest}]}',
         b'{"model": "@model", "input": @nest}']


def test_nesting_deeper_than_any_encoder_takes(served):
    rnd = random.Random("responses-depth")
    tally = Tally()
    for template in SITES:
        for model in MODELS:
            for depth in (1, 60, MAX_DEPTH - 8, MAX_DEPTH, MAX_DEPTH + 1, 253, 254, 255, 1023, 1024, 1025, 5000):
                body = template.replace(b"@model", model.encode()).replace(b"@nest", nested(rnd, depth))
                status, data, _ = send(served.port, PATH, body)
                tally.check(PATH, status, data, model, depth)
                if depth > MAX_DEPTH:
                    tally(status == 400, model, depth, status)
    tally.done()


def test_hostile_ids_and_queries_on_the_stored_routes(served):
    rnd = random.Random("ids")
    rid = stored_id(served)
    tally = Tally()
    junk = ["", "a", rid, rid + "x", "resp_" + "9" * 300, "../../etc", "%00", "é" * 50, "x" * 4000, "a b", "[]"]
    queries = ["", "limit=0", "limit=101", "limit=abc", "limit=-1", "limit=1e9", "order=up", "order=asc&limit=1",
               "after=zzz", "after=" + "x" * 3000, "limit=1&after=", "include=x"]
    for _ in range(400):
        ident = quote(rnd.choice(junk), safe="")
        query = rnd.choice(queries)
        for method, path in (("GET", f"{PATH}/{ident}"), ("GET", f"{PATH}/{ident}/input_items?{query}"),
                             ("DELETE", f"{PATH}/{ident}"), ("POST", f"{PATH}/{ident}")):
            status, data, _ = send(served.port, path, b"", method=method)
            if status == 405:
                tally(True)
                continue
            tally.check(path, status, data, method)
        if rnd.random() < 0.1:
            rid = stored_id(served)
            junk[2] = rid
    tally.done()


def test_a_runtime_with_a_hostile_responses_stream(served):
    """Whatever a runtime serving /v1/responses itself sends, the client gets a stream that ends
    (completed or failed), an upstream error, or, once the runtime is ejected for its failures,
    503; and the proxy keeps serving the others."""
    tally = Tally()
    stored: list[str] = []
    for i in range(len(HOSTILE_NATIVE) * 3):
        stream = i % 2 == 0
        status, data, headers = send(served.port, PATH, orjson.dumps({"model": "h1", "input": "hostile", "stream": stream}))
        if status == 502:  # e.g. an empty answer: the backend failed before its first byte
            tally(b"upstream_error" in data, data[:200])
        elif status == 503:  # five broken answers in a row: ejected (outlier detection)
            tally(b"no_backend_available" in data, data[:200])
        elif stream:
            tally(status == 200 and headers.get("Content-Type", "").startswith("text/event-stream"), status, data[:200])
            last = [line for line in data.split(b"\n") if line.startswith(b"event: ")]
            tally(not last or last[-1] in (b"event: response.completed", b"event: response.failed",
                                           b"event: response.incomplete", b"event: error"), last[-1:])
        else:
            tally.check(PATH, status, data)
            if status == 200:
                stored.append(orjson.loads(data)["id"])
    # what such a runtime answered, stored, is a conversation to continue like any other
    for rid in stored:
        for model in MODELS:
            status, data, _ = send(served.port, PATH, orjson.dumps({"model": model, "input": "on",
                                                                    "previous_response_id": rid}))
            tally.check(PATH, status, data, rid)
    tally(len(stored) >= 3, stored)
    status, _, _ = send(served.port, PATH, orjson.dumps({"model": "m1", "input": "hi"}))
    tally(status == 200, status)
    tally.done()
