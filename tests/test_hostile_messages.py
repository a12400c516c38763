"""Hostile input on the Anthropic routes (/v1/messages, /v1/messages/count_tokens), translated
(a vLLM backend) and relayed (a llama.cpp backend that serves the API itself): generated,
mutated and garbage bodies, a wrong type in every field. Every answer is a success or a 4xx in
Anthropic's error shape (``{"type": "error", "error": {"type", "message"}}``), never a 5xx
from the proxy. The generic suite (test_hostile_input.py) also takes these routes from the
OpenAPI description; this file adds what is particular to them."""

from __future__ import annotations

import copy
import json
import random

import orjson
import pytest
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st

from mtproxy.app import create_app
from mtproxy.openapi import MESSAGES, MESSAGES_COUNT

from .conftest import make_config
from .hostile import ServedOnLoop, mutated, send, tolerant_runtime, wrong_typed
from .test_hostile_input import FUZZ, from_schema

NATIVE_STREAM = (b'event: message_start\ndata: {"type":"message_start","message":{"id":"x","type":"message",'
                 b'"role":"assistant","content":[],"model":"n1","stop_reason":null,"stop_sequence":null,'
                 b'"usage":{"input_tokens":1,"output_tokens":0}}}\n\n'
                 b'event: content_block_start\ndata: {"type":"content_block_start","index":0,'
                 b'"content_block":{"type":"text","text":""}}\n\n'
                 b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
                 b'"delta":{"type":"text_delta","text":"ok"}}\n\n'
                 b'event: content_block_stop\ndata: {"type":"content_block_stop","index":0}\n\n'
                 b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn",'
                 b'"stop_sequence":null},"usage":{"output_tokens":1}}\n\n'
                 b'event: message_stop\ndata: {"type":"message_stop"}\n\n')
NATIVE_BODY = {"id": "x", "type": "message", "role": "assistant", "content": [{"type": "text", "text": "ok"}],
               "model": "n1", "stop_reason": "end_turn", "stop_sequence": None,
               "usage": {"input_tokens": 1, "output_tokens": 1}}


async def tolerant_messages(request: web.Request) -> web.StreamResponse:
    """A runtime's own /v1/messages that answers anything."""
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        body = {}
    if isinstance(body, dict) and body.get("stream") is True:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(NATIVE_STREAM)
        return resp
    return web.json_response(NATIVE_BODY)


class Served(ServedOnLoop):
    """An upstream and a proxy on a loop of their own: model ``m1`` on a vLLM backend
    (translated; /tokenize counts), ``n1`` on a llama.cpp backend (relayed)."""

    async def _start(self) -> int:
        async def ok(request: web.Request) -> web.Response:
            return web.json_response({"status": "ok", "count": 3, "input_tokens": 3})

        up = web.Application()
        up.router.add_get("/health", ok)
        up.router.add_post("/tokenize", ok)
        up.router.add_post("/v1/messages/count_tokens", ok)
        up.router.add_post("/v1/messages", tolerant_messages)
        up.router.add_post("/{tail:.*}", tolerant_runtime)
        url = await self.upstream(up)
        cfg = make_config([{"name": "up", "runtime": "vllm", "url": url, "models": ["m1"]},
                           {"name": "ll", "runtime": "llamacpp", "url": url, "models": ["n1"]}],
                          server={"max_body_bytes": 64 * 1024})
        return await self.proxy(create_app(cfg))


@pytest.fixture(scope="module")
def served():
    s = Served()
    yield s
    s.stop()


def anthropic_error(status: int, data: bytes) -> str | None:
    """What is wrong with an answer, or None: below 500, and an error in Anthropic's shape."""
    if status >= 500:
        return f"HTTP {status}"
    if status < 400:
        return None
    try:
        body = orjson.loads(data)
    except orjson.JSONDecodeError:
        return "error body not JSON"
    ok = (isinstance(body, dict) and body.get("type") == "error" and isinstance(body.get("error"), dict)
          and isinstance(body["error"].get("type"), str) and isinstance(body["error"].get("message"), str)
          and body["error"]["message"])
    return None if ok else "not Anthropic's error shape"


PATHS = {"/v1/messages": MESSAGES, "/v1/messages/count_tokens": MESSAGES_COUNT}
MODELS = st.one_of(st.sampled_from(["m1", "n1"]), st.text(max_size=20))


@pytest.mark.parametrize("path", list(PATHS))
def test_generated_requests(served, path):
    @FUZZ
    @given(body=st.tuples(from_schema(PATHS[path]), MODELS).map(lambda t: {**t[0], "model": t[1]}))
    def run(body):
        status, data, _ = send(served.port, path, json.dumps(body).encode())
        assert anthropic_error(status, data) is None, (body, status, data[:300])

    run()


@FUZZ
@given(path=st.sampled_from(list(PATHS)), raw=st.one_of(st.binary(max_size=300), st.text(max_size=300).map(str.encode)))
def test_garbage_bodies(served, path, raw):
    status, data, _ = send(served.port, path, raw)
    assert anthropic_error(status, data) is None, (raw, status, data[:300])


IMAGE = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}}
FULL = {  # every field the translation reads
    "max_tokens": 8, "system": [{"type": "text", "text": "s"}], "stop_sequences": ["x"], "temperature": 0.5,
    "top_p": 0.9, "top_k": 4, "metadata": {"user_id": "u"}, "stream": False,
    "thinking": {"type": "enabled", "budget_tokens": 100},
    "tools": [{"name": "f", "description": "d", "input_schema": {"type": "object"}}],
    "tool_choice": {"type": "auto", "disable_parallel_tool_use": False},
    "messages": [
        {"role": "user", "content": [{"type": "text", "text": "hi"}, IMAGE,
                                     {"type": "document", "source": {"type": "text", "media_type": "text/plain",
                                                                     "data": "doc"}}]},
        {"role": "assistant", "content": [{"type": "thinking", "thinking": "t", "signature": "s"},
                                          {"type": "text", "text": "a"},
                                          {"type": "tool_use", "id": "t1", "name": "f", "input": {"a": 1}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "is_error": True,
                                      "content": [{"type": "text", "text": "r"}]}]},
        {"role": "assistant", "content": "plain"}],
}


@pytest.mark.parametrize("model", ["m1", "n1"])
@pytest.mark.parametrize("path", list(PATHS))
def test_wrong_types_in_every_field(served, path, model):
    rnd = random.Random(f"{path} {model}")
    body = {"model": model, **FULL}
    status, data, _ = send(served.port, path, orjson.dumps(body))
    assert status == 200, data[:300]  # the untouched body is fine
    wrong = []
    for at, value, mutated_body in wrong_typed(rnd, body):
        status, data, _ = send(served.port, path, orjson.dumps(mutated_body))
        problem = anthropic_error(status, data)
        if problem:
            wrong.append((at, value, problem, data[:200]))
    assert not wrong, f"{len(wrong)} wrong: {wrong[:5]}"


SEEDS = [orjson.dumps({"model": m, **FULL, "stream": s}) for m in ("m1", "n1") for s in (False, True)]


def test_mutated_requests(served):
    rnd = random.Random("messages")
    for i in range(1200):
        body = mutated(rnd, rnd.choice(SEEDS), [b"{", b"}", b"[", b'"', b"\\", b"\xff", b"null", b"1e999", b","],
                       repeat=None)
        path = "/v1/messages" if i % 3 else "/v1/messages/count_tokens"
        status, data, _ = send(served.port, path, body)
        assert anthropic_error(status, data) is None, (body[:200], status, data[:300])


def test_deep_nesting_and_huge_bodies(served):
    for path in PATHS:
        for body in (b"[" * 100_000 + b"]" * 100_000,
                     b'{"model": "n1", "max_tokens": 1, "messages": [{"role": "user", "content": [{"type": "tool_result", '
                     b'"tool_use_id": "x", "content": ' + b"[" * 5000 + b"]" * 5000 + b"}]}]}",
                     b'{"model": "m1", "max_tokens": 1, "messages": [], "x": "' + b"a" * 200_000 + b'"}'):
            status, data, _ = send(served.port, path, body)
            assert anthropic_error(status, data) is None and status in (400, 413), (path, status, data[:200])


def test_deep_nesting_in_a_relayed_body_is_refused_before_the_runtime(served):
    """The native body is relayed as the client sent it: nesting beyond what the proxy encodes
    is refused at parse time, whichever backend serves the model."""
    deep = {"model": "n1", "max_tokens": 1, "messages": [{"role": "user", "content": "x"}],
            "metadata": copy.deepcopy(nested(200))}
    status, data, _ = send(served.port, "/v1/messages", json.dumps(deep).encode())
    assert status == 400 and anthropic_error(status, data) is None


def nested(depth: int):
    value: object = 1
    for _ in range(depth):
        value = [value]
    return value
